"""How a run's repeated measurements become one figure: medians, spreads, paired ratios, and
the part of a storm no front end can avoid (one bcrypt check per user on the machine's CPUs)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def spread(values: Sequence[float]) -> float:
    """Half the range over the median, as a fraction (0.05: the runs were within ±5%)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / 2 / middle if middle else math.inf


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """`ours` over `theirs`. Runs taken in the same rounds (the same count, round i of each a
    few seconds apart) are paired, and the median of the round-by-round ratios is the answer:
    whatever else the machine did hit both sides of a pair alike. Otherwise: the medians'."""
    if len(ours) == len(theirs) and ours:
        return statistics.median(_over(a, b) for a, b in zip(ours, theirs, strict=True))
    if not ours or not theirs:
        return math.inf
    return _over(statistics.median(ours), statistics.median(theirs))


def ratio_spread(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """The spread of the round-by-round ratios (0 when the runs are not paired)."""
    if len(ours) != len(theirs) or len(ours) < 2:
        return 0.0
    return spread([_over(a, b) for a, b in zip(ours, theirs, strict=True)])


def bcrypt_floor(clients: int, one_check: float, cpus: int) -> float:
    """Seconds any authenticating front end must spend on a storm's first logins: one check
    per client (each is a different user), on every CPU at once."""
    return clients * one_check / max(1, cpus)


def _over(value: float, base: float) -> float:
    return value / base if base else math.inf
