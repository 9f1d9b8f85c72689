"""A small fleet end to end: real local cloud, real agents on simulated robots, fleet-wide missions.

Each test starts ``roomba-fleet simulate`` as a process against a fresh ``roomba-fleet up`` and checks from
the outside: shadows through the operator (``fleet.shadow``), events through an MQTT subscriber with the
operator identity, and what the simulated robots actually received through ``run/simulate.json``.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from base import testing
from base.testing import tracebacks
from fleet import cli as fleet_cli
from fleet import shadow as fleet_shadow
from fleetsim.runner import status_path
from localcloud.opclient import CloudNotRunning
from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow

ROBOTS = 20


class Simulation:
    def __init__(self, cloud: LocalCloud, args: list[str]) -> None:
        self.cloud = cloud
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.simulate", "--dir", str(cloud.dir.root), *args],
            stdout=subprocess.PIPE,
            stderr=open(cloud.dir.root / "simulate.stderr", "ab"),  # noqa: SIM115
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("simulate ready"):
                self.ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            assert self.proc.poll() is None, f"simulate exited with {self.proc.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"simulate not ready after {timeout} s: {self.stderr()}"

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(status_path(str(self.cloud.dir.root)).read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)

    def stderr(self) -> str:
        return (self.cloud.dir.root / "simulate.stderr").read_text(errors="replace")[-3000:]

    def tracebacks(self) -> list[str]:
        """Every traceback in the shards' logs (where the agents log) and in the simulator's stderr."""
        logs = [
            *sorted(self.cloud.dir.logs_dir.glob("simulate-*.log")),
            self.cloud.dir.root / "simulate.stderr",
        ]
        return [
            line for path in logs if path.exists() for line in tracebacks(path.read_text(errors="replace"))
        ]


class EventLog:
    """Every ``roomba/+/events`` publication, through a persistent QoS 1 session (survives broker restarts)."""

    def __init__(self, cloud: LocalCloud) -> None:
        op = cloud.operator()
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.kinds: dict[str, list[str]] = defaultdict(list)
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-events-{uuid.uuid4().hex[:8]}", clean_session=False
        )
        self.client.tls_set(
            ca_certs=str(op.ca),
            certfile=str(op.cert),
            keyfile=str(op.key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(cloud.endpoint, cloud.port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(10), "event subscriber did not subscribe"

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        client.subscribe("roomba/+/events", qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        thing = msg.topic.split("/")[1]
        self.seqs[thing].add(int(doc["seq"]))
        self.kinds[thing].append(str(doc["type"]))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud.start() as c:
        yield c


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """The shared poller at a 0.25 s pace: the predicates here ask the cloud for every robot's shadow."""
    return testing.wait_until(predicate, timeout, what, interval=0.25)


def send_mission(cloud: LocalCloud, things: list[str], command: dict[str, Any], attempts: int = 8) -> None:
    """The fleet-wide command; robots that did not answer (broker restarting) are asked again, which is
    exactly what an operator would do and what the agent's ledger makes harmless."""
    doc = {"state": {"desired": {"command": command}}}
    pending = list(things)
    for _ in range(attempts):
        try:
            results = fleet_shadow.fleet_request(cloud.dir, pending, "update", doc, timeout=10)
        except CloudNotRunning:  # the broker is restarting (a fault of the test)
            time.sleep(1)
            continue
        pending = [t for t, o in results.items() if o is None or not o.accepted]
        if not pending:
            return
        time.sleep(1)
    raise AssertionError(f"update not accepted by {pending}")


def commands_done(cloud: LocalCloud, things: list[str], command_for: Any) -> list[str]:
    """Robots whose shadow has not converged on the command yet (desired ⊆ reported, status done)."""
    try:
        results = fleet_shadow.fleet_request(cloud.dir, things, "get", timeout=10)
    except CloudNotRunning:
        return list(things)
    lagging = []
    for thing, outcome in results.items():
        state = (outcome.document.get("state") or {}) if outcome and outcome.accepted else {}
        reported = (state.get("reported") or {}).get("command") or {}
        desired = (state.get("desired") or {}).get("command") or {}
        want = command_for(thing)
        if (
            reported.get("id") != want["id"]
            or reported.get("status") != "done"
            or desired.get("id") not in (None, want["id"])
            or "command" in (state.get("delta") or {})
        ):
            lagging.append(thing)
    return lagging


def reported_commands(cloud: LocalCloud, things: list[str]) -> dict[str, dict[str, Any]]:
    try:
        results = fleet_shadow.fleet_request(cloud.dir, things, "get", timeout=10)
    except CloudNotRunning:
        return {}
    out = {}
    for thing, outcome in results.items():
        if outcome is not None and outcome.accepted:
            state = outcome.document.get("state") or {}
            out[thing] = (state.get("reported") or {}).get("command") or {}
    return out


def check_fleet(
    sim: Simulation, events: EventLog, things: list[str], opcodes: dict[str, int]
) -> dict[str, Any]:
    code = sim.stop()
    assert code == 0, sim.stderr()
    final = sim.status()
    assert final.get("final") is True
    per = final["per_robot"]
    assert sorted(per) == things
    for thing in things:
        robot = per[thing]
        # every mission reached the simulated robot exactly once (its opcode on the robot's serial port)
        for name, count in opcodes.items():
            assert robot["opcodes"].get(name, 0) == count, (thing, name, robot)
        assert robot["outbox_depth"] == 0, (thing, robot)
        assert robot["events_delivered"] >= robot["events_queued"] > 0, (thing, robot)

    def all_events_seen() -> bool:
        return all(events.seqs[t] >= set(range(1, per[t]["events_queued"] + 1)) for t in things)

    wait_until(all_events_seen, 15, "every queued event at the subscriber")
    for thing in things:
        assert events.seqs[thing] == set(range(1, per[thing]["events_queued"] + 1)), thing
        assert events.kinds[thing].count("mission_started") >= len(opcodes), (thing, events.kinds[thing])
    return final


def test_fleetsim_twenty_robots_connect_and_run_a_fleet_mission_once(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """Twenty agents connect, each runs a shared and a per-robot mission exactly once, and a resent
    mission id changes nothing (the ledger)."""
    events = EventLog(cloud)
    sim = Simulation(cloud, ["--robots", str(ROBOTS), "--seed", "3", "--prefix", "fleet-"])
    try:
        sim.wait_ready()
        things = sorted(sim.status()["per_robot"])
        assert len(things) == ROBOTS and sim.status()["connected"] == ROBOTS
        shared = {"id": "mission-shared", "action": "clean"}
        send_mission(cloud, things, shared)
        wait_until(
            lambda: not commands_done(cloud, things, lambda _t: shared), 30, "every shadow to converge"
        )
        # a second mission with one id per robot, through the CLI entry point
        per_robot = {"id": "m2-{thing}", "action": "dock"}
        doc = json.dumps({"state": {"desired": {"command": per_robot}}})
        root = str(cloud.dir.root)
        assert fleet_cli.main(["shadow", "update", "--prefix", "fleet-", "--dir", root, doc]) == 0

        def want(thing: str) -> dict[str, Any]:
            return {"id": f"m2-{thing}", "action": "dock"}

        wait_until(lambda: not commands_done(cloud, things, want), 30, "every shadow to converge on m2")
        # `roomba-fleet shadow get --all`: one JSON object keyed by thing name
        capsys.readouterr()
        assert fleet_cli.main(["shadow", "get", "--all", "--dir", root]) == 0
        shadows = json.loads(capsys.readouterr().out)
        assert sorted(shadows) == things
        assert all(shadows[t]["state"]["reported"]["command"]["id"] == f"m2-{t}" for t in things)
        # the fleet view over the same cloud: everyone connected, every command applied
        args = ["watch", "--fleet", "--once", "--json", "--prefix", "fleet-", "--dir", root]
        assert fleet_cli.main(args) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["robots"] == ROBOTS and summary["connected"] == ROBOTS
        assert summary["commands"] == {"applied": ROBOTS}
        assert sum(summary["missions"].values()) == ROBOTS and "unknown" not in summary["missions"]
        # re-sending the same mission changes nothing: the ledger already has the id
        send_mission(cloud, things[:5], {"id": "mission-shared", "action": "clean"})
        time.sleep(1.5)
        check_fleet(sim, events, things, {"Clean": 1, "Seek Dock": 1})
    finally:
        sim.stop()
        events.close()


def test_fleetsim_converges_and_loses_no_event_under_faults(cloud: LocalCloud) -> None:
    """Link drops, serial cuts, noise, stuck and flat robots and a broker restart: every robot still runs
    the mission once, loses no event, and no agent logs a traceback."""
    events = EventLog(cloud)
    faults = (
        "link_drop=0.03,link_down_s=2,serial_drop=0.03,serial_down_s=1,serial_noise=0.001,"
        "stuck=0.2,flat=0.2,window=8,broker_restart=12,until=22"
    )
    sim = Simulation(cloud, ["--robots", str(ROBOTS), "--seed", "11", "--faults", faults])
    try:
        sim.wait_ready()
        things = sorted(sim.status()["per_robot"])
        # what a fleet feature does: send the mission, retry (with a new id) where the robot answered
        # "failed" (e.g. its serial cable was out at that moment), until every robot has done it
        wanted = {t: {"id": "storm-0", "action": "clean"} for t in things}
        send_mission(cloud, things, wanted[things[0]])
        deadline = time.monotonic() + 75
        for attempt in range(1, 100):
            answers = reported_commands(cloud, things)
            failed = [
                t
                for t in things
                if answers.get(t, {}).get("id") == wanted[t]["id"] and answers[t].get("status") == "failed"
            ]
            done = [
                t
                for t in things
                if answers.get(t, {}).get("id") == wanted[t]["id"] and answers[t].get("status") == "done"
            ]
            if len(done) == len(things):
                break
            assert time.monotonic() < deadline, f"not done: {sorted(set(things) - set(done))}: {answers}"
            for thing in failed:
                wanted[thing] = {"id": f"storm-{attempt}-{thing}", "action": "clean"}
                send_mission(cloud, [thing], wanted[thing])
            time.sleep(1)
        wait_until(lambda: not commands_done(cloud, things, wanted.__getitem__), 30, "shadows to converge")

        def calm() -> bool:
            st = sim.status()
            return (
                st.get("elapsed_s", 0) > 24 and st.get("connected") == ROBOTS and st.get("outbox_depth") == 0
            )

        wait_until(calm, 50, "the fleet to settle after the weather")
        final = check_fleet(sim, events, things, {"Clean": 1})
        applied: dict[str, int] = defaultdict(int)
        for robot in final["per_robot"].values():
            for kind, n in robot["faults"].items():
                applied[kind] += n
            if robot["faults"]:
                assert robot["serial"]["frames_ok"] > 0
        for kind in ("link_drop", "serial_drop", "stuck", "flat"):
            assert applied[kind] > 0, applied
        assert len(final["broker_restarts"]) >= 1
        assert sum(r["serial"]["frames_corrupt"] for r in final["per_robot"].values()) > 0
        assert sum(r["connections"] for r in final["per_robot"].values()) > ROBOTS
        assert sim.tracebacks() == []
    finally:
        sim.stop()
        events.close()


def test_fleetsim_runs_against_the_endpoint_an_agent_config_names(cloud: LocalCloud) -> None:
    """``--config``: the endpoint comes from an agent configuration, not from DIR's run file (here it is
    the same broker, reached through a config as a remote endpoint would be)."""
    config = cloud.dir.root / "remote.toml"
    config.write_text(
        "[connection]\n"
        f'endpoint = "{cloud.endpoint}"\nport = {cloud.port}\nroot_ca = "{cloud.ca_path}"\nlocal = true\n'
    )
    cloud.dir.run_file.rename(cloud.dir.run_file.with_suffix(".hidden"))  # as if no local cloud ran here
    try:
        sim = Simulation(
            cloud, ["--robots", "3", "--prefix", "remote-", "--config", str(config), "--duration", "8"]
        )
        sim.wait_ready(40)
        assert sim.proc.wait(40) == 0, sim.stderr()
    finally:
        cloud.dir.run_file.with_suffix(".hidden").rename(cloud.dir.run_file)
    final = sim.status()
    assert final["final"] is True and final["all_connected_s"] is not None
    assert sorted(final["per_robot"]) == ["remote-0001", "remote-0002", "remote-0003"]
    for robot in final["per_robot"].values():
        assert robot["ready"] and robot["connections"] >= 1 and robot["outbox_depth"] == 0, robot
        assert robot["serial"]["frames_ok"] > 0 and robot["opcodes"].get("Stream", 0) >= 1, robot
