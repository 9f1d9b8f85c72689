"""An :class:`~agent.update.installer.Installer` over RAUC: a release is a RAUC bundle (``*.raucb``) written
to the inactive slot by ``rauc install``; after the reboot into it and a passed self-test the slot is marked
good with ``rauc status mark-good`` and read back with ``rauc status --output-format=json``.

RAUC does the slot work (signature against its keyring, the image write, the bootloader's primary slot);
this module only drives the ``rauc`` command line and keeps what RAUC has no place for (the pending switch's
job and bake time, the last update's result) in one small JSON file. The status parsing is pure
(:func:`parse_status`, :func:`parse_info`); everything else is a thin shell around the command.

The ``rauc`` client talks to ``rauc service`` over D-Bus: the system bus on a robot, or a private bus when
``bus_address`` is given (the client and the service then both use ``DBUS_STARTER_BUS_TYPE=session`` and
``DBUS_SESSION_BUS_ADDRESS``; that is how the tests run it). RAUC's ``noop`` bootloader accepts ``mark-good``
but records nothing and reports every slot ``bad``, so a commit cannot be read back on it: :meth:`commit`
says so instead of pretending. A bootloader that keeps state (barebox, U-Boot, GRUB, EFI, or ``custom``
with a backend script) is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import Encoding

from agent.launcher import Slots, iso
from agent.update.installer import InstallError
from base.logs import get_logger
from provisioning.fsio import atomic_write

if TYPE_CHECKING:
    from cryptography import x509

    from provisioning.release import Manifest

INSTALL_TIMEOUT_S = 900.0
COMMAND_TIMEOUT_S = 60.0
OUTPUT_TAIL = 600
STATE_FILE = "rauc-state.json"
STATE_FORMAT = 1

log = get_logger("agent.update.rauc")


class RaucError(InstallError):
    """A ``rauc`` command failed or RAUC's state is not what the step needs. ``kind``: ``signature`` (the
    bundle does not verify), ``compat`` (not for this system, or not the release the job names), ``state``
    (the slots or the bootloader disagree with the step) or ``rauc`` (the command itself failed)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class RaucSlot:
    name: str  # "rootfs.1"
    bootname: str | None  # "B"
    state: str  # "booted" | "active" | "inactive"
    boot_status: str | None  # "good" | "bad" | None when RAUC could not ask the bootloader
    version: str | None  # the bundle version RAUC installed there; None for a factory image
    device: str


@dataclass(frozen=True)
class RaucStatus:
    compatible: str
    booted: str | None  # the booted slot's bootname as RAUC sees it
    primary: str | None  # the slot name the bootloader starts next; None when the bootloader cannot tell
    slots: tuple[RaucSlot, ...]

    def slot(self, name: str) -> RaucSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def booted_slot(self) -> RaucSlot | None:
        for s in self.slots:
            if s.state == "booted":
                return s
        return None

    @property
    def primary_slot(self) -> RaucSlot | None:
        return None if self.primary is None else self.slot(self.primary)

    def other_slot(self) -> RaucSlot | None:
        """The A/B partner of the booted slot (same class, not booted)."""
        booted = self.booted_slot
        if booted is None:
            return None
        cls = booted.name.rpartition(".")[0]
        others = [s for s in self.slots if s.name != booted.name and s.name.rpartition(".")[0] == cls]
        return others[0] if len(others) == 1 else None


@dataclass(frozen=True)
class RaucBundleInfo:
    compatible: str
    version: str


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_status(doc: Mapping[str, Any]) -> RaucStatus:
    """``rauc status --detailed --output-format=json`` as a :class:`RaucStatus` (ValueError when malformed)."""
    entries = doc.get("slots")
    if not isinstance(entries, list) or not isinstance(doc.get("compatible"), str):
        raise ValueError("rauc status: no 'compatible' or 'slots' in the JSON")
    slots: list[RaucSlot] = []
    for entry in entries:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"rauc status: a slot entry is not {{name: {{...}}}}: {entry!r}")
        ((name, info),) = entry.items()
        if not isinstance(info, dict):
            raise ValueError(f"rauc status: slot {name} is not an object")
        bundle = (info.get("slot_status") or {}).get("bundle") or {}
        slots.append(
            RaucSlot(
                name=name,
                bootname=_str_or_none(info.get("bootname")),
                state=str(info.get("state") or ""),
                boot_status=_str_or_none(info.get("boot_status")),
                version=_str_or_none(bundle.get("version")),
                device=str(info.get("device") or ""),
            )
        )
    slots.sort(key=lambda s: s.name)
    return RaucStatus(
        compatible=doc["compatible"],
        booted=_str_or_none(doc.get("booted")),
        primary=_str_or_none(doc.get("boot_primary")),
        slots=tuple(slots),
    )


def parse_info(doc: Mapping[str, Any]) -> RaucBundleInfo:
    """``rauc info --output-format=json`` as a :class:`RaucBundleInfo` (ValueError when malformed)."""
    compatible, version = doc.get("compatible"), doc.get("version")
    if not isinstance(compatible, str) or not isinstance(version, str) or not version:
        raise ValueError("rauc info: the bundle has no compatible or version")
    return RaucBundleInfo(compatible=compatible, version=version)


def _json_of(text: str, what: str) -> dict[str, Any]:
    """The JSON object in a rauc command's stdout (RAUC prints its messages and warnings on stderr)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(value, dict):
                return value
    raise RaucError(f"{what}: no JSON object in its output: {' '.join(text.split())[-OUTPUT_TAIL:]}", "rauc")


def _reason(text: str) -> str:
    """The line of a failing rauc's output that says why (``LastError: ...``), else its tail."""
    for line in text.splitlines():
        if line.startswith("LastError:"):
            return line.removeprefix("LastError:").strip()
    return " ".join(text.split())[-OUTPUT_TAIL:]


def _kind_of(reason: str) -> str:
    low = reason.lower()
    if "signature" in low or "verify error" in low or "certificate" in low:
        return "signature"
    if "compatible" in low:
        return "compat"
    return "rauc"


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    atomic_write(path, data, 0o600, overwrite=True)


class RaucInstaller:
    """Releases as RAUC bundles in an A/B slot pair. ``conf`` is RAUC's ``system.conf`` (for ``rauc info``;
    the service has its own), ``bus_address`` a private D-Bus bus (None: the system bus), ``state_dir``
    where the pending switch and the last result are kept, ``version`` the version running now (the
    booted slot's, or the factory image's when RAUC never installed that slot) and ``restart`` what stops
    this agent with an exit code: with RAUC a switch is a reboot into the other slot."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        version: str,
        restart: Callable[[int], None],
        conf: str | os.PathLike[str] | None = None,
        bus_address: str | None = None,
        rauc: str = "rauc",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.version = version
        self._restart = restart
        self.conf = None if conf is None else Path(conf)
        self.bus_address = bus_address
        self.rauc = rauc

    # -- the rauc command line -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.bus_address is not None:
            env["DBUS_STARTER_BUS_TYPE"] = "session"
            env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        return env

    def _argv(self, *args: str) -> list[str]:
        conf = [f"--conf={self.conf}"] if self.conf is not None else []
        return [self.rauc, *conf, *args]

    def _run(self, *args: str, what: str) -> str:
        argv = self._argv(*args)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=COMMAND_TIMEOUT_S,
            )
        except OSError as exc:
            raise RaucError(f"{what}: cannot run {self.rauc}: {exc.strerror or exc}", "rauc") from None
        except subprocess.TimeoutExpired:
            raise RaucError(f"{what}: timed out after {COMMAND_TIMEOUT_S:g} s", "rauc") from None
        if proc.returncode != 0:
            reason = _reason(proc.stdout + "\n" + proc.stderr)
            raise RaucError(f"{what} failed (exit {proc.returncode}): {reason}", _kind_of(reason))
        return proc.stdout

    async def _run_async(self, *args: str, what: str, timeout_s: float) -> str:
        argv = self._argv(*args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env(),
            )
        except OSError as exc:
            raise RaucError(f"{what}: cannot run {self.rauc}: {exc.strerror or exc}", "rauc") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RaucError(f"{what}: timed out after {timeout_s:g} s", "rauc") from None
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode("utf-8", errors="replace")
        if proc.returncode != 0:
            reason = _reason(text)
            raise RaucError(f"{what} failed (exit {proc.returncode}): {reason}", _kind_of(reason))
        return text

    def status(self) -> RaucStatus:
        """What RAUC says now: slots, the booted one, the bootloader's primary and each slot's state."""
        out = self._run("status", "--detailed", "--output-format=json", what="rauc status")
        try:
            return parse_status(_json_of(out, "rauc status"))
        except ValueError as exc:
            raise RaucError(str(exc), "rauc") from None

    def _info(self, bundle: Path, keyring: Path | None) -> RaucBundleInfo:
        args = ["info", "--output-format=json"]
        if keyring is not None:
            args.append(f"--keyring={keyring}")
        out = self._run(*args, str(bundle), what="rauc info")
        try:
            return parse_info(_json_of(out, "rauc info"))
        except ValueError as exc:
            raise RaucError(str(exc), "rauc") from None

    def info(self, bundle: Path, trust: Sequence[x509.Certificate] = ()) -> RaucBundleInfo:
        """The bundle's compatible and version, its signature checked (against ``trust`` when given, else
        against RAUC's keyring). Raises :class:`RaucError` (``kind="signature"``) when it does not verify."""
        if not trust:
            return self._info(bundle, None)
        with tempfile.TemporaryDirectory(prefix="rauc-trust-") as tmp:
            keyring = Path(tmp) / "keyring.pem"
            keyring.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in trust))
            return self._info(bundle, keyring)

    # -- our own small state ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        path = self.state_dir / STATE_FILE
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            return {"format": STATE_FORMAT, "pending": None, "last": None, "broken": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise RaucError(f"cannot read {path}: {exc}", "state") from None
        if not isinstance(value, dict) or value.get("format") != STATE_FORMAT:
            raise RaucError(f"{path}: not a format {STATE_FORMAT} RAUC update state", "state")
        return value

    def _save(self, state: Mapping[str, Any]) -> None:
        _write_json(self.state_dir / STATE_FILE, state)

    # -- the Installer protocol ------------------------------------------------------------------------

    def running_version(self) -> str:
        return self.version

    def slots(self) -> Slots:
        st = self.status()
        state = self._state()
        booted, other = st.booted_slot, st.other_slot()
        current = (booted.version if booted is not None else None) or self.version
        pending = state.get("pending")
        trial = None
        if pending is not None and current == pending.get("to"):
            if booted is not None and booted.boot_status != "good":
                trial = {
                    "format": 1,
                    "version": current,
                    "from": pending.get("from"),
                    "previous_before": pending.get("previous_before"),
                    "failed_starts": 0,
                    "interrupted_starts": 0,
                    "starts": 1,
                    "in_flight": True,
                    "failures": [],
                    "bake_s": pending.get("bake_s"),
                    "commit_timeout_s": pending.get("commit_timeout_s"),
                    "job": pending.get("job") or {},
                    "failure": None,
                    "switched_at": pending.get("at"),
                }
            pending = None
        previous = None
        if other is not None and other.boot_status == "good":  # a factory image has no RAUC version
            previous = other.version or (trial["from"] if trial is not None else None)
        installed = frozenset(s.version for s in st.slots if s.version) | {current}
        return Slots(
            current=current,
            previous=previous,
            pending=pending,
            trial=trial,
            last=state.get("last"),
            installed=installed,
            broken=dict(state.get("broken") or {}),
        )

    def free_bytes(self) -> int:
        return int(shutil.disk_usage(self.download_dir()).free)

    def download_dir(self) -> Path:
        path = self.state_dir / "downloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def install(self, bundle: Path, manifest: Manifest, trust: Sequence[x509.Certificate]) -> None:
        """Verify the bundle (``rauc info`` against ``trust``), check it is the manifest's release, then
        ``rauc install`` it into the inactive slot; read back that the slot holds it."""
        version = manifest.version
        info = await asyncio.to_thread(self.info, bundle, trust)
        if info.version != version:
            raise RaucError(f"the RAUC bundle is version {info.version}, the release is {version}", "compat")
        before = await asyncio.to_thread(self.status)
        if info.compatible != before.compatible:
            raise RaucError(
                f"the RAUC bundle is for {info.compatible!r}, this system is {before.compatible!r}", "compat"
            )
        log.info("update.rauc.install", bundle=str(bundle), version=version)
        await self._run_async("install", str(bundle), what="rauc install", timeout_s=INSTALL_TIMEOUT_S)
        after = await asyncio.to_thread(self.status)
        target = after.other_slot()
        if target is None or target.version != version:
            raise RaucError(
                f"rauc install succeeded but the inactive slot holds {target.version if target else None}, "
                f"not {version}",
                "state",
            )
        log.info("update.rauc.installed", slot=target.name, version=version, primary=after.primary)

    def request_switch(self, to: str, bake_s: float, commit_timeout_s: float, job: dict[str, Any]) -> None:
        """Make the slot holding ``to`` the bootloader's primary (``rauc install`` already did; this makes
        sure) and remember the switch, so the version booted next finds its trial."""
        st = self.status()
        target = st.other_slot()
        if target is None or target.version != to:
            raise RaucError(f"no inactive slot holds {to} (slots: {[s.version for s in st.slots]})", "state")
        if st.primary != target.name:
            self._run("status", "mark-active", target.name, what="rauc status mark-active")
        booted = st.booted_slot
        state = self._state()
        state["pending"] = {
            "format": 1,
            "to": to,
            "from": self.version,
            "previous_before": target.version if target.boot_status == "good" else None,
            "bake_s": bake_s,
            "commit_timeout_s": commit_timeout_s,
            "job": job,
            "at": iso(time.time()),
            "slot": target.name,
            "from_slot": booted.name if booted is not None else None,
        }
        self._save(state)
        log.info("update.rauc.switch_requested", to=to, slot=target.name)

    def commit(self, version: str) -> None:
        """``rauc status mark-good booted``, read back: the booted slot holds ``version``, the bootloader
        reports it good and starts it next. Raises :class:`RaucError` when any of it is not so."""
        before = self.status()
        booted = before.booted_slot
        booted_version = (booted.version if booted is not None else None) or self.version
        if booted is None or booted_version != version:
            raise RaucError(f"cannot commit {version}: the booted slot runs {booted_version}", "state")
        self._run("status", "mark-good", "booted", what="rauc status mark-good")
        after = self.status()
        slot = after.slot(booted.name)
        if slot.boot_status != "good" or after.primary != booted.name:
            raise RaucError(
                f"rauc status mark-good did not stick: the bootloader reports {slot.name} "
                f"{slot.boot_status or 'unknown'} and primary {after.primary or 'unknown'} (RAUC's noop "
                "bootloader records nothing; it needs a bootloader that keeps state)",
                "state",
            )
        state = self._state()
        pending = state.get("pending") or {}
        state["last"] = {
            "format": 1,
            "result": "committed",
            "from": pending.get("from"),
            "to": version,
            "reason": None,
            "at": iso(time.time()),
            "job": pending.get("job") or {},
        }
        state["pending"] = None
        state.get("broken", {}).pop(version, None)
        self._save(state)
        log.info("update.rauc.committed", version=version, slot=slot.name)

    def fail_trial(self, reason: str) -> None:
        """Mark the booted slot bad and the other one primary (read back), and keep ``reason`` for the
        version that boots next to report."""
        st = self.status()
        booted, other = st.booted_slot, st.other_slot()
        if booted is None or other is None:
            raise RaucError("cannot roll back: RAUC sees no booted slot with an A/B partner", "state")
        self._run("status", "mark-bad", "booted", what="rauc status mark-bad")
        self._run("status", "mark-active", other.name, what="rauc status mark-active")
        after = self.status()
        if after.primary != other.name:
            raise RaucError(
                f"rollback did not stick: the bootloader's primary is {after.primary or 'unknown'}, "
                f"not {other.name}",
                "state",
            )
        state = self._state()
        pending = state.get("pending") or {}
        version = booted.version or self.version
        origin = pending.get("from") or other.version
        now = iso(time.time())
        job = pending.get("job") or {}
        state["last"] = {
            "format": 1,
            "result": "rolled_back",
            "from": origin,
            "to": version,
            "reason": reason,
            "at": now,
            "job": job,
        }
        state.setdefault("broken", {})[version] = {
            "format": 1,
            "version": version,
            "reason": reason,
            "at": now,
            "from": origin,
            "job": job,
        }
        state["pending"] = None
        self._save(state)
        log.warning("update.rauc.rolled_back", version=booted.version, to_slot=other.name, reason=reason)

    def restart(self, code: int) -> None:
        self._restart(code)
