"""One line for a failed command: what went wrong, in words, instead of a traceback."""

from __future__ import annotations

import json


def describe(exc: BaseException) -> str:
    """A one-line description of an error a command cannot recover from."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError as Urllib3Error
    from urllib3.exceptions import MaxRetryError

    if isinstance(exc, ConfigException):
        text = str(exc)
        if "No configuration found" in text:
            return ("no kubeconfig found: pass --kubeconfig, set $KUBECONFIG, or create ~/.kube/config "
                    f"({text})")
        return f"the kubeconfig cannot be used: {text}"
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            message = json.loads(exc.body or "{}").get("message") or message
        except (ValueError, AttributeError):
            pass
        return f"the API server refused the request ({exc.status}): {message}"
    if isinstance(exc, MaxRetryError):
        where = f"{exc.pool.scheme}://{exc.pool.host}:{exc.pool.port}" if exc.pool else "the API server"
        return f"cannot reach the API server at {where}: {_root(exc.reason)}"
    if isinstance(exc, Urllib3Error):
        return f"cannot talk to the API server: {_root(exc)}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def _root(exc: BaseException | None) -> str:
    """The innermost reason of a chain of connection errors, without the object reprs."""
    while exc is not None and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc) if exc is not None else "unknown reason"
    return text.split(": ", 1)[-1] if text.startswith("<") else text
