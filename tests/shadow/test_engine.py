"""Unit tests of the shadow service's sans-I/O core, its SQLite store, the MQTT codec and broker config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from localcloud import broker, mqtt_lite
from localcloud.shadow_store import ShadowStore
from localcloud.supervisor import BACKOFF_CAP_S, BACKOFF_START_S, next_backoff
from shadow.engine import ShadowEngine, StoredShadow, parse_topic

T0 = 1_700_000_000.0


def _answers(engine: ShadowEngine, topic: str, payload: Any, now: float = T0) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {t: json.loads(p) for t, p in engine.handle(topic, data, now)}


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        pytest.param("$aws/things/r1/shadow/update", ("r1", "", "update"), id="classic_update"),
        pytest.param("$aws/things/r1/shadow/name/cfg/get", ("r1", "cfg", "get"), id="named_get"),
        pytest.param("$aws/things/r1/shadow/update/accepted", None, id="response_ignored"),
        pytest.param("$aws/things/r1/shadow/name/cfg/update/delta", None, id="named_response_ignored"),
        pytest.param("$aws/things/r1/shadow/list", None, id="unknown_op"),
        pytest.param("$aws/things/r1/jobs/get", None, id="jobs"),
        pytest.param("roomba/r1/telemetry", None, id="not_aws"),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str, str] | None) -> None:
    parsed = parse_topic(topic)
    assert (None if parsed is None else (parsed.thing, parsed.shadow_name, parsed.operation)) == expected


def test_update_publishes_accepted_documents_and_delta_on_the_right_topics() -> None:
    engine = ShadowEngine()
    out = _answers(
        engine, "$aws/things/r1/shadow/name/cfg/update", {"state": {"desired": {"a": 1}}, "clientToken": "t"}
    )
    prefix = "$aws/things/r1/shadow/name/cfg/update"
    assert set(out) == {f"{prefix}/accepted", f"{prefix}/documents", f"{prefix}/delta"}
    assert all(doc["clientToken"] == "t" for doc in out.values())
    assert engine.take_dirty().keys() == {("r1", "cfg")}
    assert engine.take_dirty() == {}


def test_get_and_delete_of_missing_shadow_are_404_with_token() -> None:
    engine = ShadowEngine()
    for op in ("get", "delete"):
        out = _answers(engine, f"$aws/things/r9/shadow/{op}", {"clientToken": "tok"})
        assert out == {
            f"$aws/things/r9/shadow/{op}/rejected": {
                "code": 404,
                "message": "No shadow exists with name: 'r9'",
                "clientToken": "tok",
            }
        }


def test_delete_then_recreate_continues_version_and_forgets_after_48h() -> None:
    engine = ShadowEngine()
    for i in range(3):
        _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"i": i}}})
    out = _answers(engine, "$aws/things/r1/shadow/delete", b"")
    assert out["$aws/things/r1/shadow/delete/accepted"]["version"] == 3
    assert "$aws/things/r1/shadow/get/rejected" in _answers(engine, "$aws/things/r1/shadow/get", b"")
    out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"x": 1}}}, T0 + 10)
    assert out["$aws/things/r1/shadow/update/accepted"]["version"] == 4
    assert out["$aws/things/r1/shadow/update/documents"]["previous"] is None
    _answers(engine, "$aws/things/r1/shadow/delete", b"", T0 + 20)
    later = T0 + 20 + 48 * 3600 + 1
    out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"x": 1}}}, later)
    assert out["$aws/things/r1/shadow/update/accepted"]["version"] == 1


def test_rate_limit_is_per_thing_and_refills() -> None:
    engine = ShadowEngine(rate_per_thing=20)
    codes = []
    for _ in range(25):
        out = _answers(engine, "$aws/things/flood/shadow/get", {"clientToken": "f"})
        codes.append(next(iter(out.values())).get("code", 200))
    assert codes[:20] == [404] * 20
    assert codes[20:] == [429] * 5
    assert (
        next(iter(_answers(engine, "$aws/things/flood/shadow/get", {"clientToken": "f"}).values()))["message"]
        == "Too Many Requests"
    )
    calm = _answers(engine, "$aws/things/calm/shadow/update", {"state": {"reported": {"ok": True}}})
    assert "$aws/things/calm/shadow/update/accepted" in calm
    refilled = _answers(engine, "$aws/things/flood/shadow/update", {"state": {}}, T0 + 1.0)
    assert "$aws/things/flood/shadow/update/accepted" in refilled


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        pytest.param("$aws/things/bad.name/shadow/get", "Invalid thing name", id="thing_dot"),
        pytest.param("$aws/things/" + "x" * 129 + "/shadow/get", "Invalid thing name", id="thing_129"),
        pytest.param(
            "$aws/things/r1/shadow/name/" + "s" * 65 + "/get", "Invalid shadow name", id="shadow_65"
        ),
        pytest.param("$aws/things/r1/shadow/name/bad.name/update", "Invalid shadow name", id="shadow_dot"),
    ],
)
def test_bad_names_get_400(topic: str, message: str) -> None:
    out = _answers(ShadowEngine(), topic, {"clientToken": "n", "state": {}})
    ((rtopic, doc),) = out.items()
    assert rtopic.endswith("/rejected")
    assert (doc["code"], doc["message"], doc["clientToken"]) == (400, message, "n")


def test_internal_failure_is_500_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ShadowEngine()

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("shadow.document.apply_update", boom)
    with structlog.testing.capture_logs() as logs:
        out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {}, "clientToken": "z"})
    assert [e["event"] for e in logs] == ["shadow.request.failed"]
    assert out["$aws/things/r1/shadow/update/rejected"] == {
        "code": 500,
        "message": "Internal service failure",
        "timestamp": int(T0),
        "clientToken": "z",
    }


def test_store_round_trip(tmp_path: Path) -> None:
    engine = ShadowEngine()
    _answers(engine, "$aws/things/r1/shadow/update", {"state": {"desired": {"a": [1, 2]}}})
    _answers(engine, "$aws/things/r2/shadow/name/n/update", {"state": {"reported": {"b": "é"}}})
    _answers(engine, "$aws/things/r2/shadow/name/n/delete", b"")
    store = ShadowStore(tmp_path / "s.sqlite3")
    store.save(engine.take_dirty())
    store.close()
    loaded = ShadowStore(tmp_path / "s.sqlite3").load_all()
    assert loaded == engine.shadows
    assert loaded[("r2", "n")] == StoredShadow(None, 1, int(T0))


def test_mqtt_lite_round_trip_in_pieces() -> None:
    wire = (
        mqtt_lite.publish("$aws/things/r1/shadow/update", b'{"state":{}}', qos=1, packet_id=7)
        + mqtt_lite.publish("a/b", b"x" * 300, qos=0)
        + mqtt_lite.puback(9)
    )
    parser = mqtt_lite.PacketParser()
    got = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        got += parser.packets()
    assert [(p.type, p.topic, p.payload, p.qos, p.packet_id) for p in got] == [
        (mqtt_lite.PUBLISH, "$aws/things/r1/shadow/update", b'{"state":{}}', 1, 7),
        (mqtt_lite.PUBLISH, "a/b", b"x" * 300, 0, 0),
        (mqtt_lite.PUBACK, "", b"", 0, 0),
    ]


def test_mqtt_lite_refuses_oversized_and_garbage() -> None:
    parser = mqtt_lite.PacketParser(max_packet=100)
    parser.feed(mqtt_lite.publish("t", b"x" * 200))
    with pytest.raises(mqtt_lite.ProtocolError):
        parser.packets()
    parser = mqtt_lite.PacketParser()
    parser.feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt_lite.ProtocolError):
        parser.packets()


def test_broker_config_is_mutual_tls_with_identity_and_nodelay(tmp_path: Path) -> None:
    conf = broker.broker_config(
        port=18883,
        ca_cert=tmp_path / "ca.crt",
        server_cert=tmp_path / "s.crt",
        server_key=tmp_path / "s.key",
        acl_file=tmp_path / "acl",
        log_file=tmp_path / "log",
        persistence_dir=tmp_path,
        as_root=False,
    )
    lines = set(conf.splitlines())
    for needed in (
        "listener 18883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "set_tcp_nodelay true",
        f"log_dest file {tmp_path / 'log'}",
    ):
        assert needed in lines
    assert "user root" not in lines
    assert (
        "user root"
        in broker.broker_config(
            port=1,
            ca_cert=tmp_path,
            server_cert=tmp_path,
            server_key=tmp_path,
            acl_file=tmp_path,
            log_file=tmp_path,
            persistence_dir=tmp_path,
            as_root=True,
        ).splitlines()
    )
    acl = broker.acl_text().splitlines()
    assert "pattern read $aws/things/%u/shadow/#" in acl
    assert "pattern write roomba/%u/presence" in acl


def test_missing_mosquitto_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMBA_MOSQUITTO", "/nonexistent/mosquitto")
    with pytest.raises(broker.BrokerMissing, match=r"apt-get install -y mosquitto.*make setup"):
        broker.find_mosquitto()


def test_backoff_doubles_caps_and_resets() -> None:
    assert next_backoff(None, 0) == BACKOFF_START_S
    assert next_backoff(1.0, 1.0) == 2.0
    assert next_backoff(BACKOFF_CAP_S, 1.0) == BACKOFF_CAP_S
    assert next_backoff(8.0, 3600) == BACKOFF_START_S


def test_documents_payload_is_exactly_the_rules_output() -> None:
    """The engine builds update/documents from cached JSON; it must equal the pure rules' document."""
    from shadow import document as sd

    engine = ShadowEngine()
    shadow = None
    steps = [
        {"state": {"reported": {"a": 1, "é": [1, {"b": 2}]}}, "clientToken": "t1"},
        {"state": {"desired": {"a": 2}}},
        {"state": None, "clientToken": "t3"},
        {"state": {"desired": {"x": {"y": "z"}}}, "clientToken": "t4"},
    ]
    for i, step in enumerate(steps):
        payload = json.dumps(step).encode()
        expected = sd.apply_update(shadow, sd.parse_update(payload), int(T0) + i)
        shadow = expected.shadow
        out = dict(engine.handle("$aws/things/docs/shadow/update", payload, T0 + i))
        assert json.loads(out["$aws/things/docs/shadow/update/documents"]) == expected.documents


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["$aws/things/fz/shadow/update", "$aws/things/fz/shadow/name/n/update", "$aws/things/fz/shadow/get"]
    ),
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
            lambda kids: (
                st.lists(kids, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["state", "desired", "reported", "version", "clientToken", "x"]),
                    kids,
                    max_size=4,
                )
            ),
            max_leaves=15,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_any_payload_gets_exactly_one_answer_and_never_raises(topic: str, payload: bytes) -> None:
    engine = ShadowEngine(rate_per_thing=0)
    out = engine.handle(topic, payload, T0)
    suffixes = sorted(t.rsplit("/", 1)[1] for t, _p in out)
    assert suffixes in (
        ["rejected"],
        ["accepted"],
        ["accepted", "documents"],
        ["accepted", "delta", "documents"],
    )
    for _t, data in out:
        assert isinstance(json.loads(data, parse_constant=_refuse), dict)  # strict JSON: no NaN/Infinity


def _refuse(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name} in a response")


def test_a_failing_disk_does_not_take_the_service_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from localcloud.cloud import prepare
    from localcloud.layout import CloudDir
    from localcloud.shadow_service import ShadowService

    cloud = CloudDir.at(tmp_path / "c")
    service = ShadowService(cloud, prepare(cloud, 18999))
    service.engine.handle("$aws/things/disk/shadow/update", b'{"state":{"reported":{"a":1}}}', T0)
    real_save = service.store.save

    def broken(_changed: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(service.store, "save", broken)
    with structlog.testing.capture_logs() as logs:
        service.flush()
    assert [e["event"] for e in logs] == ["shadow.store.failed"]
    monkeypatch.setattr(service.store, "save", real_save)
    service.flush()
    service.store.close()
    assert ("disk", "") in ShadowStore(cloud.shadows_db).load_all()


@pytest.mark.parametrize(("durable", "level"), [(False, 1), (True, 2)])
def test_store_durability_setting(tmp_path: Path, durable: bool, level: int) -> None:
    store = ShadowStore(tmp_path / "d.sqlite3", durable=durable)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level  # 1 NORMAL, 2 FULL
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_acl_grants_a_robot_exactly_the_aws_device_policy() -> None:
    """The broker ACL and ``roomba-provision aws policy`` must not drift apart (CONTRACTS.md "Topics")."""
    from provisioning.aws import THING, device_policy

    def as_filter(resource: str, prefix: str) -> str:
        topic = resource.split(f":{prefix}/", 1)[1].replace(THING, "%u")
        return topic[:-2] + "/#" if topic.endswith("/*") else topic.replace("*", "+")

    statements = {st["Action"]: st["Resource"] for st in device_policy()["Statement"]}
    publish = {as_filter(r, "topic") for r in statements["iot:Publish"]}
    receive = {as_filter(r, "topic") for r in statements["iot:Receive"]}
    subscribe = {as_filter(r, "topicfilter") for r in statements["iot:Subscribe"]}
    acl = broker.acl_text().splitlines()
    assert {line.split(" ", 2)[2] for line in acl if line.startswith("pattern write ")} == publish
    assert {line.split(" ", 2)[2] for line in acl if line.startswith("pattern read ")} == receive == subscribe
    assert not [line for line in acl if line.startswith("pattern readwrite")]


def test_store_checkpoints_only_when_asked_and_keeps_everything(tmp_path: Path) -> None:
    from localcloud import shadow_store

    engine = ShadowEngine(rate_per_thing=0)
    store = ShadowStore(tmp_path / "c.sqlite3")
    for i in range(shadow_store.CHECKPOINT_WHEN_IDLE_AFTER):
        _answers(engine, f"$aws/things/cp-{i % 7}/shadow/update", {"state": {"reported": {"i": i}}})
        assert not store.checkpoint_due
        store.save(engine.take_dirty())
    assert store.checkpoint_due  # nothing was checkpointed inside save(): the WAL holds every commit
    assert store.checkpoint() >= shadow_store.CHECKPOINT_WHEN_IDLE_AFTER
    assert not store.checkpoint_due
    store.close()
    assert ShadowStore(tmp_path / "c.sqlite3").load_all() == engine.shadows
