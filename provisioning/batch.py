"""Factory batches: thousands of identities into one directory, resumable, never half-written.

Each identity directory appears atomically (see ``fsio.write_directory``) before its manifest line is
appended and fsynced, so after SIGINT or a kill a rerun finds every finished identity, recovers manifest
lines for ones made just before the interruption, and makes only what is missing. Keys are never replaced.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from base.logs import get_logger
from provisioning import certs
from provisioning.ca import CertificateAuthority, read_certificate
from provisioning.device import DEVICE_CERT, DEVICE_KEY, DEVICE_PKCS11, Identity, create_identity
from provisioning.errors import BatchLocked, InvalidInput
from provisioning.fsio import atomic_write, fsync_dir, remove_stale_temps
from provisioning.names import thing_name_problem

MANIFEST = "manifest.jsonl"
LOCK = ".batch.lock"

log = get_logger("provisioning.batch")


@dataclass(frozen=True)
class PlannedThing:
    thing: str
    serial: str


@dataclass(frozen=True)
class Progress:
    """Reported after each identity: ``done`` counts made, skipped and recovered ones."""

    done: int
    total: int
    created: int
    elapsed_s: float


class BatchStopped(Exception):
    """The batch was asked to stop between two identities; rerunning it resumes."""


@dataclass(frozen=True)
class BatchResult:
    total: int
    created: int
    skipped: int
    recovered: int
    manifest_path: Path
    elapsed_s: float


def plan_count(count: int, prefix: str) -> list[PlannedThing]:
    """``prefix`` + zero-padded index from 1 (at least 3 digits: robot-001), the index is the serial."""
    if count < 1:
        raise InvalidInput("--count must be at least 1")
    width = max(3, len(str(count)))
    return _checked([PlannedThing(f"{prefix}{i:0{width}d}", f"{i:0{width}d}") for i in range(1, count + 1)])


def plan_serials(lines: Iterable[str], prefix: str, source: str = "serials") -> list[PlannedThing]:
    """One serial per line (blank lines and # comments ignored); thing = ``prefix`` + serial."""
    planned: list[PlannedThing] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        serial = raw.split("#", 1)[0].strip()
        if not serial:
            continue
        if serial in seen:
            raise InvalidInput(f"{source}:{number}: serial {serial!r} already listed on line {seen[serial]}")
        seen[serial] = number
        problem = thing_name_problem(prefix + serial)
        if problem:
            raise InvalidInput(f"{source}:{number}: {problem}")
        planned.append(PlannedThing(prefix + serial, serial))
    if not planned:
        raise InvalidInput(f"{source} lists no serial numbers")
    return planned


def _checked(plan: list[PlannedThing]) -> list[PlannedThing]:
    for item in plan:
        problem = thing_name_problem(item.thing)
        if problem:
            raise InvalidInput(problem)
    return plan


def manifest_entry(thing: str, serial: str, cert: x509.Certificate) -> dict[str, str]:
    return {
        "thing": thing,
        "serial": serial,
        "certificate_id": certs.certificate_id(cert),
        "fingerprint_sha256": certs.fingerprint(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def read_manifest(path: Path) -> tuple[dict[str, dict[str, str]], bool]:
    """Entries by thing, and whether the file needs rewriting (a torn last line or a duplicate)."""
    entries: dict[str, dict[str, str]] = {}
    dirty = False
    if not path.exists():
        return entries, False
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        dirty = True  # a torn append: the next line would be glued onto it
    for line in data.splitlines():
        try:
            entry = json.loads(line)
            thing = entry["thing"]
        except (ValueError, KeyError, TypeError):
            dirty = True
            continue
        if thing in entries:
            dirty = True
        entries[thing] = entry
    return entries, dirty


def _serialise(entries: Iterable[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in entries)


class _Manifest:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, entry: dict[str, str]) -> None:
        os.write(self._fd, _serialise([entry]))
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _recover(directory: Path, item: PlannedThing) -> dict[str, str]:
    cert_file = directory / DEVICE_CERT
    if not cert_file.exists() or not (
        (directory / DEVICE_KEY).exists() or (directory / DEVICE_PKCS11).exists()
    ):
        raise InvalidInput(
            f"{directory} exists but is not a complete identity (made by something else?); move it away and rerun"
        )
    try:
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except ValueError:
        raise InvalidInput(
            f"{cert_file} is not a valid certificate; move {directory} away and rerun"
        ) from None
    cn = certs.common_name(cert.subject)
    if cn != item.thing:
        raise InvalidInput(
            f"{directory} holds a certificate for {cn!r}, not {item.thing!r}; move it away and rerun"
        )
    return manifest_entry(item.thing, item.serial, cert)


def run_batch(
    ca: CertificateAuthority,
    out_dir: str | os.PathLike[str],
    plan: list[PlannedThing],
    *,
    days: int = certs.DEFAULT_DEVICE_DAYS,
    root_ca: str | os.PathLike[str] | bytes | None = None,
    chain: bool = False,
    progress: Callable[[Progress], None] | None = None,
    now: dt.datetime | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    """Make every planned identity under ``out_dir/<thing>/`` and list it once in ``manifest.jsonl``.

    ``should_stop`` is asked before each identity; when it says so the batch raises ``BatchStopped`` between
    two identities, so a signal never lands in the middle of one (the CLI's SIGINT/SIGTERM handlers only set
    a flag)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchLocked(
                f"another batch is writing into {out}; wait for it or use another --out"
            ) from None
        return _run_locked(ca, out, plan, days, root_ca, chain, progress, now, should_stop)
    finally:
        os.close(lock_fd)


def _run_locked(
    ca: CertificateAuthority,
    out: Path,
    plan: list[PlannedThing],
    days: int,
    root_ca: str | os.PathLike[str] | bytes | None,
    chain: bool,
    progress: Callable[[Progress], None] | None,
    now: dt.datetime | None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchResult:
    started = time.monotonic()
    stale = remove_stale_temps(out)
    manifest_path = out / MANIFEST
    entries, dirty = read_manifest(manifest_path)
    if dirty:
        atomic_write(manifest_path, _serialise(entries.values()), 0o644, overwrite=True)
    if stale or entries:
        log.info("batch.resume", already=len(entries), stale_temps=stale)
    if isinstance(root_ca, str | os.PathLike):
        root_ca = certs.cert_pem(read_certificate(Path(root_ca)))
    created = skipped = recovered = 0
    manifest = _Manifest(manifest_path)
    try:
        for index, item in enumerate(plan, start=1):
            if should_stop is not None and should_stop():
                raise BatchStopped(f"stopped after {index - 1} of {len(plan)} identities")
            directory = out / item.thing
            if item.thing in entries and directory.exists():
                skipped += 1
            elif directory.exists():
                entry = _recover(directory, item)
                manifest.append(entry)
                entries[item.thing] = entry
                recovered += 1
            else:
                ident = create_identity(
                    ca, item.thing, directory, days, root_ca=root_ca, chain=chain, now=now
                )
                entry = _identity_entry(ident, item)
                if item.thing in entries:
                    entries[item.thing] = entry
                    atomic_write(manifest_path, _serialise(entries.values()), 0o644, overwrite=True)
                    manifest.close()
                    manifest = _Manifest(manifest_path)
                else:
                    manifest.append(entry)
                    entries[item.thing] = entry
                created += 1
            if progress is not None:
                progress(Progress(index, len(plan), created, time.monotonic() - started))
    finally:
        manifest.close()
        fsync_dir(out)
    elapsed = time.monotonic() - started
    log.info("batch.done", total=len(plan), created=created, skipped=skipped, recovered=recovered)
    return BatchResult(len(plan), created, skipped, recovered, manifest_path, elapsed)


def _identity_entry(ident: Identity, item: PlannedThing) -> dict[str, str]:
    return {
        "thing": ident.thing,
        "serial": item.serial,
        "certificate_id": ident.certificate_id,
        "fingerprint_sha256": ident.fingerprint,
        "not_before": ident.not_before.isoformat(),
        "not_after": ident.not_after.isoformat(),
    }
