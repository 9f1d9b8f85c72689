"""A simulated robot's releases: the update feature's :class:`~agent.update.installer.Installer`, and the
launcher it stands on, in memory.

A real robot keeps its releases under ``[update] root`` and a stable launcher (what systemd starts) switches
between them (:mod:`agent.launcher`). A simulated one keeps the same :class:`agent.launcher.Slots` in memory
and applies the same pure core (``on_boot``, ``on_exit``, ``committed``, ``request_switch``) at the same
moments: :meth:`SimInstaller.boot` before each start of the robot's agent, :meth:`SimInstaller.exited` after
it, and the agent's own calls through :meth:`SimInstaller.bind`. What is simulated is only the machine:
the bundle the feature downloaded is verified again with :mod:`provisioning.release` (signature, every
file's SHA-256) but "installed" without pip, and the disk is a number.

Bad builds come from the fault plan (:func:`fleetsim.faults.update_faults`), decided when a version is
installed: a crash at start (the shard never gets an agent running on it), a failing self-test (the sensor
stream dies under it: the feature's real self-test sees it), a disk that fills half-way, and a power cut at
a phase (:data:`fleetsim.faults.POWER_CUT_PHASES`). A power cut stops the agent abruptly: its
MQTT link dies without a DISCONNECT (the will fires), nothing it does afterwards reaches the installer, and
the launcher's ``on_exit`` never runs; the next :meth:`boot` finds what the real launcher would find on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import logs
from fleetsim.faults import FaultSpec, UpdateFaults, update_faults

if TYPE_CHECKING:
    from cryptography import x509

    from agent.daemon import Agent
    from agent.launcher import Slots
    from provisioning.release import Manifest

DISK_BYTES = 8 * 1024**3
"""The simulated robot's disk for releases and downloads."""
BASE_BYTES = 150 * 1024**2
"""What the release a robot was provisioned with takes."""
CRASH_AFTER_S = 0.3
"""How long a crashing build lives before it exits (imports, then a traceback)."""
REBOOT_S = 1.0
"""How long a robot is dark after a power cut before the launcher runs again."""
INSTALL_S = 0.2
"""What an install takes (without pip, without a slow fault)."""
DEFAULT_COMMIT_TIMEOUT_S = 300.0
"""The launcher's commit deadline when the switch did not give one (its ``--commit-timeout``)."""


class PowerCut(BaseException):
    """The simulated power went while this agent ran: what it asks afterwards never happens.

    A BaseException, like the ``CancelledError`` it stands beside: the agent's ``except Exception`` handlers
    must not turn it into a FAILED outcome they would journal (and report after the reboot) for an update
    a real power cut would simply have stopped."""


@dataclasses.dataclass
class Start:
    """What the launcher decided for one start of the robot's agent."""

    version: str | None
    trial: bool
    faults: UpdateFaults
    commit_timeout_s: float | None = None


class SimInstaller:
    """One simulated robot's releases and launcher state; outlives every agent the robot runs.

    ``on_power_cut(phase)`` is the shard's: it stops the running agent abruptly (see :meth:`power_cut`).
    """

    def __init__(
        self,
        thing: str,
        *,
        version: str,
        spec: FaultSpec,
        seed: int,
        download_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from agent.launcher import fresh

        self.thing = thing
        self.spec = spec
        self.seed = seed
        self.clock = clock
        self.base_version = version
        self.state: Slots = fresh(version)
        self._download_dir = download_dir
        self.sizes: dict[str, int] = {version: BASE_BYTES}
        self.plans: dict[str, UpdateFaults] = {}
        self.fired: set[tuple[str, str]] = set()  # (version, phase) power cuts that happened
        self.starts = 0
        self.crashes = 0
        self.power_cuts = 0
        self.deadlines = 0
        self.running: Bound | None = None
        self.on_power_cut: Callable[[str], None] | None = None
        self.log = logs.get_logger("fleetsim.update", thing=thing)

    # -- the launcher's side ----------------------------------------------------------------------------
    def faults_of(self, version: str) -> UpdateFaults:
        """A version's bad-build faults (none for the one the robot was provisioned with)."""
        if version == self.base_version:
            return UpdateFaults()
        plan = self.plans.get(version)
        if plan is None:
            plan = self.plans[version] = update_faults(self.spec, self.seed, self.thing, version)
        return plan

    def boot(self) -> Start:
        """The launcher starting: a pending switch is performed, a trial start counted (or reverted after
        too many); returns the version to run (None: nothing is runnable)."""
        from agent.launcher import on_boot

        self.state, version, notes = on_boot(self.state, self.clock())
        for note in notes:
            fields = dict(note)
            self.log.info(str(fields.pop("event", "launcher.note")), **fields)
        self.starts += 1
        trial = self.state.trial
        in_trial = version is not None and trial is not None and trial.get("version") == version
        timeout: float | None = None
        if in_trial and trial is not None:
            given = trial.get("commit_timeout_s")
            timeout = (
                float(given) if isinstance(given, int | float) and given > 0 else DEFAULT_COMMIT_TIMEOUT_S
            )
        faults = self.faults_of(version) if version else UpdateFaults()
        return Start(version, in_trial, faults, timeout)

    def exited(self, code: int | None, reason: str, *, stopping: bool = False) -> None:
        """The agent's process ended with ``code`` (None: killed); ``stopping``: the shard stopped it."""
        from agent.launcher import on_exit

        self.running = None
        if stopping:
            self.state = on_exit(self.state, 0, "stopped", self.clock())
        else:
            self.state = on_exit(self.state, code, reason, self.clock())

    def deadline_missed(self, version: str, commit_timeout_s: float) -> None:
        """The launcher stopped a trial start that did not commit in time: roll back."""
        from agent.launcher import deadline_missed

        self.running = None
        self.deadlines += 1
        self.state = deadline_missed(self.state, version, commit_timeout_s, self.clock())

    def bind(self, agent: Agent, version: str) -> Bound:
        """The installer one agent (one start) sees; :attr:`Hooks.installer` of that agent."""
        bound = Bound(self, agent, version)
        self.running = bound
        return bound

    def power_cut(self, phase: str, target: str) -> None:
        """Cut the power of the running agent now, at ``phase`` of its update to ``target``."""
        bound = self.running
        if bound is None or not bound.alive:
            return
        bound.alive = False
        self.running = None
        self.power_cuts += 1
        self.fired.add((target, phase))
        self.log.info("fleetsim.update.power_cut", phase=phase, running=bound.version, target=target)
        if self.on_power_cut is not None:
            self.on_power_cut(phase)

    def maybe_cut(self, version: str | None, phase: str) -> bool:
        """Cut the power if the plan says so for ``version`` at ``phase`` (once per version and phase)."""
        if version is None:
            return False
        if self.faults_of(version).power_cut != phase or (version, phase) in self.fired:
            return False
        self.power_cut(phase, version)
        return True

    # -- what the agent's update feature asks ------------------------------------------------------------
    def free_bytes(self) -> int:
        used = sum(self.sizes.get(v, BASE_BYTES) for v in self.state.installed)
        return max(0, DISK_BYTES - used)

    def download_dir(self) -> Path:
        self._download_dir.mkdir(parents=True, exist_ok=True)
        return self._download_dir

    def status(self) -> dict[str, Any]:
        """The robot's releases, for the shard's status document."""
        s = self.state
        last = s.last or None
        trial = s.trial or None
        return {
            "version": s.current,
            "previous": s.previous,
            "trial": trial.get("version") if trial else None,
            "pending": (s.pending or {}).get("to"),
            "update": {k: last.get(k) for k in ("result", "from", "to", "reason")} if last else None,
            "installed": sorted(s.installed),
            "restarts": max(0, self.starts - 1),
            "crashes": self.crashes,
            "power_cuts": self.power_cuts,
            "deadlines": self.deadlines,
        }


class Bound:
    """:class:`agent.update.installer.Installer` for one start of one simulated robot's agent."""

    def __init__(self, owner: SimInstaller, agent: Agent, version: str) -> None:
        self.owner = owner
        self.agent = agent
        self.version = version
        self.alive = True
        self.target: str | None = None  # the version this start is installing
        self.preflight_done = False  # the disk space was asked for: the download comes next

    def _check(self) -> None:
        if not self.alive:
            raise PowerCut(f"{self.owner.thing}: the power was cut; this agent is gone")

    def _job_target(self) -> str | None:
        """The version the running job installs (for faults of a version before it is downloaded)."""
        if self.target is not None:
            return self.target
        current = getattr(getattr(self.agent, "jobs", None), "current", None)
        plan = getattr(current, "plan", None)
        release = (getattr(plan, "args", None) or {}).get("release")
        version = release.get("version") if isinstance(release, dict) else None
        return version if isinstance(version, str) else None

    def running_version(self) -> str:
        return self.version

    def slots(self) -> Slots:
        return self.owner.state

    def free_bytes(self) -> int:
        self._check()
        if self.owner.maybe_cut(self._job_target(), "preflight"):
            self._check()
        self.preflight_done = True
        return self.owner.free_bytes()

    def download_dir(self) -> Path:
        self._check()
        target = self._job_target()
        if (
            self.preflight_done
            and target is not None
            and self.owner.faults_of(target).power_cut == "downloading"
        ):
            # the power goes while the bytes arrive: the next turn of the loop, the download under way
            asyncio.get_running_loop().call_soon(self.owner.maybe_cut, target, "downloading")
        return self.owner.download_dir()

    async def install(self, bundle: Path, manifest: Manifest, trust: Sequence[x509.Certificate]) -> None:
        from agent.update.installer import InstallError
        from provisioning.release import BundleReader, ReleaseError

        self._check()
        owner = self.owner
        version = manifest.version
        self.target = version
        if version in owner.state.installed:
            return
        faults = owner.faults_of(version)
        if owner.maybe_cut(version, "verified"):
            await _forever()
        try:
            verified = await asyncio.to_thread(BundleReader(bundle).verify, trust)
        except ReleaseError as exc:
            raise InstallError(f"bundle {bundle.name}: {exc}") from None
        if verified.version != version:
            raise InstallError(f"bundle {bundle.name} is version {verified.version}, not {version}")
        await asyncio.sleep(INSTALL_S / 2)
        self._check()
        if faults.disk_full:
            await asyncio.sleep(INSTALL_S / 2)
            raise InstallError(
                f"installing {version}: [Errno 28] No space left on device (the disk filled half-way; "
                "the partial release was removed)"
            )
        await asyncio.sleep(INSTALL_S / 2)
        self._check()
        owner.sizes[version] = int(manifest.install_bytes) or BASE_BYTES
        owner.state = dataclasses.replace(owner.state, installed=owner.state.installed | {version})
        if owner.maybe_cut(version, "installed"):
            await _forever()

    def request_switch(self, to: str, bake_s: float, commit_timeout_s: float, job: dict[str, Any]) -> None:
        from agent.launcher import request_switch

        self._check()
        owner = self.owner
        owner.state = request_switch(owner.state, to, bake_s, commit_timeout_s, job, owner.clock())
        owner.maybe_cut(to, "switching")

    def commit(self, version: str) -> None:
        from agent.launcher import LayoutError, committed

        self._check()
        owner = self.owner
        state = committed(owner.state, version, owner.clock())
        if state.current != version or state.trial is not None:
            raise LayoutError(
                f"commit of {version} did not take: current {state.current}, trial {state.trial}"
            )
        owner.state = state
        owner.maybe_cut(version, "committed")

    def fail_trial(self, reason: str) -> None:
        from agent.launcher import fail_trial

        self._check()
        owner = self.owner
        owner.state = fail_trial(owner.state, reason, owner.clock())

    def restart(self, code: int) -> None:
        self._check()
        self.agent.request_exit(code)


async def _forever() -> None:
    """Where an agent whose power was cut waits for the shard to take it down."""
    await asyncio.get_running_loop().create_future()
