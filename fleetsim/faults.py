"""Seeded fault injection for the simulated fleet: the ``--faults`` spec and the per-robot plan. Pure.

A spec is ``key=value`` items separated by commas, e.g.
``link_drop=0.01,broker_restart=60,serial_noise=0.001,stuck=0.05,flat=0.02``. Every bad item gets its own
readable reason, all reported at once. The plan is a function of (spec, seed, thing name) only, so the same
seed replays the same weather on every shard layout, and a failing run can be reproduced.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FaultKey:
    kind: str  # "rate" (per robot per second), "fraction" (0..1), "seconds"
    lo: float
    hi: float
    help: str


KEYS: dict[str, FaultKey] = {
    "link_drop": FaultKey(
        "rate", 0, 1, "per robot per second: the network link drops (abrupt, the will fires)"
    ),
    "link_down_s": FaultKey("seconds", 0.1, 600, "how long a dropped network link stays down (default 3)"),
    "serial_drop": FaultKey("rate", 0, 1, "per robot per second: the serial cable is unplugged"),
    "serial_down_s": FaultKey("seconds", 0.1, 600, "how long an unplugged cable stays out (default 2)"),
    "broker_restart": FaultKey("seconds", 5, 86400, "restart the local cloud's broker every N seconds"),
    "serial_noise": FaultKey("fraction", 0, 0.5, "fraction of robot->agent bytes corrupted"),
    "stuck": FaultKey("fraction", 0, 1, "fraction of robots that get stuck (wheels stall) once"),
    "stuck_s": FaultKey("seconds", 1, 86400, "how long a stuck robot stays stuck (default 30)"),
    "flat": FaultKey("fraction", 0, 1, "fraction of robots whose battery runs flat once"),
    "flat_pct": FaultKey("percent", 0, 14, "battery percent a flat robot drops to (default 4)"),
    "window": FaultKey(
        "seconds", 1, 86400, "stuck/flat happen at a seeded moment in the first N s (default 30)"
    ),
    "until": FaultKey(
        "seconds", 0, 86400, "no new drops or broker restarts after N s (default 0: never stop)"
    ),
}


class FaultSpecError(ValueError):
    """An invalid ``--faults`` spec; ``problems`` has one line per bad item."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FaultSpec:
    link_drop: float = 0.0
    link_down_s: float = 3.0
    serial_drop: float = 0.0
    serial_down_s: float = 2.0
    broker_restart: float = 0.0
    serial_noise: float = 0.0
    stuck: float = 0.0
    stuck_s: float = 30.0
    flat: float = 0.0
    flat_pct: float = 4.0
    window: float = 30.0
    until: float = 0.0

    @property
    def any(self) -> bool:
        return any(
            getattr(self, k)
            for k in ("link_drop", "serial_drop", "broker_restart", "serial_noise", "stuck", "flat")
        )

    def to_json(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_faults(spec: str | None) -> FaultSpec:
    """``"link_drop=0.01,stuck=0.05"`` -> FaultSpec; raises FaultSpecError listing every bad item."""
    if spec is None or not spec.strip():
        return FaultSpec()
    values: dict[str, float] = {}
    problems: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(f"{item!r}: expected key=value (e.g. link_drop=0.01)")
            continue
        if key not in KEYS:
            problems.append(f"{key!r}: unknown fault; known: {', '.join(KEYS)}")
            continue
        if key in values:
            problems.append(f"{key!r}: given twice")
            continue
        rule = KEYS[key]
        try:
            value = float(text.strip())
        except ValueError:
            problems.append(f"{key}={text.strip()!r}: not a number ({rule.help})")
            continue
        if not math.isfinite(value) or not rule.lo <= value <= rule.hi:
            unit = {"rate": " per second", "fraction": "", "seconds": " s", "percent": " %"}[rule.kind]
            problems.append(
                f"{key}={text.strip()}: must be between {rule.lo:g} and {rule.hi:g}{unit} ({rule.help})"
            )
            continue
        values[key] = value
    if problems:
        raise FaultSpecError(problems)
    return FaultSpec(**values)


@dataclass(frozen=True)
class FaultAction:
    """One thing to do to one robot at ``at`` (seconds since the fleet started)."""

    at: float
    kind: str  # link_drop, link_restore, serial_drop, serial_restore, stuck, unstuck, flat
    thing: str
    value: float | None = None


class RobotFaults:
    """The seeded fault timeline of one robot; :meth:`due` pops what is due by ``t``."""

    def __init__(self, spec: FaultSpec, seed: int, thing: str) -> None:
        self.spec = spec
        self.thing = thing
        self.rng = random.Random(f"{seed}/{thing}")
        self._queue: list[FaultAction] = []
        self._next_link = self._after(0.0, spec.link_drop)
        self._next_serial = self._after(0.0, spec.serial_drop)
        window_rng = random.Random(f"{seed}/{thing}/once")
        if spec.stuck and window_rng.random() < spec.stuck:
            at = window_rng.uniform(0, spec.window)
            self._queue += [FaultAction(at, "stuck", thing), FaultAction(at + spec.stuck_s, "unstuck", thing)]
        if spec.flat and window_rng.random() < spec.flat:
            self._queue.append(FaultAction(window_rng.uniform(0, spec.window), "flat", thing, spec.flat_pct))

    def _after(self, t: float, rate: float) -> float:
        if rate <= 0:
            return math.inf
        at = t + self.rng.expovariate(rate)
        return math.inf if self.spec.until and at > self.spec.until else at

    def due(self, t: float) -> list[FaultAction]:
        s = self.spec
        while self._next_link <= t:
            at = self._next_link
            self._queue += [
                FaultAction(at, "link_drop", self.thing),
                FaultAction(at + s.link_down_s, "link_restore", self.thing),
            ]
            self._next_link = self._after(at + s.link_down_s, s.link_drop)
        while self._next_serial <= t:
            at = self._next_serial
            self._queue += [
                FaultAction(at, "serial_drop", self.thing),
                FaultAction(at + s.serial_down_s, "serial_restore", self.thing),
            ]
            self._next_serial = self._after(at + s.serial_down_s, s.serial_drop)
        ready = sorted((a for a in self._queue if a.at <= t), key=lambda a: a.at)
        if ready:
            self._queue = [a for a in self._queue if a.at > t]
        return ready


def broker_restart_times(spec: FaultSpec, until: float) -> list[float]:
    """Seconds since start at which the broker is restarted, up to ``until``."""
    if not spec.broker_restart:
        return []
    if spec.until:
        until = min(until, spec.until)
    n = int(until // spec.broker_restart)
    return [spec.broker_restart * (i + 1) for i in range(n)]
