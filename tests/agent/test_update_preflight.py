"""Preflight of an update, table-driven: versions (PEP 440 order), min_previous, ABI, one update at a time,
disk space (bundle + install + margin), the robot gate; each refusal with its status and its reason."""

from __future__ import annotations

from typing import Any

import pytest

from agent.update import preflight
from agent.update.preflight import FAILED, MIB, REJECTED, Refusal


@pytest.mark.parametrize(
    ("running", "target", "allow", "floor", "expected"),
    [
        ("0.1.0", "0.2.0", False, None, None),
        ("0.1.0", "0.10.0", False, None, None),  # PEP 440, not string order
        ("0.2.0", "0.2.1rc1", False, None, None),
        ("0.2.0rc1", "0.2.0", False, None, None),
        ("0.2.0", "0.2.0", False, None, Refusal(REJECTED, "version 0.2.0 is already running")),
        ("0.2.0", "0.2.0", True, None, Refusal(REJECTED, "version 0.2.0 is already running")),
        ("0.2.0", "0.2", False, None, Refusal(REJECTED, "version 0.2 is already running")),
        (
            "0.2.0",
            "0.1.0",
            False,
            None,
            Refusal(
                REJECTED,
                "version 0.1.0 is older than the running 0.2.0 and the job does not allow a downgrade "
                "(allow_downgrade)",
            ),
        ),
        ("0.2.0", "0.1.0", True, None, None),
        (
            "0.1.0",
            "0.3.0",
            False,
            "0.2.0",
            Refusal(REJECTED, "version 0.3.0 needs at least 0.2.0 running first; this robot runs 0.1.0"),
        ),
        ("0.2.0", "0.3.0", False, "0.2.0", None),
        (
            "0.1.0",
            "banana",
            False,
            None,
            Refusal(REJECTED, "the release version 'banana' is not a PEP 440 version"),
        ),
        (
            "dev",
            "0.2.0",
            False,
            None,
            Refusal(REJECTED, "the running version 'dev' is not a PEP 440 version"),
        ),
        (
            "0.1.0",
            "0.2.0",
            False,
            "x.y",
            Refusal(REJECTED, "the release's min_previous 'x.y' is not a PEP 440 version"),
        ),
    ],
)
def test_versions(
    running: str, target: str, allow: bool, floor: str | None, expected: Refusal | None
) -> None:
    assert preflight.check_versions(running, target, allow_downgrade=allow, min_previous=floor) == expected


def test_abi() -> None:
    assert preflight.check_abi("cp311", "cp311") is None
    assert preflight.check_abi("cp312", "cp311") == Refusal(
        REJECTED, "the release is built for Python cp312; this robot's Python is cp311"
    )


@pytest.mark.parametrize(
    ("pending", "trial", "expected"),
    [
        (None, None, None),
        (
            {"to": "0.2.0"},
            None,
            Refusal(FAILED, "a switch to version 0.2.0 is already pending; try again after it"),
        ),
        (
            None,
            {"version": "0.2.0"},
            Refusal(FAILED, "another update is in its trial (version 0.2.0); try again after it"),
        ),
    ],
)
def test_one_update_at_a_time(pending: Any, trial: Any, expected: Refusal | None) -> None:
    assert preflight.check_busy(pending, trial) == expected


@pytest.mark.parametrize(
    ("free", "download", "install", "margin", "expected"),
    [
        (100 * MIB, 10 * MIB, 30 * MIB, 60, None),  # exactly enough
        (
            100 * MIB - 1,
            10 * MIB,
            30 * MIB,
            60,
            "not enough disk space: 100.0 MB needed (bundle 10.0 MB + install 30.0 MB + margin 60 MB), 100.0 MB free",
        ),
        (
            40 * MIB,
            0,
            30 * MIB,
            64,
            "not enough disk space: 94.0 MB needed (install 30.0 MB + margin 64 MB), 40.0 MB free",
        ),
        (0, 0, 0, 0, None),
    ],
)
def test_space(free: int, download: int, install: int, margin: int, expected: str | None) -> None:
    got = preflight.check_space(free, download_bytes=download, install_bytes=install, min_free_mb=margin)
    assert got == (None if expected is None else Refusal(FAILED, expected))


BASE = dict(
    running="0.1.0",
    target="0.2.0",
    allow_downgrade=False,
    bundle_size=10 * MIB,
    already_downloaded=0,
    free_bytes=10 * 1024 * MIB,
    min_free_mb=64,
)


@pytest.mark.parametrize(
    ("change", "status", "starts"),
    [
        ({}, None, None),
        ({"target": "0.1.0"}, REJECTED, "version 0.1.0 is already running"),
        ({"pending": {"to": "0.3.0"}}, FAILED, "a switch to version 0.3.0"),
        (
            {"free_bytes": 50 * MIB},
            FAILED,
            "not enough disk space: 104.0 MB needed (bundle 10.0 MB + install 30.0 MB",
        ),
        # a resumed download needs room for the rest only
        ({"free_bytes": 100 * MIB, "already_downloaded": 6 * MIB}, None, None),
        ({"free_bytes": 100 * MIB}, FAILED, "not enough disk space"),
    ],
)
def test_before_download(change: dict[str, Any], status: str | None, starts: str | None) -> None:
    got = preflight.check_before_download(**{**BASE, **change})
    if status is None:
        assert got is None
    else:
        assert got is not None and got.status == status and got.reason.startswith(starts or ""), got


MANIFEST = dict(
    running="0.1.0",
    expected_version="0.2.0",
    version="0.2.0",
    min_previous="0.1.0",
    python_abi="cp311",
    robot_abi="cp311",
    allow_downgrade=False,
    install_bytes=30 * MIB,
    free_bytes=1024 * MIB,
    min_free_mb=64,
)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, None),
        ({"version": "0.2.1"}, Refusal(REJECTED, "the bundle is version 0.2.1, the job names 0.2.0")),
        (
            {"python_abi": "cp312"},
            Refusal(REJECTED, "the release is built for Python cp312; this robot's Python is cp311"),
        ),
        (
            {"min_previous": "0.1.5"},
            Refusal(REJECTED, "version 0.2.0 needs at least 0.1.5 running first; this robot runs 0.1.0"),
        ),
        (
            {"running": "0.3.0"},
            Refusal(
                REJECTED,
                "version 0.2.0 is older than the running 0.3.0 and the job does not allow a downgrade (allow_downgrade)",
            ),
        ),
        ({"running": "0.3.0", "allow_downgrade": True}, None),
        (
            {"free_bytes": 90 * MIB},
            Refusal(
                FAILED, "not enough disk space: 94.0 MB needed (install 30.0 MB + margin 64 MB), 90.0 MB free"
            ),
        ),
    ],
)
def test_manifest(change: dict[str, Any], expected: Refusal | None) -> None:
    assert preflight.check_manifest(**{**MANIFEST, **change}) == expected


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"platform": "linux_x86_64"}, None),
        ({"platform": None}, None),  # a bundle built before the manifest said its platform: any
        (
            {"platform": "linux_aarch64"},
            Refusal(REJECTED, "built for linux_aarch64, this robot is linux_x86_64"),
        ),
    ],
)
def test_manifest_platform(change: dict[str, Any], expected: Refusal | None) -> None:
    change = {**change, "robot_platform": "linux_x86_64"}
    assert preflight.check_manifest(**{**MANIFEST, **change}) == expected


@pytest.mark.parametrize(
    ("docked", "mission", "link", "expected"),
    [
        (True, "cleaning", True, None),  # docked counts even if the tracker lags
        (False, "idle", True, None),
        (True, "docked", True, None),
        (False, "cleaning", True, "docked or idle (mission now cleaning)"),
        (False, "idle", False, "the serial link to the robot (docked or idle)"),
        (None, None, False, "the serial link to the robot (docked or idle)"),
    ],
)
def test_robot_gate(docked: bool | None, mission: str | None, link: bool, expected: str | None) -> None:
    assert preflight.robot_gate(docked, mission, link) == expected
