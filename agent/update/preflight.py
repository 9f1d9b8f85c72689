"""Preflight: may this robot take this release now? Pure: versions, ABI, disk space and the robot's state in,
a :class:`Refusal` (the job's terminal status and a specific reason) or None out.

REJECTED means the release can never go on this robot as the job stands (incompatible, not newer, not the
version the job names); FAILED means it might later (not enough disk space now, another update in flight).
Versions are PEP 440 and ordered with :class:`packaging.version.Version`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

MIB = 1024 * 1024
INSTALL_FACTOR = 3  # the installed venv, estimated from the bundle before its manifest is known
REJECTED = "REJECTED"
FAILED = "FAILED"


@dataclass(frozen=True)
class Refusal:
    status: str  # REJECTED or FAILED
    reason: str


def _version(text: str, what: str) -> Version | Refusal:
    try:
        return Version(text)
    except (InvalidVersion, TypeError):
        return Refusal(REJECTED, f"{what} {text!r} is not a PEP 440 version")


def check_versions(
    running: str, target: str, *, allow_downgrade: bool, min_previous: str | None = None
) -> Refusal | None:
    """The target is newer than the running version (older only with ``allow_downgrade``; the same never),
    and the running version is at least the release's ``min_previous``."""
    cur = _version(running, "the running version")
    new = _version(target, "the release version")
    if isinstance(cur, Refusal):
        return cur
    if isinstance(new, Refusal):
        return new
    if new == cur:
        return Refusal(REJECTED, f"version {target} is already running")
    if new < cur and not allow_downgrade:
        return Refusal(
            REJECTED,
            f"version {target} is older than the running {running} and the job does not allow a "
            "downgrade (allow_downgrade)",
        )
    if min_previous:
        floor = _version(min_previous, "the release's min_previous")
        if isinstance(floor, Refusal):
            return floor
        if cur < floor:
            return Refusal(
                REJECTED,
                f"version {target} needs at least {min_previous} running first; this robot runs {running}",
            )
    return None


def check_abi(release_abi: str, robot_abi: str) -> Refusal | None:
    if release_abi != robot_abi:
        return Refusal(
            REJECTED, f"the release is built for Python {release_abi}; this robot's Python is {robot_abi}"
        )
    return None


def check_platform(release_platform: str | None, robot_platform: str) -> Refusal | None:
    """A bundle says the platform its wheels are for (``linux_x86_64``); one that says none fits any."""
    if release_platform is not None and release_platform != robot_platform:
        return Refusal(REJECTED, f"built for {release_platform}, this robot is {robot_platform}")
    return None


def check_busy(pending: Mapping[str, Any] | None, trial: Mapping[str, Any] | None) -> Refusal | None:
    """One update at a time: a switch asked for or a trial running is finished first."""
    if trial:
        return Refusal(
            FAILED, f"another update is in its trial (version {trial.get('version')}); try again after it"
        )
    if pending:
        return Refusal(
            FAILED, f"a switch to version {pending.get('to')} is already pending; try again after it"
        )
    return None


def space_needed(download_bytes: int, install_bytes: int, min_free_mb: int) -> int:
    return max(0, download_bytes) + max(0, install_bytes) + max(0, min_free_mb) * MIB


def check_space(
    free_bytes: int, *, download_bytes: int, install_bytes: int, min_free_mb: int
) -> Refusal | None:
    """Room for what is still to download, the installed release and the margin ``min_free_mb``."""
    need = space_needed(download_bytes, install_bytes, min_free_mb)
    if free_bytes >= need:
        return None
    parts = []
    if download_bytes > 0:
        parts.append(f"bundle {_mb(download_bytes)}")
    parts.append(f"install {_mb(install_bytes)}")
    parts.append(f"margin {min_free_mb} MB")
    return Refusal(
        FAILED, f"not enough disk space: {_mb(need)} needed ({' + '.join(parts)}), {_mb(free_bytes)} free"
    )


def check_before_download(
    *,
    running: str,
    target: str,
    allow_downgrade: bool,
    bundle_size: int,
    already_downloaded: int,
    free_bytes: int,
    min_free_mb: int,
    pending: Mapping[str, Any] | None = None,
    trial: Mapping[str, Any] | None = None,
) -> Refusal | None:
    """What can be decided from the job alone (the manifest is inside the bundle): versions, one update at
    a time, disk space for the rest of the download plus an estimate of the install."""
    return (
        check_versions(running, target, allow_downgrade=allow_downgrade)
        or check_busy(pending, trial)
        or check_space(
            free_bytes,
            download_bytes=bundle_size - already_downloaded,
            install_bytes=INSTALL_FACTOR * bundle_size,
            min_free_mb=min_free_mb,
        )
    )


def check_manifest(
    *,
    running: str,
    expected_version: str,
    version: str,
    min_previous: str | None,
    python_abi: str,
    robot_abi: str,
    allow_downgrade: bool,
    install_bytes: int,
    free_bytes: int,
    min_free_mb: int,
    platform: str | None = None,
    robot_platform: str | None = None,
) -> Refusal | None:
    """After the signature is verified, before anything is unpacked: the bundle is the release the job
    names, for this Python and platform, after the running version, and its install fits."""
    if version != expected_version:
        return Refusal(REJECTED, f"the bundle is version {version}, the job names {expected_version}")
    return (
        check_abi(python_abi, robot_abi)
        or (None if robot_platform is None else check_platform(platform, robot_platform))
        or check_versions(running, version, allow_downgrade=allow_downgrade, min_previous=min_previous)
        or check_space(free_bytes, download_bytes=0, install_bytes=install_bytes, min_free_mb=min_free_mb)
    )


def robot_gate(docked: bool | None, mission: str | None, link_up: bool) -> str | None:
    """What the robot must be before it switches (None: it may): docked, or idle (not on a mission)."""
    if not link_up or docked is None:
        return "the serial link to the robot (docked or idle)"
    if docked or mission in ("idle", "docked"):
        return None
    return f"docked or idle (mission now {mission})"


def _mb(n: int) -> str:
    return f"{n / MIB:.1f} MB"
