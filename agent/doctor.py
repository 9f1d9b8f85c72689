"""``roomba-agent doctor``: staged checks from the config file to the robot's health, with a fix for each.

Each stage is ``passed``, ``failed`` (checked, and bad: with a one-line fix) or ``skipped`` (could not be
checked, with the reason: usually an earlier stage failed). Stages that would disturb a running agent (the
MQTT client id is the thing name; the serial port is its own) are checked through the running agent's
status file instead. Exit code: 0 all passed, 1 something failed, 2 nothing failed but something could not
be checked.

The fixes fit the set-up: a local cloud (``local = true`` or a loopback endpoint) is told to start
``roomba-fleet up --dir DIR`` (DIR found from where the config's files sit), never to open a firewall; a pty
that is not there is a simulator to start; ``journalctl`` is suggested only for an agent systemd runs.
"""

from __future__ import annotations

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
from base.cli import Parser, add_json
from base.process import pid_alive

BUILD_YEAR = 2026
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# fixes that fit the set-up (pure, apart from looking at paths) ---------------------------------------------
def local_cloud_dir(config_path: str | None, config: cfg.AgentConfig) -> Path | None:
    """The ``roomba-fleet up`` directory this robot belongs to, from where its files sit
    (``DIR/robots/NAME.toml``, ``DIR/identities/NAME/device.crt``, ``DIR/state/NAME``), or None."""
    candidates: list[Path] = []
    if config_path:
        candidates.append(Path(config_path).absolute().parent.parent)
    candidates += [
        Path(config.cert).absolute().parent.parent.parent,
        Path(config.state_dir).absolute().parent.parent,
    ]
    for cand in candidates:
        if (cand / "settings.json").is_file() or (cand / "ca" / "ca.crt").is_file():
            return cand
    return None


def systemd_unit(cgroup_text: str) -> str | None:
    """The agent's unit, from its ``/proc/PID/cgroup``: ``roomba-agent.service`` under the system manager,
    ``--user roomba-agent.service`` under a user's, None outside a ``roomba-agent*`` unit (a terminal, a
    container, a test runner's service: its output is not in that unit's journal)."""
    for line in cgroup_text.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.startswith("roomba-agent") and last.endswith(".service"):
            return f"--user {last}" if "/user@" in path else last
    return None


def unit_of(pid: Any) -> str | None:
    """The systemd unit a running agent (``pid``, from its status file) runs in, or None."""
    try:
        return systemd_unit(Path(f"/proc/{int(pid)}/cgroup").read_text())
    except (OSError, ValueError, TypeError):
        return None


def logs_hint(unit: str | None) -> str:
    if unit is None:
        return "see the agent's output (its terminal or log file) for the connection failure reason"
    user, _, name = unit.rpartition(" ")
    where = f"{user + ' ' if user else ''}-u {name.removesuffix('.service')}"
    return f"journalctl {where} -e shows the connection failure reason"


def last_failure(mqtt: dict[str, Any]) -> str:
    """``; attempt 3 failed: <reason>`` from the status file's ``mqtt.reconnect``, or "" when it has none."""
    found = mqtt.get("reconnect")
    reconnect: dict[str, Any] = found if isinstance(found, dict) else {}
    error = reconnect.get("last_error")
    if not isinstance(error, str) or not error:
        return ""
    attempt = reconnect.get("attempt")
    return f"; {f'attempt {attempt}' if attempt else 'last attempt'} failed: {error}"


def serial_fix(port: str, error: str = "") -> str:
    """What to do about a serial port that did not open: start the simulator for a pty or a local TCP
    port, plug in the cable for a device, join dialout when permission is denied."""
    if port.startswith("socket://"):
        hostport = port.removeprefix("socket://").split("/", 1)[0]
        if hostport.rsplit(":", 1)[0].strip("[]") in LOOPBACK:
            return f"start the simulator: roomba-sim robot --tcp {hostport}"
        return f"check the robot's serial bridge at {hostport} is up and reachable"
    if "://" in port:
        return f"check the serial server behind {port}"
    if "ermission denied" in error or (os.path.exists(port) and not os.access(port, os.R_OK | os.W_OK)):
        return f"add the user to group dialout (sudo usermod -aG dialout USER; ls -l {port})"
    if not os.path.exists(port):
        if port.startswith("/dev/"):
            return f"plug in the robot's USB serial cable ({port} does not exist; dmesg shows USB devices)"
        return f"start the simulator: roomba-sim robot --link {port}"
    return "check the cable; the user must be in group dialout (ls -l /dev/ttyUSB0)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # passed | failed | skipped
    detail: str
    fix: str | None = None


def expiry_line(cert_path: str, now: dt.datetime | None = None) -> str | None:
    """``expires 2027-12-07 (365 days left)`` for the device certificate, None if it cannot be read."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return None
    end = cert.not_valid_after_utc
    left = end - (now or dt.datetime.now(dt.UTC))
    if left.total_seconds() <= 0:
        return f"expired {end.date().isoformat()} ({int(-left.total_seconds() // 86400)} days ago)"
    return f"expires {end.date().isoformat()} ({left.days} days left)"


def update_check(root: str, slots: Any, running: dict[str, Any] | None) -> tuple[str, str, str | None]:
    """Pure: the ``update`` stage from the release root's slots (:class:`agent.launcher.Slots`, None: no
    root) and the running agent's status (None: not running): (status, detail, fix). It passes when
    nothing is pending or the trial is healthy."""
    if slots is None:
        return (
            "passed",
            f"no release root at {root}: this agent does not run from releases (updates need one: "
            "roomba-agent update install BUNDLE --root DIR --activate)",
            None,
        )
    update = (running or {}).get("update") or {}
    version = (running or {}).get("agent_version")
    where = f"current {slots.current or '(none)'}" + (
        f", previous {slots.previous}" if slots.previous else ""
    )
    restart = "systemctl restart roomba-agent (the launcher performs it; check: roomba-agent update status)"
    if slots.trial:
        t = slots.trial
        v = t.get("version")
        if t.get("failure"):
            return (
                "failed",
                f"the trial of {v} failed ({t['failure']}) and is not rolled back yet",
                f"the launcher rolls it back at the next start: {restart}",
            )
        if running is None:
            return (
                "failed",
                f"the trial of {v} (from {t.get('from')}) is pending but the agent is not running",
                "start it under the launcher: systemctl start roomba-agent (after 3 failed starts or "
                f"{t.get('commit_timeout_s')} s without a commit it rolls back to {t.get('from')})",
            )
        progress = (update.get("trial") or {}).get("self_test") or "not started"
        failed = int(t.get("failed_starts") or 0)
        if version != v:
            return (
                "failed",
                f"the trial of {v} is on but the agent running is {version}",
                f"the agent must be started by the launcher: {restart}",
            )
        if str(progress).startswith("failed") or failed:
            return (
                "failed",
                f"trial of {v}: self-test {progress}; {failed} failed start(s)",
                "it rolls back on its own; the reason shows in roomba-agent update status",
            )
        return "passed", f"trial of {v} (from {t.get('from')}): self-test {progress}; {where}", None
    if slots.pending:
        to = slots.pending.get("to")
        return (
            "failed",
            f"a switch to {to} is pending but the launcher has not performed it ({where})",
            f"the agent must be started by the launcher: {restart}",
        )
    last = slots.last or {}
    note = ""
    if last.get("result") in ("rolled_back", "failed"):
        note = f"; the last update to {last.get('to')} was {last['result'].replace('_', ' ')}: {last.get('reason')}"
    elif last.get("result") == "committed":
        note = f"; the last update ({last.get('from')} -> {last.get('to')}) committed"
    return "passed", f"nothing pending; {where}{note}", None


class Doctor:
    def __init__(self, config_path: str | None, overrides: dict[str, Any], timeout: float) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.timeout = timeout
        self.config: cfg.AgentConfig | None = None
        self.results: list[Check] = []
        self.running: dict[str, Any] | None = None
        self.addresses: list[Any] = []
        self.config_file, self.config_origin = cfg.resolve_path(config_path)
        self.cloud_dir: Path | None = None

    @property
    def local(self) -> bool:
        return self.config is not None and (self.config.local or self.config.endpoint in LOOPBACK)

    def start_cloud(self) -> str:
        """The fix for a local cloud that does not answer."""
        where = str(self.cloud_dir) if self.cloud_dir else "DIR (the directory that issued this identity)"
        return f"start the local cloud: roomba-fleet up --dir {where}"

    def readd_robot(self) -> str:
        assert self.config is not None
        where = f" --dir {self.cloud_dir}" if self.cloud_dir else ""
        return (
            "this identity is not from the local cloud answering there (a new cloud makes a new CA): "
            f"roomba-fleet robot add {self.config.thing_name}{where} re-issues it"
        )

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
            if not os.path.exists(self.config_file):
                fix = (
                    f"write one: roomba-agent config init --out {self.config_file} (or pass --config FILE; "
                    "roomba-fleet robot add NAME prints a local robot's)"
                )
            else:
                fix = f"edit {self.config_file}: {exc.problems[0]} (roomba-agent config check lists all)"
            detail = "; ".join(exc.problems)
            if self.config_origin == "default" and os.path.exists(self.config_file):
                detail = f"{self.config_file} (the default path): {detail}"
            self.add("config", "failed", detail, fix)
            return
        c = self.config
        if self.local:
            self.cloud_dir = local_cloud_dir(self.config_file, c)
        self.add(
            "config",
            "passed",
            f"{self.config_file}: thing {c.thing_name}, {c.endpoint}:{c.port}"
            f"{' (ALPN x-amzn-mqtt-ca)' if c.alpn else ''}"
            f"{f' (local cloud {self.cloud_dir})' if self.cloud_dir else ''}"
            f"{' (local cloud)' if self.local and not self.cloud_dir else ''}"
            f", serial {c.serial_port}",
        )
        self.running = self.read_running()

    def read_running(self) -> dict[str, Any] | None:
        """The running agent's status document, None if no agent runs (no file, stale, or its pid gone)."""
        assert self.config is not None
        try:
            doc = json.loads((Path(self.config.state_dir) / "status.json").read_text())
        except (OSError, ValueError):
            return None
        fresh = time.time() - float(doc.get("written_at", 0)) < STALE_AFTER_S
        return doc if isinstance(doc, dict) and fresh and pid_alive(doc.get("pid")) else None

    def running_shadow_rtt(self) -> dict[str, Any]:
        """The running agent's shadow round-trip figures; a just-started agent gets up to ``timeout`` for its
        first update (it reports right after connecting), so doctor beside a new agent does not skip."""
        deadline = time.monotonic() + self.timeout
        while True:
            doc = self.running or {}
            rtt: dict[str, Any] = doc.get("metrics", {}).get("shadow_rtt", {}) or {}
            if rtt.get("n") or time.monotonic() >= deadline or not doc.get("mqtt", {}).get("connected"):
                return rtt
            time.sleep(0.2)
            self.running = self.read_running() or self.running

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
        expiry = expiry_line(c.cert)
        if errors:
            hint = {
                "cn.mismatch": "use this robot's own certificate, or fix thing_name",
                "cert.expired": "issue a new certificate (roomba-fleet robot add / roomba-provision)",
                "key.mismatch": "pair device.crt with the device.key it was issued for",
            }
            fix = hint.get(errors[0].code, "re-issue the identity (roomba-fleet robot add NAME)")
            if self.local and errors[0].code.startswith("chain."):
                fix = self.readd_robot()
            self.add(
                "certificates",
                "failed",
                "; ".join(f.message for f in errors)
                + (f"; {expiry}" if expiry and errors[0].code != "cert.expired" else ""),
                fix,
            )
        else:
            self.add(
                "certificates",
                "passed",
                "chain, validity, CN and key match"
                + (f"; {expiry}" if expiry else "")
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
                "set connection.endpoint to the host roomba-fleet up listens on (127.0.0.1)"
                if self.local
                else "check /etc/resolv.conf and the network; "
                "the endpoint comes from: aws iot describe-endpoint --endpoint-type iot:Data-ATS",
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
            if self.local:
                fix = f"{self.start_cloud()} (nothing listens on {c.endpoint}:{c.port})"
            else:
                fix = (
                    f"check the firewall allows outbound port {c.port}"
                    f"{'; try port 443 (ALPN) on networks that only allow HTTPS' if c.port != 443 else ''}"
                )
            self.add("tcp", "failed", f"cannot connect to {c.endpoint}:{c.port}: {exc.strerror or exc}", fix)
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
                self.readd_robot()
                if self.local
                else "root_ca must be the CA of the server (Amazon Root CA 1 for AWS)",
            )
            return
        except (ssl.SSLError, OSError) as exc:
            self.add(
                "tls",
                "failed",
                f"handshake failed: {exc}",
                self.readd_robot()
                if self.local
                else "the broker refused the device certificate: "
                "is it registered/active and signed by a known CA?",
            )
            return
        self.add("tls", "passed", f"mutual TLS handshake ({version})")

    def check_mqtt(self) -> None:
        if self.running is not None:
            mq = self.running.get("mqtt", {})
            if mq.get("connected"):
                self.add("mqtt connect", "passed", "the running agent is connected (from its status file)")
                figures = self.running_shadow_rtt()
                self.add(
                    "shadow round trip",
                    "passed" if figures.get("n") else "skipped",
                    f"running agent: p50 {figures.get('p50_ms')} ms over {figures.get('n')} updates"
                    if figures.get("n")
                    else "could not check: the running agent has not updated its shadow yet",
                )
            else:
                unit = unit_of(self.running.get("pid"))
                self.add(
                    "mqtt connect",
                    "failed",
                    "the running agent is not connected (see roomba-agent status)" + last_failure(mq),
                    f"{self.start_cloud()} if it is not running; {logs_hint(unit)}"
                    if self.local
                    else logs_hint(unit),
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
                f"is the local cloud up ({self.start_cloud().split(': ', 1)[1]})"
                f" and the robot added to it (roomba-fleet robot add {self.config.thing_name})?"
                if self.local
                else "check the IoT policy allows iot:Connect for this client id (= thing name)",
            )
            self.add("shadow round trip", "skipped", "could not check: not connected")
            return
        self.add("mqtt connect", "passed", f"connected as {self.config.thing_name}")
        if stage == "shadow":
            self.add(
                "shadow round trip",
                "failed",
                detail,
                "the local cloud's shadow service does not answer: restart "
                f"{self.start_cloud().split(': ', 1)[1]}"
                if self.local
                else "the policy must allow $aws/things/<thing>/shadow/* (publish, subscribe, receive)",
            )
        else:
            self.add("shadow round trip", "passed", f"{detail} in {1000 * (rtt or 0):.1f} ms")

    def check_jobs(self) -> None:
        """The jobs subscription (only with ``[jobs] enabled``): a ``jobs/get`` round trip, or beside a
        running agent its jobs feature's last round trip (from the status file)."""
        if self.config is None or not self.config.jobs.enabled:
            return
        fix_local = f"restart the local cloud ({self.start_cloud().split(': ', 1)[1]}): its jobs service does not answer"
        fix_aws = "the policy must allow $aws/things/<thing>/jobs/* (publish, subscribe, receive)"
        if self.running is not None:
            jobs = self.running.get("jobs") or {}
            if not self.running.get("mqtt", {}).get("connected"):
                self.add(
                    "jobs subscription", "skipped", "could not check: the running agent is not connected"
                )
            elif jobs.get("subscribed") and jobs.get("last_get_at"):
                self.add(
                    "jobs subscription",
                    "passed",
                    f"running agent: subscribed, jobs get answered in {jobs.get('get_rtt_ms')} ms "
                    f"({jobs.get('pending')} pending)",
                )
            else:
                self.add(
                    "jobs subscription",
                    "failed",
                    "the running agent's jobs get was not answered"
                    if jobs.get("subscribed")
                    else "the running agent is not subscribed to its jobs topics",
                    fix_local if self.local else fix_aws,
                )
            return
        if self.skip_if("jobs subscription", "mqtt connect"):
            return
        from agent.jobs.probe import probe_jobs

        stage, detail, rtt = probe_jobs(self.config, timeout=self.timeout)
        if stage == "ok":
            self.add("jobs subscription", "passed", f"{detail} in {1000 * (rtt or 0):.1f} ms")
        else:
            self.add("jobs subscription", "failed", detail, fix_local if self.local else fix_aws)

    def check_update(self) -> None:
        """The release slots (only with ``[update] enabled``): a trial healthy or nothing pending."""
        if self.config is None or not self.config.update.enabled:
            return
        root = Path(self.config.update.root)
        slots = None
        if root.is_dir():
            from agent.launcher import Layout

            try:
                slots = Layout(root).read()
            except OSError as exc:
                self.add(
                    "update", "failed", f"cannot read the release root {root}: {exc}", "check its permissions"
                )
                return
        self.add("update", *update_check(str(root), slots, self.running))

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
                None
                if ok
                else serial_fix(str(robot.get("port") or (self.config.serial_port if self.config else ""))),
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
        from hal.errors import TransportError
        from hal.transport import PortInUseError, SerialTransport

        c = self.config
        assert c is not None
        transport = SerialTransport(c.serial_port, read_timeout=0.5)
        try:
            transport.open()  # the same exclusive open the agent and probe use
            transport.close()
        except PortInUseError as exc:
            self.add(
                "serial port",
                "failed",
                f"{c.serial_port} is held by {exc.holder or 'another process'}",
                "one reader per port: stop that process (or, for a running agent, use roomba-agent status), "
                "then run doctor again",
            )
            self.add("oi handshake", "skipped", "could not check: the port is held by another process")
            self.add("robot health", "skipped", "could not check: the port is held by another process")
            return
        except (TransportError, OSError, ValueError) as exc:
            self.add(
                "serial port",
                "failed",
                f"{c.serial_port} does not exist"
                if "://" not in c.serial_port and not os.path.exists(c.serial_port)
                else f"cannot open {c.serial_port}: {exc}",
                serial_fix(c.serial_port, str(exc)),
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
            self.check_jobs,
            self.check_update,
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


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-agent doctor",
        description="Staged checks from the config file to the robot's health, each passed, failed (with a "
        "one-line fix) or skipped (with the reason). Beside a running agent, the MQTT and robot stages are "
        "judged from its status file instead of taking its client id and serial port.",
        exit_codes={
            1: "some stage failed (each failure prints its fix)",
            2: "nothing failed but some stages could not be checked (or a usage error)",
        },
    )
    cfg.add_override_arguments(p)
    add_json(p, "every stage (name, status, detail, fix), ok and exit_code")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds per network/robot stage (default 10)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
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
