"""The quota book every pool's admission charges: nominal quota, then borrowing from the cohort."""

from __future__ import annotations

from wanka.core.queueing import PoolQuota, QueueSpec, QuotaBook


def book(**quotas: tuple[float, float | None]) -> QuotaBook:
    return QuotaBook({name: QueueSpec(name, (PoolQuota("p", gpus, limit),))
                      for name, (gpus, limit) in quotas.items()})


def test_within_nominal_quota_nothing_is_borrowed() -> None:
    b = book(a=(2, 0), b=(2, 0))
    assert b.reason("a", "p", 2000) is None
    assert b.borrowed("a", "p", 2000) == 0


def test_borrowing_only_from_the_cohorts_unused_quota_and_up_to_the_limit() -> None:
    b = book(a=(2, 1), b=(2, 0))
    b.charge("a", "p", 2000)
    assert b.reason("a", "p", 1000) is None and b.borrowed("a", "p", 1000) == 1.0
    why = b.reason("a", "p", 1500)
    assert why is not None and "uses 2 of its 2 GPUs" in why and "+1 borrowable" in why
    b.charge("b", "p", 1500)  # b now uses most of its own quota: less to lend
    why = b.reason("a", "p", 1000)
    assert why is not None and "has 0.5 GPUs of unused quota to lend" in why


def test_a_lender_is_told_who_borrows_its_quota() -> None:
    b = book(a=(2, None), b=(2, 0))
    b.charge("a", "p", 4000)
    why = b.reason("b", "p", 1000)
    assert why is not None and "borrowed by a" in why


def test_unlimited_borrowing_is_still_bounded_by_the_cohort() -> None:
    b = book(only=(0.3, None))
    b.charge("only", "p", 286)
    why = b.reason("only", "p", 143)
    assert why is not None and "unused quota to lend" in why
    assert b.reason("nobody", "p", 1) == "queue nobody has no quota on pool p"


def test_fair_order_offers_the_queue_furthest_below_its_share_and_rereads_after_each_pick() -> None:
    from wanka.core.queueing import fair_order
    from wanka.core.requests import GangRequest

    def req(owner: str, queue: str, created: float, priority: int = 0) -> GangRequest:
        return GangRequest(owner=owner, queue=queue, pool="p", priority=priority, replicas=1, gpus=1,
                           created=created)

    b = book(a=(4, None), b=(4, None))
    b.charge("a", "p", 2000)  # a already runs two GPUs
    pending = [req("a1", "a", 1), req("a2", "a", 2), req("b1", "b", 3), req("b2", "b", 4), req("hi", "a", 9, 5)]
    order = []
    for r in fair_order(pending, lambda q, p: b.deficit(q, p, 8000, 2)):
        order.append(r.owner)
        b.charge(r.queue, r.pool, 1000)  # admitted: its queue's deficit shrinks
    # Priority first; then b, which stays further below its share than a for both its gangs.
    assert order == ["hi", "b1", "b2", "a1", "a2"]
