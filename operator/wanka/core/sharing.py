"""Places gangs of device shares with a fragmentation-aware slice policy across the whole pool.

Gang placement picks nodes for whole-device work by topology; for shares of one device the
choice that matters is which (node, device) leaves the pool least fragmented for the work
it is expected to see, which is what the slice policies in core/slicing.py score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from wanka.core.fragmentation import Shape, Workload
from wanka.core.gang import BEST_FIT_SLICES, REFUSALS, GangPlacement, GangResult, Writer
from wanka.core.requests import GangRequest
from wanka.core.slicing import PolicyContext, SliceDecision, SliceRequest, get_policy, place
from wanka.core.snapshot import Node, Snapshot

# When nothing is known about a pool's work yet: common small-tenant shares and whole GPUs.
TYPICAL = (
    Shape(cpu_milli=4000, gpu_milli=250, gpus=1),
    Shape(cpu_milli=4000, gpu_milli=500, gpus=1),
    Shape(cpu_milli=8000, gpu_milli=1000, gpus=1),
    Shape(cpu_milli=32000, gpu_milli=1000, gpus=8),
)


def workload_of(requests: Iterable[GangRequest]) -> Workload:
    """The target workload for fragmentation: the shapes of the pool's pending and running
    gangs (one per replica), or TYPICAL when there are none."""
    shapes = []
    for req in requests:
        if req.is_fractional:
            shape = Shape(req.cpu_milli, req.share_milli, 1)
        elif req.whole_gpus:
            shape = Shape(req.cpu_milli, 1000, req.whole_gpus)
        else:
            continue
        shapes.extend([shape] * req.replicas)
    return Workload.from_shapes(shapes or TYPICAL)


@dataclass
class FragmentationAwareShares:
    """A slice policy for the scheduler: shares go where the pool fragments least.

    `place_shares` places every replica of a fractional gang (all or none); `choose_device`
    serves the topology-constrained path, where gang placement has chosen the node.
    """

    policy: str = "wanka"
    max_shares_per_device: int | None = None
    workload: Workload = field(default_factory=lambda: Workload.from_shapes(TYPICAL))

    def choose_device(
        self, node: Node, milli: int, memory_mib: int, excluded: frozenset[int]
    ) -> int | None:
        if self.max_shares_per_device is not None:
            full = frozenset(d.index for d in node.devices if d.shares >= self.max_shares_per_device)
            excluded = excluded | full
        return BEST_FIT_SLICES.choose_device(node, milli, memory_mib, excluded)

    def place_shares(
        self, snapshot: Snapshot, req: GangRequest, writer: Writer | None, dry_run: bool
    ) -> GangResult:
        policy = get_policy(self.policy)
        ctx = PolicyContext(workload=self.workload)
        one = SliceRequest.fraction(
            req.share_milli, cpu_milli=req.cpu_milli, memory_mib=req.memory_mib,
            gpu_memory_mib=req.share_memory_mib, models=req.models,
        )
        txn = snapshot.transaction()
        target: Writer = writer if writer is not None and not dry_run else txn
        done = []
        reason = ""
        # Nodes the gang's taints or labels rule out are left out like excluded ones.
        selective = req.selective
        refused = {n.name: r for n in snapshot.nodes.values()
                   if (n.taints or selective) and (r := req.refusal(n)) is not None}
        exclude = req.excluded_nodes | refused.keys() if refused else req.excluded_nodes
        for member in range(req.replicas):
            # One context for the whole gang: place() keeps node states and scores in it and
            # re-reads only the nodes our own applies touched.
            decision = place(snapshot, one, policy, ctx,
                             max_shares_per_device=self.max_shares_per_device,
                             exclude=exclude)
            if not isinstance(decision, SliceDecision):
                reason = (f"replica {member + 1}/{req.replicas} of {req.describe()}: "
                          f"{decision.reason}")
                if refused:
                    counts = sorted(Counter(refused.values()).items())
                    reason += " (of them " + ", ".join(f"{n} {REFUSALS[r]}" for r, n in counts) + ")"
                break
            alloc = decision.allocation(req.owner, str(member), one)
            target.apply(alloc)
            done.append(alloc)
        if reason or dry_run or writer is None:
            # Failure, dry run, or no outer writer: our own transaction decides.
            if reason or dry_run:
                if target is txn:
                    txn.discard()
                else:
                    target.release(req.owner)
            else:
                txn.commit()
        if reason:
            return GangResult(None, reason)
        return GangResult(GangPlacement(req.owner, tuple(done), "", ()), "", len(done))
