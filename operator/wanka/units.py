"""The units every layer counts GPUs in, defined once so quota, fair share, queue status and
placement agree: milli-GPU, a fraction's share, and what a MIG instance is worth.

A MIG instance counts its compute slices out of the device's seven, rounded DOWN to a
milli-GPU (1g = 142, 2g = 285, 3g = 428, 4g = 571, 7g = 1000): rounding down keeps the
instances of any valid geometry (at most seven compute slices) within one device's 1000.
"""

from __future__ import annotations

WHOLE = 1000  # milli-GPU in one device
MIG_COMPUTE_SLICES = 7  # compute slices of a MIG-capable NVIDIA GPU


def mig_profile_slices(profile: str) -> int:
    """Compute slices of a MIG profile name such as "3g.40gb"; ValueError for other names."""
    head, dot, _ = profile.partition("g.")
    if not dot or not head.isdigit():
        raise ValueError(f"MIG profile {profile!r} is not of the form <n>g.<mem>gb")
    return int(head)


def mig_share_milli(profile: str) -> int:
    """A MIG instance of `profile` in milli-GPU (its compute slices out of 7, rounded down)."""
    return mig_profile_slices(profile) * WHOLE // MIG_COMPUTE_SLICES


def fraction_milli(fraction: float) -> int:
    """A share of one device (0 < fraction < 1) in milli-GPU, never 0."""
    return max(1, round(fraction * WHOLE))
