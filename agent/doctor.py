"""``roomba-agent doctor``: staged checks from the config file to the robot's health, with a fix for each.

Each stage is ``passed``, ``failed`` (checked, and bad: with a one-line fix) or ``skipped`` (could not be
checked, with the reason: usually an earlier stage failed). Stages that would disturb a running agent (the
MQTT client id is the thing name; the serial port is its own) are checked through the running agent's
status file instead. Exit code: 0 all passed, 1 something failed, 2 nothing failed but something could not
be checked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import config as cfg
from agent import credentials
from agent.status import STALE_AFTER_S
from base.process import pid_alive

BUILD_YEAR = 2026


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # passed | failed | skipped
    detail: str
    fix: str | None = None


class Doctor:
    def __init__(self, config_path: str | None, overrides: dict[str, Any], timeout: float) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.timeout = timeout
        self.config: cfg.AgentConfig | None = None
        self.results: list[Check] = []
        self.running: dict[str, Any] | None = None
        self.addresses: list[Any] = []

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> Check:
        check = Check(name, status, detail, fix)
        self.results.append(check)
        return check

    def failed(self, *names: str) -> str | None:
        for r in self.results:
            if r.name in names and r.status != "passed":
                return r.name
        return None

    def skip_if(self, name: str, *needs: str) -> bool:
        bad = self.failed(*needs)
        if bad:
            self.add(name, "skipped", f"could not check: stage '{bad}' did not pass")
            return True
        return False

    # stages -----------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        try:
            self.config = cfg.load(self.config_path, cli=self.overrides)
        except cfg.ConfigError as exc:
            self.add(
                "config",
                "failed",
                "; ".join(exc.problems),
                f"edit {self.config_path or 'the config'}: {exc.problems[0]}",
            )
            return
        c = self.config
        self.add(
            "config",
            "passed",
            f"thing {c.thing_name}, {c.endpoint}:{c.port}"
            f"{' (ALPN x-amzn-mqtt-ca)' if c.alpn else ''}, serial {c.serial_port}",
        )
        status = Path(c.state_dir) / "status.json"
        try:
            doc = json.loads(status.read_text())
            if time.time() - float(doc.get("written_at", 0)) < STALE_AFTER_S and pid_alive(doc.get("pid")):
                self.running = doc
        except (OSError, ValueError):
            pass

    def check_file_modes(self) -> None:
        if self.skip_if("file modes", "config"):
            return
        c = self.config
        assert c is not None
        problems: list[str] = []
        fixes: list[str] = []
        paths = [c.cert, c.root_ca] + ([c.key] if c.key else [c.pkcs11.pin_file] if c.pkcs11 else [])
        for path in paths:
            if not os.path.exists(path):
                problems.append(f"{path} does not exist")
                fixes.append(f"check the path {path} in the config")
            elif not os.access(path, os.R_OK):
                problems.append(f"{path} is not readable by uid {os.geteuid()}")
                fixes.append(f"chown roomba-agent: {path}")
        for secret in [c.key] if c.key else [c.pkcs11.pin_file] if c.pkcs11 else []:
            if os.path.exists(secret):
                st = os.stat(secret)
                for p in credentials.check_key_mode(secret, st.st_mode, st.st_uid, os.geteuid()):
                    problems.append(p.message)
                    fixes.append(p.hint.split(" (then")[0])
        state = Path(c.state_dir)
        if state.exists() and not os.access(state, os.W_OK):
            problems.append(f"state_dir {state} is not writable")
            fixes.append(f"chown -R roomba-agent: {state}")
        if problems:
            self.add("file modes", "failed", "; ".join(problems), fixes[0])
        else:
            self.add("file modes", "passed", "credential files present; secrets 0600 and owned by this user")

    def check_certificates(self) -> None:
        if self.skip_if("certificates", "config", "file modes"):
            return
        from provisioning.verify import check_identity

        c = self.config
        assert c is not None
        findings = check_identity(c.cert, c.key, c.root_ca, c.thing_name, check_modes=False)
        if not c.local:
            # on AWS the root CA authenticates the server; the device certificate has another issuer
            findings = [f for f in findings if not f.code.startswith("chain.")]
        errors = [f for f in findings if f.is_error]
        warnings = [f.message for f in findings if not f.is_error]
        if errors:
            hint = {
                "cn.mismatch": "use this robot's own certificate, or fix thing_name",
                "cert.expired": "issue a new certificate (roomba-fleet robot add / roomba-provision)",
                "key.mismatch": "pair device.crt with the device.key it was issued for",
            }
            self.add(
                "certificates",
                "failed",
                "; ".join(f.message for f in errors),
                hint.get(errors[0].code, "re-issue the identity (roomba-fleet robot add NAME)"),
            )
        else:
            self.add(
                "certificates",
                "passed",
                "chain, validity, CN and key match"
                + (f" (warning: {'; '.join(warnings)})" if warnings else ""),
            )

    def check_clock(self) -> None:
        now = dt.datetime.now(dt.UTC)
        if now.year < BUILD_YEAR - 1:
            self.add(
                "clock",
                "failed",
                f"system clock says {now.isoformat()}, before this software was built",
                "enable NTP: timedatectl set-ntp true (TLS certificates need a correct clock)",
            )
        else:
            self.add("clock", "passed", f"{now.isoformat(timespec='seconds')}")

    def check_dns(self) -> None:
        if self.skip_if("dns", "config"):
            return
        c = self.config
        assert c is not None
        try:
            self.addresses = socket.getaddrinfo(c.endpoint, c.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self.add(
                "dns",
                "failed",
                f"cannot resolve {c.endpoint}: {exc.strerror}",
                "check /etc/resolv.conf and the network; the endpoint comes from `aws iot describe-endpoint`",
            )
            return
        self.add("dns", "passed", f"{c.endpoint} -> {self.addresses[0][4][0]}")

    def check_tcp(self) -> None:
        if self.skip_if("tcp", "dns"):
            return
        c = self.config
        assert c is not None
        try:
            with socket.create_connection((c.endpoint, c.port), timeout=self.timeout):
                pass
        except OSError as exc:
            self.add(
                "tcp",
                "failed",
                f"cannot connect to {c.endpoint}:{c.port}: {exc.strerror or exc}",
                "check the firewall allows outbound port "
                f"{c.port}{'; try port 443 (ALPN) on networks that only allow HTTPS' if c.port != 443 else ''}",
            )
            return
        self.add("tcp", "passed", f"{c.endpoint}:{c.port} accepts connections")

    def check_tls(self) -> None:
        if self.skip_if("tls", "tcp", "certificates"):
            return
        c = self.config
        assert c is not None
        if c.key is None:
            self.add(
                "tls",
                "skipped",
                "could not check here: the key is in a PKCS#11 token (the MQTT stage uses it)",
            )
            return
        ctx = ssl.create_default_context(cafile=c.root_ca)
        ctx.load_cert_chain(c.cert, c.key)
        if c.alpn:
            ctx.set_alpn_protocols(["x-amzn-mqtt-ca"])
        try:
            with (
                socket.create_connection((c.endpoint, c.port), timeout=self.timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=c.endpoint) as tls,
            ):
                version = tls.version()
                tls.settimeout(1.0)
                try:
                    tls.recv(1)  # TLS 1.3 reports a refused client certificate only after the handshake
                except (TimeoutError, ssl.SSLWantReadError):
                    pass
        except ssl.SSLCertVerificationError as exc:
            self.add(
                "tls",
                "failed",
                f"server certificate not trusted: {exc.verify_message}",
                "root_ca must be the CA of the server (Amazon Root CA 1 for AWS, root-ca.crt locally)",
            )
            return
        except (ssl.SSLError, OSError) as exc:
            self.add(
                "tls",
                "failed",
                f"handshake failed: {exc}",
                "the broker refused the device certificate: is it registered/active and signed by a known CA?",
            )
            return
        self.add("tls", "passed", f"mutual TLS handshake ({version})")

    def check_mqtt(self) -> None:
        if self.running is not None:
            mq = self.running.get("mqtt", {})
            if mq.get("connected"):
                self.add("mqtt connect", "passed", "the running agent is connected (from its status file)")
                rtt = self.running.get("metrics", {}).get("shadow_rtt", {})
                self.add(
                    "shadow round trip",
                    "passed" if rtt.get("n") else "skipped",
                    f"running agent: p50 {rtt.get('p50_ms')} ms over {rtt.get('n')} updates"
                    if rtt.get("n")
                    else "could not check: the running agent has not updated its shadow yet",
                )
            else:
                self.add(
                    "mqtt connect",
                    "failed",
                    "the running agent is not connected (see roomba-agent status)",
                    "journalctl -u roomba-agent -e shows the connection failure reason",
                )
                self.add("shadow round trip", "skipped", "could not check: not connected")
            return
        if self.skip_if("mqtt connect", "tcp", "certificates"):
            self.skip_if("shadow round trip", "mqtt connect")
            return
        from agent.mqtt import probe

        assert self.config is not None
        stage, detail, rtt = probe(self.config, timeout=self.timeout)
        if stage == "mqtt":
            self.add(
                "mqtt connect",
                "failed",
                detail,
                "check the IoT policy allows iot:Connect for this client id (= thing name)",
            )
            self.add("shadow round trip", "skipped", "could not check: not connected")
            return
        self.add("mqtt connect", "passed", f"connected as {self.config.thing_name}")
        if stage == "shadow":
            self.add(
                "shadow round trip",
                "failed",
                detail,
                "the policy must allow $aws/things/<thing>/shadow/* (publish, subscribe, receive)",
            )
        else:
            self.add("shadow round trip", "passed", f"{detail} in {1000 * (rtt or 0):.1f} ms")

    def check_robot(self) -> None:
        if self.skip_if("serial port", "config"):
            self.skip_if("oi handshake", "serial port")
            self.skip_if("robot health", "oi handshake")
            return
        if self.running is not None:
            robot = self.running.get("robot", {})
            ok = bool(robot.get("link_up"))
            self.add(
                "serial port",
                "passed" if ok else "failed",
                f"running agent: link {'up' if ok else 'down'} on {robot.get('port')}",
                None if ok else "check the cable / USB adapter; dmesg shows USB resets",
            )
            self.add(
                "oi handshake",
                "passed" if ok else "skipped",
                "running agent receives sensor frames" if ok else "could not check: link down",
            )
            if ok:
                self.robot_health(robot.get("reported") or {})
            else:
                self.add("robot health", "skipped", "could not check: link down")
            return
        import serial

        c = self.config
        assert c is not None
        try:
            port = serial.serial_for_url(c.serial_port, baudrate=115200, timeout=0.5)
            port.close()
        except (serial.SerialException, OSError, ValueError) as exc:
            self.add(
                "serial port",
                "failed",
                f"cannot open {c.serial_port}: {exc}",
                "check the cable; the user must be in group dialout (ls -l /dev/ttyUSB0)",
            )
            self.add("oi handshake", "skipped", "could not check: serial port did not open")
            self.add("robot health", "skipped", "could not check: serial port did not open")
            return
        self.add("serial port", "passed", f"{c.serial_port} opens")
        from agent.model import reported_state
        from agent.robot_link import snapshot
        from hal.errors import HalError
        from hal.robot import Robot

        try:
            with Robot(c.serial_port, model=c.model, hold_mode=None) as robot:
                state = robot.wait_for(
                    lambda s: s.updated_at is not None, timeout=self.timeout, what="sensors"
                )
        except (HalError, OSError) as exc:
            self.add(
                "oi handshake",
                "failed",
                str(exc),
                "wake the robot (press Clean), check the baud rate for the model, reseat the cable",
            )
            self.add("robot health", "skipped", "could not check: no sensor frames")
            return
        self.add("oi handshake", "passed", f"sensor stream running, firmware {state.firmware or 'unknown'}")
        self.robot_health(reported_state(snapshot(state), "idle", ""))

    def robot_health(self, rep: dict[str, Any]) -> None:
        problems = []
        pct = (rep.get("battery") or {}).get("percent")
        if pct is not None and pct < 10:
            problems.append(f"battery at {pct}%")
        if (rep.get("battery") or {}).get("charging") == "fault":
            problems.append("charging fault")
        hz = rep.get("hazards") or {}
        problems += [
            name.replace("_", " ") for name in ("cliff", "wheel_drop", "wheel_overcurrent") if hz.get(name)
        ]
        if problems:
            self.add(
                "robot health",
                "failed",
                ", ".join(problems),
                "put the robot on its dock / on the floor and clear the wheels",
            )
        else:
            self.add("robot health", "passed", f"battery {pct}%, no hazards")

    def run(self) -> list[Check]:
        stages: list[Callable[[], None]] = [
            self.check_config,
            self.check_file_modes,
            self.check_certificates,
            self.check_clock,
            self.check_dns,
            self.check_tcp,
            self.check_tls,
            self.check_mqtt,
            self.check_robot,
        ]
        for stage in stages:
            stage()
        return self.results


def exit_code(results: Sequence[Check]) -> int:
    if any(r.status == "failed" for r in results):
        return 1
    if any(r.status == "skipped" for r in results):
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="roomba-agent doctor", description="staged checks, each with a fix")
    cfg.add_override_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per network/robot stage")
    args = p.parse_args(list(argv) if argv is not None else None)
    from base.logs import configure

    configure("error")
    results = Doctor(args.config, cfg.cli_overrides(args), args.timeout).run()
    code = exit_code(results)
    if args.json:
        print(
            json.dumps({"ok": code == 0, "exit_code": code, "checks": [asdict(r) for r in results]}, indent=2)
        )
        return code
    marks = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}
    for r in results:
        print(f"[{marks[r.status]}] {r.name:<18} {r.detail}")
        if r.fix:
            print(f"       fix: {r.fix}")
    summary = {
        0: "all checks passed",
        1: "some checks FAILED",
        2: "no failures, but some stages could not be checked",
    }
    print(summary[code], file=sys.stderr)
    return code
