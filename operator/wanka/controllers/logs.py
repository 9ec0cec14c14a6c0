"""Operator logging: kopf's own formatters, text or one JSON object per line, tracebacks included."""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

import kopf

log = logging.getLogger("wanka")


class _LoggerName(logging.Filter):
    """kopf's JSON formatter writes a record's extra attributes as fields: name the logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.logger = record.name
        return True


def configure_logging(log_format: str, verbose: bool = False) -> None:
    """Send everything the process reports through one handler: log records, warnings, and
    exceptions nobody caught (in the main thread or another), so no raw line reaches stderr."""
    json_lines = log_format == "json"
    # Text lines carry the object as a [namespace/name] prefix, JSON lines as an "object" field.
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if json_lines else kopf.LogFormat.FULL,
                   log_prefix=not json_lines)
    if json_lines:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_LoggerName())
    if not verbose:
        # kopf logs every handled watch event at INFO; our own loops log what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    log.critical("the operator stopped on an uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    log.error("thread %s stopped on an uncaught %s", args.thread.name if args.thread else "?",
              args.exc_type.__name__, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
