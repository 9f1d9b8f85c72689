"""The sans-I/O shadow sync engine against an in-memory shadow service built on the same pure rules
(`shadow.document`) the local cloud uses, with the real SQLite ledger. No network, no clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from agent.metrics import Metrics
from agent.store import Ledger, open_db
from agent.sync import ApplySetting, CommandLog, Notice, Publish, RunCommand, ShadowSync, Subscribe
from shadow import document as shadowdoc

THING = "robot-1"
BASE = f"$aws/things/{THING}/shadow"


class Cloud:
    """The shadow service's MQTT behaviour, enough for the engine: get/update with tokens, documents."""

    def __init__(self) -> None:
        self.shadows: dict[str, shadowdoc.Shadow] = {}
        self.now = 1_700_000_000
        self.reject_next: list[int] = []
        self.reject_gets: list[int] = []
        self.updates: list[dict[str, Any]] = []
        self.before_clear: list[dict[str, Any]] = []  # fleet writes that land just before the robot's clear
        self.lose_clears = False  # the robot's clear never reaches the service (a crash right before it)

    def handle(self, pub: Publish) -> list[tuple[str, bytes]]:
        prefix, _, op = pub.topic.rpartition("/")
        name = prefix.removeprefix(BASE).removeprefix("/name/") or "classic"
        body = json.loads(pub.payload)
        token = body.get("clientToken")
        if op == "get":
            if self.reject_gets:
                err = shadowdoc.ShadowError(self.reject_gets.pop(0), "test", token)
                return [(prefix + "/get/rejected", json.dumps(shadowdoc.error_document(err)).encode())]
            if name not in self.shadows:
                err = shadowdoc.not_found_error(THING, token)
                return [(prefix + "/get/rejected", json.dumps(shadowdoc.error_document(err)).encode())]
            doc = shadowdoc.get_document(self.shadows[name], self.now, token)
            return [(prefix + "/get/accepted", json.dumps(doc).encode())]
        assert op == "update"
        if is_clear(body):
            if self.lose_clears:
                return []
            while self.before_clear:
                self.fleet_desired(self.before_clear.pop(0))  # its documents are lost: a re-read finds it
        self.updates.append(body)
        if self.reject_next:
            code = self.reject_next.pop(0)
            err = shadowdoc.ShadowError(code, "test", token)
            return [
                (prefix + "/update/rejected", json.dumps(shadowdoc.error_document(err, self.now)).encode())
            ]
        return self._apply(prefix, name, body)

    def _apply(self, prefix: str, name: str, body: Any) -> list[tuple[str, bytes]]:
        try:
            result = shadowdoc.apply_update(self.shadows.get(name), shadowdoc.parse_update(body), self.now)
        except shadowdoc.ShadowError as err:
            doc = shadowdoc.error_document(err, self.now)
            return [(prefix + "/update/rejected", json.dumps(doc).encode())]
        self.shadows[name] = result.shadow
        return [
            (prefix + "/update/accepted", json.dumps(result.accepted).encode()),
            (prefix + "/update/documents", json.dumps(result.documents).encode()),
        ]

    def fleet_desired(self, desired: dict[str, Any], name: str = "classic") -> list[tuple[str, bytes]]:
        prefix = BASE if name == "classic" else f"{BASE}/name/{name}"
        return self._apply(prefix, name, {"state": {"desired": desired}})

    def state(self, name: str = "classic") -> dict[str, Any]:
        return dict(self.shadows[name].state)


class Harness:
    def __init__(self, tmp: Path, cloud: Cloud | None = None, **kw: Any) -> None:
        self.cloud = cloud or Cloud()
        self.ledger = Ledger(open_db(tmp))
        self.now = 100.0
        self.sync = ShadowSync(
            THING,
            self.ledger,
            Metrics(),
            settings={"report_min_s": 1.0},
            wall_clock=lambda: 1.7e9 + self.now,
            **kw,
        )
        self.ran: list[str] = []
        self.applied: list[tuple[str | None, str, Any]] = []
        self.logs: list[CommandLog] = []
        self.subscribed: list[Subscribe] = []
        self.notices: list[Notice] = []
        self.sync.set_robot_state({"battery": {"percent": 80}, "mission": "idle"})

    def run(self, effects: list[Any]) -> None:
        queue = list(effects) or self.sync.flush(self.now)
        while queue:
            eff = queue.pop(0)
            if isinstance(eff, Publish):
                for topic, payload in self.cloud.handle(eff):
                    queue += self.sync.on_message(topic, payload, self.now)
            elif isinstance(eff, RunCommand):
                self.ran.append(eff.command.id)
                queue += self.sync.command_finished(eff.command.id, "done")
                self.ledger.commit()  # as the daemon does once the answer has been handed to MQTT
            elif isinstance(eff, ApplySetting):
                self.applied.append((eff.shadow, eff.key, eff.value))
                self.sync.setting_result(eff.shadow, eff.key, eff.value, None)
            elif isinstance(eff, CommandLog):
                self.logs.append(eff)
            elif isinstance(eff, Subscribe):
                self.subscribed.append(eff)
            elif isinstance(eff, Notice):
                self.notices.append(eff)
            if not queue:
                queue += self.sync.flush(self.now)

    def connect(self, session_present: bool = False) -> None:
        self.run(self.sync.on_connected(session_present, self.now))

    def deliver(self, messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.run(self.sync.on_message(topic, payload, self.now))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.run(self.sync.flush(self.now))


def reported(cloud: Cloud, name: str = "classic") -> dict[str, Any]:
    return cloud.state(name).get("reported", {})


def is_clear(body: dict[str, Any]) -> bool:
    return "command" in (body.get("state", {}).get("desired") or {})


def desired(cloud: Cloud) -> dict[str, Any]:
    return dict(cloud.state().get("desired") or {})


def test_first_connect_creates_shadow_and_subscribes(tmp_path: Path) -> None:
    """The first connect subscribes once and reports; a resumed session does not resubscribe."""
    h = Harness(tmp_path)
    h.connect()
    assert len(h.subscribed) == 1 and f"{BASE}/update/documents" in h.subscribed[0].topics
    assert f"{BASE}/name/config/get/accepted" in h.subscribed[0].topics
    assert reported(h.cloud)["battery"] == {"percent": 80}
    assert reported(h.cloud, "config") == {"report_min_s": 1.0}
    h.connect(session_present=True)
    assert len(h.subscribed) == 1  # session resumed: no resubscribe


def test_command_runs_once_and_delta_clears(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c1", "action": "clean"}}))
    assert h.ran == ["c1"]
    assert reported(h.cloud)["command"] == {"id": "c1", "action": "clean", "status": "done"}
    assert "command" not in desired(h.cloud)  # recorded, so cleared: the next command starts from nothing
    assert shadowdoc.delta(h.cloud.state().get("desired"), reported(h.cloud)) is None
    assert [(log.command_id, log.status) for log in h.logs] == [("c1", "done")]
    # robot state changes later: documents arrive again with the same desired, nothing re-fires
    h.sync.set_robot_state({"mission": "docked"})
    h.advance(2)
    assert reported(h.cloud)["mission"] == "docked" and h.ran == ["c1"]


def test_redelivery_and_stale_versions_dropped(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    msgs = h.cloud.fleet_desired({"command": {"id": "c1", "action": "dock"}})
    h.deliver(msgs)
    h.deliver(msgs)  # QoS1 redelivery
    assert h.ran == ["c1"]
    assert h.sync.metrics.counters["shadow_stale_dropped"] >= 1


def test_reconnect_and_restart_never_rerun(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c1", "action": "spot"}}))
    h.sync.on_disconnected()
    h.connect(session_present=False)
    assert h.ran == ["c1"] and len(h.subscribed) == 2
    # agent restart: a new engine over the same state dir and the same cloud
    h2 = Harness(tmp_path, cloud=h.cloud)
    h2.connect()
    assert h2.ran == []
    assert reported(h2.cloud)["command"]["status"] == "done"


def test_interrupted_command_reported_not_rerun(tmp_path: Path) -> None:
    cloud = Cloud()
    ledger = Ledger(open_db(tmp_path))
    ledger.begin("c9", "clean", {"id": "c9", "action": "clean"})  # crashed before finishing
    ledger.finish("c9", "failed", "agent restarted before the command finished; not retried")
    ledger.commit()  # recover_ledger commits before the agent connects
    cloud.fleet_desired({"command": {"id": "c9", "action": "clean"}})
    h = Harness(tmp_path, cloud=cloud)
    h.connect()
    assert h.ran == []
    assert reported(cloud)["command"]["status"] == "failed"


def test_invalid_command_rejected_visibly_without_loop(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.deliver(
        h.cloud.fleet_desired(
            {"command": {"id": "bad1", "action": "drive", "velocity_mm_s": 9000, "duration_ms": 100}}
        )
    )
    cmd = reported(h.cloud)["command"]
    assert cmd["status"] == "rejected" and "maximum of 500" in cmd["reason"] and h.ran == []
    count = len(h.cloud.updates)
    for _ in range(5):
        h.advance(2)
    assert len(h.cloud.updates) == count  # converged: nothing more to say
    # the same id later made valid is still never run: the id was handled
    h.deliver(h.cloud.fleet_desired({"command": {"id": "bad1", "velocity_mm_s": 100}}))
    assert h.ran == []


def test_invalid_setting_then_fixed(tmp_path: Path) -> None:
    """An invalid setting is reported in errors and not applied; the fixed value applies once and clears it."""
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"schedule": {"mon": {"hour": 25, "minute": 0}}}))
    assert "schedule.mon.hour" in reported(h.cloud)["errors"]["schedule"] and h.applied == []
    h.deliver(h.cloud.fleet_desired({"schedule": {"mon": {"hour": 9, "minute": 30}}}))
    assert h.applied == [(None, "schedule", {"mon": {"hour": 9, "minute": 30}})]
    assert "errors" not in reported(h.cloud)
    assert reported(h.cloud)["schedule"] == {"mon": {"hour": 9, "minute": 30}}
    assert shadowdoc.delta(h.cloud.state()["desired"], reported(h.cloud)) is None


def test_config_named_shadow(tmp_path: Path) -> None:
    """Agent settings come from the config named shadow; an invalid one is reported there, the rest apply."""
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"log_level": "debug", "telemetry_s": 0.01}, name="config"))
    assert h.applied == [("config", "log_level", "debug")]
    rep = reported(h.cloud, "config")
    assert rep["log_level"] == "debug" and "telemetry_s" in rep["errors"]


def test_sensor_reports_coalesced_and_rate_limited(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.advance(1.0)
    before = len(h.cloud.updates)
    for pct in range(79, 70, -1):
        h.sync.set_robot_state({"battery": {"percent": pct}})
        h.advance(0.1)
    assert len(h.cloud.updates) - before == 1
    h.advance(1.0)
    assert reported(h.cloud)["battery"]["percent"] == 71
    assert 0 < h.sync.next_wakeup(h.now) <= 300


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        (429, "throttled"),
        (409, "shadow_get_sent"),
        (413, "shadow_update_dropped"),
        (500, "shadow_update_rejected_500"),
    ],
    ids=["throttled", "version_conflict", "too_large", "internal"],
)
def test_update_rejections(tmp_path: Path, code: int, expect: str) -> None:
    """Each update rejection code gets its rule (429 backs off, 409 re-reads, 400/413 drop) and never loops."""
    h = Harness(tmp_path)
    h.connect()
    gets = h.sync.metrics.counters["shadow_get_sent"]
    h.cloud.reject_next = [code]
    h.sync.set_robot_state({"mission": "cleaning"})
    h.advance(0)
    assert h.sync.metrics.counters[expect] >= (gets + 1 if expect == "shadow_get_sent" else 1)
    for _ in range(10):
        h.advance(5)
    if code == 413:
        assert reported(h.cloud)["mission"] == "idle"  # dropped, not retried in a loop
    else:
        assert reported(h.cloud)["mission"] == "cleaning"  # retried after backoff


@pytest.mark.parametrize("code", [429, 500, 403], ids=["throttled", "internal", "forbidden"])
def test_rejected_get_is_asked_again_after_backoff(tmp_path: Path, code: int) -> None:
    """A rejected get (not 404) must not leave the shadow unsynced until the next reconnect."""
    h = Harness(tmp_path)
    h.cloud.fleet_desired({"command": {"id": "c1", "action": "dock"}})
    h.cloud.reject_gets = [code, code]
    effects = h.sync.on_connected(False, h.now)
    h.run(effects)
    assert h.ran == [] and h.sync.metrics.counters[f"shadow_get_rejected_{code}"] >= 1
    assert h.notices and h.notices[0].event == "shadow.get.rejected"
    assert dict(h.notices[0].fields)["then"].startswith("asking again in")
    for _ in range(20):
        h.advance(3)
    assert h.ran == ["c1"] and reported(h.cloud)["command"]["status"] == "done"
    assert h.sync.metrics.counters[f"shadow_get_rejected_{code}"] >= 2


def test_update_rejection_is_logged_with_what_happens_next(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.cloud.reject_next = [413]
    h.sync.set_robot_state({"mission": "cleaning"})
    h.advance(1)
    assert [n.event for n in h.notices] == ["shadow.update.rejected"]
    fields = dict(h.notices[0].fields)
    assert fields["code"] == 413 and "dropped keys ['mission']" in fields["then"]


def test_heartbeat_bounds_staleness(tmp_path: Path) -> None:
    h = Harness(tmp_path, heartbeat_s=30)
    h.connect()
    n = len(h.cloud.updates)
    h.advance(31)
    assert len(h.cloud.updates) == n + 1 and "heartbeat" in h.cloud.updates[-1]["state"]["reported"]


def test_timeouts_resend(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.sync.on_connected(False, h.now)  # the get is "lost"
    effects = h.sync.flush(h.now + 11)
    assert any(isinstance(e, Publish) and e.topic.endswith("/get") for e in effects)
    assert sum(isinstance(e, Subscribe) for e in effects) == 1
    assert h.sync.metrics.counters["shadow_get_timeout"] == 2


def test_health_probe_catches_a_missed_document(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.cloud.fleet_desired({"command": {"id": "lost", "action": "dock"}})  # its documents never arrive
    n = len(h.cloud.updates)
    h.run(h.sync.probe(h.now))
    assert h.ran == ["lost"] and h.sync.metrics.counters["health_probes"] == 1
    answers = [u for u in h.cloud.updates[n:] if not is_clear(u)]
    assert len(answers) == 1  # only the command answer, not a full re-publish (and the clear after it)
    assert [is_clear(u) for u in h.cloud.updates[n:]] == [False, True]
    assert h.sync.get_timeouts == 0


def test_consecutive_get_timeouts_counted(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.sync.probe(h.now)  # answer lost
    for i in range(3):
        h.sync.flush(h.now + 11 * (i + 1))
    assert h.sync.get_timeouts == 3


# the command contract: the robot clears desired.command; stale fields are told apart by metadata -----------
DRIVE = {"id": "c1", "action": "drive", "velocity_mm_s": 100, "duration_ms": 500}


def test_second_raw_command_after_a_drive_runs(tmp_path: Path) -> None:
    """The trap of issue 10: after a drive, a raw {"id","action"} (no nulls) used to be rejected. The robot
    clears desired.command once it has recorded c1, so c2 lands on an empty object and runs."""
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"command": DRIVE}))
    assert h.ran == ["c1"] and "command" not in desired(h.cloud)
    clears = [u for u in h.cloud.updates if is_clear(u)]
    assert clears == [
        {"state": {"desired": {"command": None}}, "version": clears[0]["version"], "clientToken": ANY}
    ]
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c2", "action": "clean"}}))  # same second, raw
    assert h.ran == ["c1", "c2"]
    assert reported(h.cloud)["command"] == {"id": "c2", "action": "clean", "status": "done"}
    assert "command" not in desired(h.cloud) and h.sync.metrics.counters["commands_rejected"] == 0


def test_offline_leftovers_are_recognised_by_metadata(tmp_path: Path) -> None:
    """Two commands written while the robot was offline (no clear in between): the drive's arguments are
    older than c2's id in the shadow's metadata, so they are ignored, not an error; c1 was replaced unseen."""
    h = Harness(tmp_path)
    h.cloud.fleet_desired({"command": DRIVE})
    h.cloud.now += 1
    h.cloud.fleet_desired({"command": {"id": "c2", "action": "clean"}})
    assert desired(h.cloud)["command"] == {**DRIVE, "id": "c2", "action": "clean"}
    h.connect()
    assert h.ran == ["c2"] and h.sync.metrics.counters["command_stale_fields_ignored"] == 1
    assert reported(h.cloud)["command"] == {"id": "c2", "action": "clean", "status": "done"}
    assert "command" not in desired(h.cloud)
    assert shadowdoc.delta(h.cloud.state().get("desired"), reported(h.cloud)) is None


def test_same_second_leftovers_are_rejected_with_the_remedy(tmp_path: Path) -> None:
    """Timestamps are whole seconds: leftovers written in the id's second cannot be told apart. Rejected, and
    the reason says what to use; the command is recorded and cleared like any other."""
    h = Harness(tmp_path)
    h.cloud.fleet_desired({"command": DRIVE})
    h.cloud.fleet_desired({"command": {"id": "c2", "action": "clean"}})
    h.connect()
    cmd = reported(h.cloud)["command"]
    assert h.ran == [] and cmd["status"] == "rejected" and cmd["id"] == "c2"
    assert "velocity_mm_s" in cmd["reason"] and "roomba-fleet command" in cmd["reason"]
    assert "command" not in desired(h.cloud)
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c3", "action": "clean"}}))
    assert h.ran == ["c3"]


def test_clear_never_wipes_a_newer_command(tmp_path: Path) -> None:
    """The fleet writes c2 after the robot recorded c1 but before its clear lands: the clear carries the
    version the robot knew, gets 409, the robot re-reads the shadow, runs c2, then clears c2."""
    h = Harness(tmp_path)
    h.connect()
    h.cloud.before_clear = [{"command": {"id": "c2", "action": "dock"}}]
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c1", "action": "clean"}}))
    assert h.sync.metrics.counters["shadow_update_rejected_409"] == 1
    assert [n.event for n in h.notices] == ["shadow.clear.conflict"]
    assert h.ran == ["c1", "c2"]
    assert reported(h.cloud)["command"] == {"id": "c2", "action": "dock", "status": "done"}
    assert "command" not in desired(h.cloud)


def test_restart_between_record_and_clear(tmp_path: Path) -> None:
    """The robot records c1 and dies before its clear: after the restart c1 is a duplicate (never rerun),
    its recorded answer is reported, and desired.command is cleared then."""
    h = Harness(tmp_path)
    h.connect()
    h.cloud.lose_clears = True
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c1", "action": "clean"}}))
    assert h.ran == ["c1"] and desired(h.cloud)["command"]["id"] == "c1"
    h.cloud.lose_clears = False
    h2 = Harness(tmp_path, cloud=h.cloud)
    h2.connect()
    assert h2.ran == [] and h2.sync.metrics.counters["commands_duplicate"] == 1
    assert reported(h.cloud)["command"] == {"id": "c1", "action": "clean", "status": "done"}
    assert "command" not in desired(h.cloud)


def test_restart_after_the_clear_keeps_the_answer(tmp_path: Path) -> None:
    """desired.command is gone, so a restarted robot keeps reported.command as the ledger has it (its full
    first report must not delete it)."""
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"command": {"id": "c1", "action": "spot"}}))
    h2 = Harness(tmp_path, cloud=h.cloud)
    h2.connect()
    h2.advance(2)
    assert h2.ran == [] and reported(h.cloud)["command"] == {"id": "c1", "action": "spot", "status": "done"}


def test_clear_and_answer_in_exact_json(tmp_path: Path) -> None:
    """JSON-exact, as the local cloud's engine (and AWS) sends them: a get/accepted whose command carries an
    older drive's fields, the command it becomes, the answer, and the version-guarded clear."""
    sync = ShadowSync(THING, Ledger(open_db(tmp_path)), Metrics(), qos=1)
    gets = [e for e in sync.on_connected(False, 10.0) if isinstance(e, Publish) and e.topic == f"{BASE}/get"]
    token = json.loads(gets[0].payload)["clientToken"]
    get_accepted = (
        '{"state":{"desired":{"command":{"id":"c2","action":"clean","velocity_mm_s":100,"duration_ms":500}},'
        '"delta":{"command":{"id":"c2","action":"clean","velocity_mm_s":100,"duration_ms":500}}},'
        '"metadata":{"desired":{"command":{"id":{"timestamp":1005},"action":{"timestamp":1005},'
        '"velocity_mm_s":{"timestamp":1000},"duration_ms":{"timestamp":1000}}}},"version":2,"timestamp":1006,'
        f'"clientToken":"{token}"}}'
    ).encode()
    effects = sync.on_message(f"{BASE}/get/accepted", get_accepted, 10.0)
    assert [e.command.document for e in effects if isinstance(e, RunCommand)] == [
        {"id": "c2", "action": "clean"}
    ]
    sync.command_finished("c2", "done")
    (answer,) = [e for e in sync.flush(10.0) if isinstance(e, Publish) and e.topic == f"{BASE}/update"]
    body = json.loads(answer.payload)
    assert body["state"]["reported"]["command"] == {"id": "c2", "action": "clean", "status": "done"}
    accepted = json.dumps(
        {"state": body["state"], "version": 3, "timestamp": 1007, "clientToken": body["clientToken"]}
    )
    assert sync.on_message(f"{BASE}/update/accepted", accepted.encode(), 10.1) == []
    (clear,) = [e for e in sync.flush(10.1) if isinstance(e, Publish) and e.topic == f"{BASE}/update"]
    token = json.loads(clear.payload)["clientToken"]
    assert (
        clear.payload
        == f'{{"state":{{"desired":{{"command":null}}}},"version":3,"clientToken":"{token}"}}'.encode()
    )
    assert clear.qos == 1
    documents = (
        '{"previous":null,"current":{"state":{"reported":{"command":{"id":"c2","action":"clean",'
        '"status":"done"}}},"metadata":{"reported":{"command":{"id":{"timestamp":1007},"action":'
        '{"timestamp":1007},"status":{"timestamp":1007}}}},"version":4},"timestamp":1008,'
        f'"clientToken":"{token}"}}'
    ).encode()
    assert sync.on_message(f"{BASE}/update/documents", documents, 10.2) == []
    assert sync.clear_command is None and sync.flush(10.3) == []


def test_error_of_a_key_that_left_desired_is_cleared(tmp_path: Path) -> None:
    """reported.errors.<key> goes once <key> leaves desired (it stayed forever before)."""
    h = Harness(tmp_path)
    h.connect()
    h.deliver(h.cloud.fleet_desired({"mode": "clean", "schedule": {"mon": {"hour": 25, "minute": 0}}}))
    errors = reported(h.cloud)["errors"]
    assert "unknown setting" in errors["mode"] and "schedule.mon.hour" in errors["schedule"]
    h.deliver(h.cloud.fleet_desired({"mode": None}))
    assert list(reported(h.cloud)["errors"]) == ["schedule"]
    h.deliver(h.cloud.fleet_desired({"schedule": None}))
    assert "errors" not in reported(h.cloud)
    # the config shadow follows the same rule
    h.deliver(h.cloud.fleet_desired({"telemetry_s": 0.01}, name="config"))
    assert "telemetry_s" in reported(h.cloud, "config")["errors"]
    h.deliver(h.cloud.fleet_desired({"telemetry_s": None}, name="config"))
    assert "errors" not in reported(h.cloud, "config")


@pytest.mark.parametrize(
    ("raw", "metadata", "expect"),
    [
        (
            {"id": "c", "action": "clean", "x": 1},
            {"id": {"timestamp": 5}, "action": {"timestamp": 5}, "x": {"timestamp": 4}},
            ({"id": "c", "action": "clean"}, ("x",)),
        ),
        (
            {"id": "c", "action": "clean", "x": 1},
            {"id": {"timestamp": 5}, "action": {"timestamp": 5}, "x": {"timestamp": 5}},
            ({"id": "c", "action": "clean", "x": 1}, ()),
        ),
        ({"id": "c", "action": "clean", "x": 1}, {}, ({"id": "c", "action": "clean", "x": 1}, ())),
        (
            {"id": "c", "action": "clean", "x": [1]},
            {"id": {"timestamp": 5}, "x": [{"timestamp": 3}]},
            ({"id": "c", "action": "clean"}, ("x",)),
        ),
        ("clean", {"timestamp": 5}, ("clean", ())),
    ],
    ids=["older_dropped", "same_second_kept", "no_metadata", "array_leaf", "not_an_object"],
)
def test_current_fields(raw: Any, metadata: Any, expect: Any) -> None:
    from agent.commands import current_fields

    assert current_fields(raw, metadata) == expect
