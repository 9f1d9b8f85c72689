"""The shipped systemd files, checked by systemd's own tools (systemd 252, PID 1 need not be systemd)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "roomba-agent.service"
SYSUSERS = ROOT / "systemd" / "roomba-agent.sysusers.conf"
TMPFILES = ROOT / "systemd" / "roomba-agent.tmpfiles.conf"
LAUNCHER_EXEC = (
    "ExecStart=/usr/bin/python3 /usr/lib/roomba-agent/launcher.py --root /opt/roomba-agent -- "
    "run --config /etc/roomba-agent/agent.toml"
)


def unit_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart's python3 this one if the machine has no /usr/bin/python3 (verify needs the
    binary to exist)."""
    text = UNIT.read_text()
    if not Path("/usr/bin/python3").exists():
        text = text.replace("ExecStart=/usr/bin/python3", f"ExecStart={sys.executable}")
    path = tmp_path / "roomba-agent.service"
    path.write_text(text)
    return path


def test_unit_shape() -> None:
    """The unit declares what the agent relies on: Type=notify, the watchdog, restart limits, its user and dirs."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitBurst=",
        "User=roomba-agent",
        "SupplementaryGroups=dialout",
        "StateDirectory=roomba-agent",
        "ConfigurationDirectory=roomba-agent",
        "RuntimeDirectory=roomba-agent",
        "RestartPreventExitStatus=78",
        "SuccessExitStatus=100 101",
        "RestartForceExitStatus=100 101",
        "ReadWritePaths=/opt/roomba-agent",
        "NotifyAccess=main",
        LAUNCHER_EXEC,
    ):
        assert line in text, line


def test_the_unit_starts_the_launcher_with_its_exit_codes() -> None:
    """ExecStart runs the stable launcher (agent/launcher.py, installed as /usr/lib/roomba-agent/launcher.py)
    on the release root; the exit codes the unit names are the launcher's."""
    from agent import launcher

    text = UNIT.read_text()
    assert f"SuccessExitStatus={launcher.EXIT_SWITCH} {launcher.EXIT_ROLLBACK}" in text
    assert f"RestartPreventExitStatus={launcher.EX_CONFIG}" in text
    assert f"--root {launcher.DEFAULT_ROOT} --" in text
    argv = LAUNCHER_EXEC.removeprefix("ExecStart=").split()
    parsed = launcher.build_parser().parse_args(argv[2 : argv.index("--")])
    assert parsed.root == launcher.DEFAULT_ROOT


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the unit."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above is only meaningful if verify reports mistakes on stderr."""
    path = unit_copy(tmp_path)
    path.write_text(path.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "NoNewPrivilegez" in result.stderr


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    """The unit's sandboxing keeps systemd-analyze security's exposure at 2.0 or below."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for roomba-agent\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0


def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    """sysusers creates the service user in dialout, tmpfiles the directories with their modes."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True, timeout=60
    )
    assert re.search(r"^roomba-agent:x:\d+:\d+:.*:/usr/sbin/nologin$", (etc / "passwd").read_text(), re.M)
    assert "dialout:x:20:roomba-agent" in (etc / "group").read_text()
    ident = etc / "roomba-agent" / "identity"
    ident.mkdir(parents=True)
    (ident / "device.key").write_text("k")
    (etc / "roomba-agent" / "agent.toml").write_text("")
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert (ident / "device.key").stat().st_mode & 0o777 == 0o600
    assert (ident / "device.key").stat().st_uid != 0
    releases = tmp_path / "opt" / "roomba-agent"  # the unit's ReadWritePaths= must exist
    assert releases.is_dir() and releases.stat().st_uid == (ident / "device.key").stat().st_uid


def test_tools_present() -> None:
    """The systemd tools the other unit tests run are installed here."""
    assert (
        shutil.which("systemd-analyze")
        and shutil.which("systemd-sysusers")
        and shutil.which("systemd-tmpfiles")
    )
