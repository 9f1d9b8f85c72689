"""Seeded fault injection for the simulated fleet: the ``--faults`` spec and the per-robot plan. Pure.

A spec is ``key=value`` items separated by commas, e.g.
``link_drop=0.01,broker_restart=60,serial_noise=0.001,stuck=0.05,flat=0.02``. Every bad item gets its own
readable reason, all reported at once.

Bad builds for update rehearsals are items too (:data:`UPDATE_KINDS`): ``update-crash=P`` (the new version
crashes at start), ``update-selftest=P`` (its self-test fails: the robot's sensor stream dies under it),
``update-slow=P`` (the robot's downloads crawl at ``update_slow_kbps``), ``update-disk-full=P`` (the disk
fills half-way through its install), ``update-power-cut=PHASE:P`` (the power goes once at that phase, see
:data:`POWER_CUT_PHASES`); each optionally ``@VERSION`` (``update-selftest@0.3.0=20%``: only that version is
bad). ``P`` is a fraction or a percentage (``0.2``, ``20%``) of the robots. The plan is a function of (spec, seed, thing name) only, so the same
seed replays the same weather on every shard layout, and a failing run can be reproduced.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Any


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
    "update_slow_kbps": FaultKey(
        "kbps", 8, 1_000_000, "the download rate of a robot with update-slow, kbit/s (default 256)"
    ),
}

UPDATE_KINDS: dict[str, str] = {
    "update-crash": "fraction of robots whose new version crashes at start (three tries, then rolled back)",
    "update-selftest": "fraction of robots whose new version fails its self-test (sensor stream dies)",
    "update-slow": "fraction of robots whose downloads crawl at update_slow_kbps (a slow link)",
    "update-disk-full": "fraction of robots whose disk fills half-way through the install",
    "update-power-cut": "PHASE:P: fraction of robots that lose power once at PHASE of the update",
}
POWER_CUT_PHASES = (
    "preflight",
    "downloading",
    "verified",
    "installed",
    "switching",
    "self_test",
    "committed",
)
"""Where a simulated power cut can strike: at the preflight's disk check, just as the download starts, once
the bundle is verified (before the install), once it is installed, once the switch is asked for (before the
restart), during the new version's trial, and right after its commit (before SUCCEEDED is reported)."""


@dataclass(frozen=True)
class UpdateFault:
    """One ``update-*`` item: ``kind`` for ``fraction`` of the robots, on ``version`` only when given."""

    kind: str
    fraction: float
    version: str | None = None
    phase: str | None = None  # update-power-cut only

    @property
    def key(self) -> str:
        return self.kind + (f"@{self.version}" if self.version else "")

    def text(self) -> str:
        value = f"{self.phase}:{self.fraction:g}" if self.phase else f"{self.fraction:g}"
        return f"{self.key}={value}"


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
    update_slow_kbps: float = 256.0
    update: tuple[UpdateFault, ...] = ()

    @property
    def any(self) -> bool:
        return any(
            getattr(self, k)
            for k in ("link_drop", "serial_drop", "broker_restart", "serial_noise", "stuck", "flat")
        )

    @property
    def any_update(self) -> bool:
        return any(f.fraction > 0 for f in self.update)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "update"}
        doc["update"] = [u.text() for u in self.update]
        return doc


def _fraction(text: str) -> float | None:
    """``"20%"`` -> 0.2, ``"0.2"`` -> 0.2; None unless a finite number in [0, 1]."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _parse_update(key: str, text: str, problems: list[str]) -> UpdateFault | None:
    kind, _, version = key.partition("@")
    if kind not in UPDATE_KINDS:
        problems.append(f"{key!r}: unknown update fault; known: {', '.join(UPDATE_KINDS)}")
        return None
    if "@" in key and not version.strip():
        problems.append(f"{key!r}: expected {kind}@VERSION (e.g. {kind}@0.3.0)")
        return None
    phase: str | None = None
    value = text
    if kind == "update-power-cut":
        phase, sep, value = text.partition(":")
        phase = phase.strip()
        if not sep or phase not in POWER_CUT_PHASES:
            problems.append(
                f"{key}={text.strip()!r}: expected PHASE:P with PHASE one of {', '.join(POWER_CUT_PHASES)}"
            )
            return None
    fraction = _fraction(value)
    if fraction is None:
        problems.append(
            f"{key}={text.strip()}: must be a fraction 0..1 or a percentage 0..100% ({UPDATE_KINDS[kind]})"
        )
        return None
    return UpdateFault(kind, fraction, version.strip() or None, phase)


def parse_faults(spec: str | None) -> FaultSpec:
    """``"link_drop=0.01,stuck=0.05"`` -> FaultSpec; raises FaultSpecError listing every bad item."""
    if spec is None or not spec.strip():
        return FaultSpec()
    values: dict[str, float] = {}
    update: dict[tuple[str, str | None], UpdateFault] = {}
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
        if key.startswith("update-"):
            fault = _parse_update(key, text, problems)
            if fault is not None:
                slot = (fault.key, fault.phase)
                if slot in update:
                    problems.append(
                        f"{key!r}: given twice" + (f" for phase {fault.phase}" if fault.phase else "")
                    )
                else:
                    update[slot] = fault
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
            unit = {
                "rate": " per second",
                "fraction": "",
                "seconds": " s",
                "percent": " %",
                "kbps": " kbit/s",
            }[rule.kind]
            problems.append(
                f"{key}={text.strip()}: must be between {rule.lo:g} and {rule.hi:g}{unit} ({rule.help})"
            )
            continue
        values[key] = value
    cuts: dict[str | None, float] = {}
    for fault in update.values():
        if fault.phase is not None:
            cuts[fault.version] = cuts.get(fault.version, 0.0) + fault.fraction
    for version, total in cuts.items():
        if total > 1.0 + 1e-9:
            at = f"@{version}" if version else ""
            problems.append(f"update-power-cut{at}: the phases' fractions add up to {total:g}, more than 1")
    if problems:
        raise FaultSpecError(problems)
    return FaultSpec(**values, update=tuple(update.values()))


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


@dataclass(frozen=True)
class UpdateFaults:
    """What goes wrong for one robot with one version: from (spec, seed, thing, version) only."""

    crash: bool = False
    selftest: bool = False
    slow: bool = False
    disk_full: bool = False
    power_cut: str | None = None  # a phase of POWER_CUT_PHASES

    @property
    def any(self) -> bool:
        return self.crash or self.selftest or self.disk_full or self.slow or self.power_cut is not None

    def names(self) -> list[str]:
        out = [
            n
            for n, on in (("crash", self.crash), ("selftest", self.selftest), ("disk-full", self.disk_full))
            if on
        ]
        if self.slow:
            out.append("slow")
        if self.power_cut:
            out.append(f"power-cut:{self.power_cut}")
        return out


def update_faults(spec: FaultSpec, seed: int, thing: str, version: str) -> UpdateFaults:
    """The bad-build faults of ``thing`` installing ``version``. Each item draws once per robot (and per
    version when it names one), so ``update-selftest@0.3.0=20%`` makes the same fifth of the fleet fail on
    every shard layout; the power-cut phases of one version share one draw (a robot loses power at one of
    them at most)."""
    found: dict[str, Any] = {}
    cut_draws: dict[str | None, float] = {}
    cut_edges: dict[str | None, float] = {}
    for fault in spec.update:
        if fault.version is not None and fault.version != version:
            continue
        if fault.phase is not None:
            if fault.version not in cut_draws:
                cut_draws[fault.version] = random.Random(
                    f"{seed}/{thing}/update-power-cut/{fault.version}"
                ).random()
            lo = cut_edges.get(fault.version, 0.0)
            cut_edges[fault.version] = lo + fault.fraction
            if lo <= cut_draws[fault.version] < lo + fault.fraction and "power_cut" not in found:
                found["power_cut"] = fault.phase
            continue
        if random.Random(f"{seed}/{thing}/{fault.key}").random() < fault.fraction:
            if fault.kind == "update-crash":
                found["crash"] = True
            elif fault.kind == "update-selftest":
                found["selftest"] = True
            elif fault.kind == "update-slow":
                found["slow"] = True
            elif fault.kind == "update-disk-full":
                found["disk_full"] = True
    return UpdateFaults(**found)


def slow_link(spec: FaultSpec, seed: int, thing: str) -> bool:
    """Whether ``thing``'s downloads crawl (``update-slow``; a slow link is the robot's, whatever version it
    fetches, so an ``@VERSION`` item counts for every download of that robot)."""
    return any(
        f.kind == "update-slow" and random.Random(f"{seed}/{thing}/{f.key}").random() < f.fraction
        for f in spec.update
    )
