"""Counters, gauges and a small latency reservoir, rendered as one JSON object.

The same snapshot goes to ``roomba/<thing>/metrics`` and into the status file, so what an operator reads on
the robot (``roomba-agent status``) and what the fleet sees are the same numbers.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any


class Metrics:
    def __init__(self, reservoir: int = 512) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float | int | str | None] = {}
        self._latencies: deque[float] = deque(maxlen=reservoir)
        self._reservoir = reservoir
        self._series: dict[str, deque[float]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set(self, name: str, value: float | int | str | None) -> None:
        self.gauges[name] = value

    def observe_rtt(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def observe(self, name: str, seconds: float) -> None:
        self._series.setdefault(name, deque(maxlen=self._reservoir)).append(seconds)

    def rtt_summary(self) -> dict[str, float | None]:
        return self._summary(self._latencies)

    @staticmethod
    def _summary(values: deque[float]) -> dict[str, float | None]:
        data = sorted(values)
        if not data:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0}

        def q(p: float) -> float:
            return round(data[min(len(data) - 1, int(p * len(data)))] * 1000, 2)

        return {"p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(data[-1] * 1000, 2), "n": len(data)}

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(sorted(self.counters.items())),
            "gauges": dict(sorted(self.gauges.items())),
            "shadow_rtt": self.rtt_summary(),
            **{f"{name}_latency": self._summary(values) for name, values in sorted(self._series.items())},
        }
