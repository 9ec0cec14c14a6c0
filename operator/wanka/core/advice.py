"""Checkpoint-interval advice: how often a gang should save, given what saving costs and how often its nodes fail.

Pure arithmetic, no clock and no Kubernetes: the operator, the simulator and the tests share it.

- `young_daly_interval`: the compute time between checkpoints that loses the least time, from the
  save time C and the job's mean time between interruptions M. Young (1974) gave the first-order
  sqrt(2CM); Daly ("A higher order estimate of the optimum checkpoint interval for restart dumps",
  Future Generation Computer Systems 22(3), 2006) the higher-order estimate used here.
- `interruption_rate`: interruptions per node-second of a pool, the observed count blended with a
  prior (gamma-Poisson), so that a pool with little history still gets sensible advice.
- `advise`: the two together for one job, clamped to a range an operator would accept, with the
  time the advice expects to lose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Llama 3 (Meta, "The Llama 3 Herd of Models", 2024, section 3.3.4): in a 54-day snapshot of
# pre-training on 16,384 H100 GPUs (2,048 servers of 8) there were 419 unexpected interruptions,
# about 78% of them attributed to confirmed or suspected hardware issues.
LLAMA3_INTERRUPTIONS = 419
LLAMA3_DAYS = 54
LLAMA3_GPUS = 16_384
LLAMA3_GPUS_PER_NODE = 8
LLAMA3_HARDWARE_SHARE = 0.78
# 16,384 GPUs x 54 d x 24 h = 21,233,664 GPU-hours; 419 / that = 1.973e-5 per GPU-hour
# (one interruption per 50,677 GPU-hours).
LLAMA3_RATE_PER_GPU_HOUR = LLAMA3_INTERRUPTIONS / (LLAMA3_GPUS * LLAMA3_DAYS * 24)
# 2,048 nodes x 1,296 h = 2,654,208 node-hours; 419 / that = 1.579e-4 per node-hour
# (one per 6,335 node-hours, i.e. a 128-node job is interrupted about every 49.5 hours).
LLAMA3_RATE_PER_NODE_HOUR = LLAMA3_INTERRUPTIONS / (LLAMA3_GPUS // LLAMA3_GPUS_PER_NODE * LLAMA3_DAYS * 24)
# The prior counts as much as 10,000 node-hours of history (about 1.6 interruptions at the Llama 3
# rate): weak enough that a 128-node pool's own record outweighs it after about 3.3 days.
PRIOR_NODE_HOURS = 10_000.0

# The shortest interval `young_daly_interval` returns: with a free save (C = 0) the formula says
# "checkpoint continuously", which is no schedule at all.
FLOOR_SECONDS = 1.0


def young_daly_interval(save_seconds: float, mtbf_seconds: float) -> float:
    """Compute seconds between checkpoints that minimise lost time (Daly's higher-order estimate).

    With C = `save_seconds` (the blocking save) and M = `mtbf_seconds` (the job's mean time
    between interruptions), for C < 2M::

        T = sqrt(2CM) * (1 + sqrt(C / 2M) / 3 + (C / 2M) / 9) - C

    whose leading term sqrt(2CM) is Young's first-order optimum; for C >= 2M, T = M. The result
    is never below `FLOOR_SECONDS` (C = 0 gives the floor).

    Raises ValueError unless C >= 0 and M > 0, both finite.
    """
    if not math.isfinite(save_seconds) or save_seconds < 0:
        raise ValueError(f"save_seconds must be a finite number >= 0, got {save_seconds!r}")
    if not math.isfinite(mtbf_seconds) or mtbf_seconds <= 0:
        raise ValueError(f"mtbf_seconds must be a finite number > 0, got {mtbf_seconds!r}")
    c, m = save_seconds, mtbf_seconds
    if c >= 2 * m:
        return max(FLOOR_SECONDS, m)
    x = c / (2 * m)
    interval = math.sqrt(2 * c * m) * (1 + math.sqrt(x) / 3 + x / 9) - c
    return max(FLOOR_SECONDS, interval)


def interruption_rate(
    faults: int,
    node_seconds: float,
    prior_rate_per_node_hour: float = LLAMA3_RATE_PER_NODE_HOUR,
    prior_node_hours: float = PRIOR_NODE_HOURS,
) -> float:
    """Interruptions per node-second: `faults` seen over `node_seconds` of exposure, blended with a prior.

    The posterior mean of a Poisson rate under a gamma prior worth `prior_node_hours` of history
    at `prior_rate_per_node_hour`::

        (prior_rate * prior_node_hours + faults) / (prior_node_hours * 3600 + node_seconds)

    With no history it is the prior rate; with much history it tends to the observed rate; it is
    never zero, so a young pool without faults yet is never told "never checkpoint".

    Raises ValueError for a negative count or exposure, or a prior that is not positive.
    """
    if faults < 0:
        raise ValueError(f"faults must be >= 0, got {faults!r}")
    if not math.isfinite(node_seconds) or node_seconds < 0:
        raise ValueError(f"node_seconds must be a finite number >= 0, got {node_seconds!r}")
    if not math.isfinite(prior_rate_per_node_hour) or prior_rate_per_node_hour <= 0:
        raise ValueError(f"prior_rate_per_node_hour must be > 0, got {prior_rate_per_node_hour!r}")
    if not math.isfinite(prior_node_hours) or prior_node_hours <= 0:
        raise ValueError(f"prior_node_hours must be > 0, got {prior_node_hours!r}")
    pseudo_faults = prior_rate_per_node_hour * prior_node_hours
    return (pseudo_faults + faults) / (prior_node_hours * 3600 + node_seconds)


@dataclass(frozen=True, slots=True)
class Advice:
    """A checkpoint interval for one job and what it expects to cost."""

    interval_seconds: float  # compute time between checkpoints, whole seconds, clamped
    job_mtbf_seconds: float  # mean time between the job's interruptions (inf at rate 0)
    # first-order share of time lost at that interval: saves C/T plus rework T/(2M); detection and
    # restart time come on top and do not depend on the interval
    expected_waste_fraction: float


def advise(
    save_seconds: float,
    nodes: int,
    rate_per_node_second: float,
    *,
    min_seconds: float = 60,
    max_seconds: float = 86400,
) -> Advice:
    """The checkpoint interval for a job of `nodes` nodes whose save blocks for `save_seconds`.

    The job is interrupted when any of its nodes is, so its MTBF is 1 / (rate x nodes). The
    interval is `young_daly_interval` clamped to [max(min_seconds, 2 x save), max_seconds] (the
    lower bound wins if they cross: a job should not spend more than a third of its time saving)
    and rounded to whole seconds (up, where rounding would cross the lower bound). At rate 0 it
    is the upper bound.

    `expected_waste_fraction` is C/T + T/(2M), the first-order approximation (Young's) of the time
    lost to saves and to work redone after an interruption; it ignores detection and restart
    time and is only accurate while T and C are small next to M.

    Raises ValueError for a negative save time or rate, fewer than one node, or bounds that are
    not positive.
    """
    if not math.isfinite(save_seconds) or save_seconds < 0:
        raise ValueError(f"save_seconds must be a finite number >= 0, got {save_seconds!r}")
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes!r}")
    if not math.isfinite(rate_per_node_second) or rate_per_node_second < 0:
        raise ValueError(f"rate_per_node_second must be a finite number >= 0, got {rate_per_node_second!r}")
    if not (0 < min_seconds < math.inf and 0 < max_seconds < math.inf):
        raise ValueError(f"min_seconds and max_seconds must be > 0, got {min_seconds!r}, {max_seconds!r}")
    low = max(min_seconds, 2 * save_seconds)
    high = max(max_seconds, low)
    if rate_per_node_second == 0:
        mtbf = math.inf
        interval = high
    else:
        mtbf = 1 / (rate_per_node_second * nodes)
        interval = min(max(young_daly_interval(save_seconds, mtbf), low), high)
    interval = float(max(round(interval), math.ceil(low)))
    waste = save_seconds / interval + (0.0 if math.isinf(mtbf) else interval / (2 * mtbf))
    return Advice(interval_seconds=interval, job_mtbf_seconds=mtbf, expected_waste_fraction=waste)
