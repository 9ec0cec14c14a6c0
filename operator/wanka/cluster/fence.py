"""Fencing: every write first asks whether this replica may still act, and refuses if not."""

from __future__ import annotations

from collections.abc import Callable

Fence = Callable[[], bool]


class NotLeader(Exception):
    """This replica does not hold the lease (any more): the write was not sent."""


def check(fence: Fence | None, what: str) -> None:
    """Raise NotLeader unless `fence` (None: a sole replica, always allowed) lets us write."""
    if fence is not None and not fence():
        raise NotLeader(f"not the leader: did not {what}")
