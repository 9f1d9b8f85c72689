"""``roomba-agent doctor``'s fixes fit the set-up: a local cloud that is down is started with its own
``--dir`` (never "check the firewall / port 443"), a missing pty is a simulator to start, ``journalctl`` only
for an agent in a systemd unit, and the certificate stage says when the certificate expires."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509

from agent import doctor as doc

BIN = Path(sys.executable).parent


def doctor(config: Path, *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    out = subprocess.run(
        [str(BIN / "roomba-agent"), "doctor", "--config", str(config), "--json", "--timeout", "5", *extra],
        capture_output=True,
        text=True,
        timeout=150,
        env={k: v for k, v in os.environ.items() if k != "INVOCATION_ID"},
    )
    assert out.stdout, out.stderr
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def expiry_of(cert: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


def assert_no_aws_advice(checks: dict[str, dict[str, Any]]) -> None:
    fixes = " ".join(c["fix"] or "" for c in checks.values())
    assert "firewall" not in fixes and "443" not in fixes and "journalctl" not in fixes, fixes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_local_cloud_down_says_start_it_with_its_dir(new_cloud: Any, tmp_path: Path) -> None:
    """A robot of a local cloud that is not running: the TCP stage's fix is `roomba-fleet up --dir DIR`
    with the cloud's own directory, and no fix talks of firewalls or port 443."""
    cloud = new_cloud()
    config = Path(cloud.add_robot("doc-down", str(tmp_path / "robot.tty")))
    cloud.stop()
    code, checks = doctor(config)
    assert code == 1
    assert checks["config"]["status"] == "passed"
    assert f"local cloud {cloud.dir.root}" in checks["config"]["detail"]
    tcp = checks["tcp"]
    assert tcp["status"] == "failed"
    assert tcp["fix"].startswith(f"start the local cloud: roomba-fleet up --dir {cloud.dir.root}"), tcp
    assert checks["mqtt connect"]["status"] == "skipped"
    assert_no_aws_advice(checks)


def test_missing_pty_says_start_the_simulator(local_cloud: Any, tmp_path: Path) -> None:
    """The serial port is a pty path nobody serves: the fix starts the simulator on that very path."""
    link = tmp_path / "robot.tty"
    config = Path(local_cloud.add_robot("doc-no-pty", str(link)))
    _, checks = doctor(config)
    assert checks["mqtt connect"]["status"] == "passed"  # the cloud is up: only the robot is missing
    serial = checks["serial port"]
    assert serial["status"] == "failed"
    assert serial["fix"] == f"start the simulator: roomba-sim robot --link {link}"
    assert checks["oi handshake"]["status"] == "skipped"


def test_certificate_stage_prints_expiry_date_and_days_left(local_cloud: Any, tmp_path: Path) -> None:
    """The identity `robot add` issued (real provisioning code): the stage passes and says when it ends."""
    config = Path(local_cloud.add_robot("doc-expiry", str(tmp_path / "robot.tty")))
    cert = local_cloud.dir.identity_dir("doc-expiry") / "device.crt"
    end = expiry_of(cert)
    left = (end - dt.datetime.now(dt.UTC)).days
    _, checks = doctor(config)
    detail = checks["certificates"]["detail"]
    assert checks["certificates"]["status"] == "passed"
    assert f"expires {end.date().isoformat()} ({left} days left)" in detail or (
        f"expires {end.date().isoformat()} ({left - 1} days left)"
        in detail  # a day boundary passed meanwhile
    ), detail


def test_expired_and_expiring_certificates(local_cloud: Any, tmp_path: Path) -> None:
    """Identities signed by the cloud's CA with the provisioning code, one expired, one about to expire."""
    from provisioning import ca as pca
    from provisioning.device import create_identity

    ca = pca.load_ca(local_cloud.dir.ca_dir)
    now = dt.datetime.now(dt.UTC)
    old = create_identity(ca, "doc-old", tmp_path / "old", days=30, now=now - dt.timedelta(days=40))
    soon = create_identity(ca, "doc-soon", tmp_path / "soon", days=20, now=now - dt.timedelta(hours=1))
    assert doc.expiry_line(str(tmp_path / "old" / "device.crt"), now) == (
        f"expired {expiry_of(tmp_path / 'old' / 'device.crt').date().isoformat()} (10 days ago)"
    )
    assert doc.expiry_line(str(tmp_path / "soon" / "device.crt"), now) == (
        f"expires {expiry_of(tmp_path / 'soon' / 'device.crt').date().isoformat()} (19 days left)"
    )
    del old, soon
    config = Path(local_cloud.add_robot("doc-old", str(tmp_path / "robot.tty")))
    text = config.read_text()
    identity = local_cloud.dir.identity_dir("doc-old")
    config.write_text(text.replace(str(identity), str(tmp_path / "old")))
    _, checks = doctor(config)
    certs = checks["certificates"]
    assert certs["status"] == "failed" and "expired on" in certs["detail"], certs
    assert certs["fix"].startswith("issue a new certificate")


def test_running_agent_not_under_systemd_is_not_sent_to_journalctl(rig: dict[str, Any]) -> None:
    """An agent started from a shell (here: the test) that cannot connect: the fix points at its output
    and at starting the local cloud, not at `journalctl -u roomba-agent`."""
    config: Path = rig["config"]
    port = rig["cloud"].port
    config.write_text(config.read_text().replace(f"port = {port}", f"port = {free_port()}"))
    agent = rig["agent"].start()
    rig["until"](lambda: agent.status().get("pid") == agent.proc.pid, 30, "the agent's status file")
    assert doc.unit_of(agent.proc.pid) is None  # precondition: not in a roomba-agent unit
    rig["until"](
        lambda: (agent.status().get("mqtt", {}).get("reconnect") or {}).get("last_error"),
        30,
        "a failed connection attempt in the status file",
    )
    code, checks = doctor(config)
    assert code == 1
    mqtt = checks["mqtt connect"]
    assert mqtt["status"] == "failed" and "running agent is not connected" in mqtt["detail"], mqtt
    assert "failed: " in mqtt["detail"], mqtt  # the agent's own reason, from mqtt.reconnect
    assert "see the agent's output" in mqtt["fix"] and "journalctl" not in mqtt["fix"], mqtt
    assert f"roomba-fleet up --dir {rig['cloud'].dir.root}" in mqtt["fix"]
    assert checks["tcp"]["fix"].startswith(
        f"start the local cloud: roomba-fleet up --dir {rig['cloud'].dir.root}"
    )
    assert_no_aws_advice(checks)


def test_systemd_unit_from_cgroup() -> None:
    """journalctl is offered only for an agent in a roomba-agent unit (system or user manager)."""
    assert doc.systemd_unit("0::/system.slice/roomba-agent.service\n") == "roomba-agent.service"
    assert (
        doc.systemd_unit(
            "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/app.slice/roomba-agent.service"
        )
        == "--user roomba-agent.service"
    )
    for outside in (
        "0::/user.slice/user-1000.slice/session-4.scope",
        "0::/",
        "0::/system.slice/ci-runner.service",
    ):
        assert doc.systemd_unit(outside) is None, outside
    assert doc.logs_hint("roomba-agent.service").startswith("journalctl -u roomba-agent -e")
    assert doc.logs_hint("--user roomba-agent.service").startswith("journalctl --user -u roomba-agent -e")
    assert "journalctl" not in doc.logs_hint(None)


def test_serial_fixes() -> None:
    assert (
        doc.serial_fix("socket://127.0.0.1:7000")
        == "start the simulator: roomba-sim robot --tcp 127.0.0.1:7000"
    )
    assert doc.serial_fix("/dev/ttyUSB-missing").startswith("plug in the robot's USB serial cable")
    assert "dialout" in doc.serial_fix("/dev/ttyS0", "[Errno 13] Permission denied: '/dev/ttyS0'")


def test_doctor_help_and_default_config(tmp_path: Path) -> None:
    """One CLI style (exit codes in the epilog, --version), and without --config the path tried is named."""
    helped = subprocess.run(
        [str(BIN / "roomba-agent"), "doctor", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "exit codes:" in helped.stdout and "--version" in helped.stdout
    missing = tmp_path / "none.toml"
    out = subprocess.run(
        [str(BIN / "roomba-agent"), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ROOMBA_AGENT_CONFIG": str(missing)},
    )
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert out.returncode == 1
    assert checks["config"]["detail"] == f"file {missing} does not exist (from $ROOMBA_AGENT_CONFIG)"
    assert checks["config"]["fix"].startswith(f"write one: roomba-agent config init --out {missing}")


def test_a_port_held_by_another_process_names_the_holder(local_cloud: Any, tmp_path: Path) -> None:
    """A probe (or any reader) holds the robot's pty: doctor does not read beside it (two readers on one pty
    corrupt each other's frames) and says who holds it, instead of 'wake the robot'."""
    from hal.sim.server import SimServer
    from hal.transport import SerialTransport

    link = Path(tempfile.mkdtemp(prefix="rdoc-", dir="/tmp")) / "tty"
    with SimServer(link=link, seed=1):
        config = Path(local_cloud.add_robot("doc-held", str(link)))
        holder = SerialTransport(str(link))
        holder.open()
        try:
            _, checks = doctor(config)
        finally:
            holder.close()
        serial = checks["serial port"]
        assert serial["status"] == "failed", serial
        assert f"pid {os.getpid()}" in serial["detail"], serial
        assert "one reader per port" in serial["fix"], serial
        assert checks["oi handshake"]["status"] == "skipped"
        _, checks = doctor(config)  # released: the same robot passes
        assert checks["serial port"]["status"] == "passed", checks["serial port"]
        assert checks["oi handshake"]["status"] == "passed", checks["oi handshake"]
