"""The sans-I/O shadow sync engine against an in-memory shadow service built on the same pure rules
(`shadow.document`) the local cloud uses, with the real SQLite ledger. No network, no clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        self.updates.append(body)
        if self.reject_next:
            code = self.reject_next.pop(0)
            err = shadowdoc.ShadowError(code, "test", token)
            return [
                (prefix + "/update/rejected", json.dumps(shadowdoc.error_document(err, self.now)).encode())
            ]
        return self._apply(prefix, name, body)

    def _apply(self, prefix: str, name: str, body: Any) -> list[tuple[str, bytes]]:
        result = shadowdoc.apply_update(self.shadows.get(name), shadowdoc.parse_update(body), self.now)
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
    assert shadowdoc.delta(h.cloud.state()["desired"], reported(h.cloud)) is None
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
    assert len(h.cloud.updates) == n + 1  # only the command answer, not a full re-publish
    assert h.sync.get_timeouts == 0


def test_consecutive_get_timeouts_counted(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.connect()
    h.sync.probe(h.now)  # answer lost
    for i in range(3):
        h.sync.flush(h.now + 11 * (i + 1))
    assert h.sync.get_timeouts == 3
