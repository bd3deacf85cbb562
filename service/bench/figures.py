"""What every benchmark reports: percentiles and ratios over alternating rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

Progress = Callable[[str], None]  # one line for people, per finished phase


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank); 0 when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@dataclass(frozen=True)
class Arrivals:
    """One latency phase of things sent and awaited: how many, and send -> arrival p50/p99."""

    side: str
    sent: int
    received: int
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, side: str, sent: int, waits_ms: Sequence[float]) -> Arrivals:
        return cls(side, sent, len(waits_ms), percentile(waits_ms, 0.5), percentile(waits_ms, 0.99))

    @property
    def valid(self) -> bool:
        """Everything sent arrived (a lost one would leave its wait out of the figures)."""
        return self.received == self.sent > 0


@dataclass(frozen=True)
class Ratio:
    """A figure over its baseline across the rounds: the median decides, the range is shown.

    ``at_most`` turns the target from a floor into a ceiling (a slowdown that must stay
    small); a ratio without a target is shown for information and never fails the run.
    """

    baseline: str
    median: float
    low: float
    high: float
    target: float | None
    at_most: bool = False

    @property
    def met(self) -> bool:
        if self.target is None:
            return True
        return self.median <= self.target if self.at_most else self.median >= self.target

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "met": self.met}


def ratio_over_rounds(
    baseline: str, per_round: Sequence[float], target: float | None, at_most: bool = False
) -> Ratio:
    """The median of the per-round ratios with their range (never the ratio of medians)."""
    return Ratio(
        baseline,
        statistics.median(per_round),
        min(per_round),
        max(per_round),
        target,
        at_most,
    )


def rate_ratio(figure: float, baseline: float) -> float:
    """``figure / baseline``, a zero baseline counting as a tiny one."""
    return figure / max(baseline, 1e-9)


def ceiling(values: Sequence[float], target: float) -> dict[str, object]:
    """A figure that must stay at most ``target`` in every round: its range and verdict."""
    return {
        "low": min(values, default=0.0),
        "high": max(values, default=0.0),
        "target": target,
        "met": bool(values) and max(values) <= target,
    }
