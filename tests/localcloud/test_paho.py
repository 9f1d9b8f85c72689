"""A second, independent client (paho-mqtt) against the local cloud: AWS's worked example message for
message, per-robot isolation, certificates that must be refused, and bad input that must not hurt."""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import time
from pathlib import Path
from typing import Any

import pytest

from localcloud.layout import OPERATOR_IDENTITY
from localcloud.testing import LocalCloud
from provisioning import ca as pca
from provisioning import device as pdevice

pytestmark = pytest.mark.slow


def structural(doc: Any) -> Any:
    """Replace timestamp and version values (checked to be integers) by placeholders."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if key in ("timestamp", "version") and not isinstance(value, dict):
                assert isinstance(value, int) and not isinstance(value, bool), (key, value)
                out[key] = f"<{key}>"
            else:
                out[key] = structural(value)
        return out
    if isinstance(doc, list):
        return [structural(v) for v in doc]
    return doc


def _ts(n: int) -> list[dict[str, str]]:
    return [{"timestamp": "<timestamp>"}] * n


def by_topic(messages: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for topic, doc in messages:
        assert topic not in out, f"two messages on {topic}"
        out[topic] = doc
    return out


def test_named_shadow_worked_example_message_for_message(local_cloud: LocalCloud, paho_robot: Any) -> None:
    """AWS's named-shadow walk-through (docs.aws.amazon.com/iot/latest/developerguide/using-device-shadows.html),
    message for message; order-insensitive, timestamps structural."""
    thing, prefix = "mySimulatedThing", "$aws/things/mySimulatedThing/shadow/name/simShadow1"
    device: Any = paho_robot(local_cloud, thing)
    device.subscribe(f"{prefix}/#")
    app: Any = paho_robot(local_cloud, OPERATOR_IDENTITY, client_id="worked-example-app")

    device.publish(f"{prefix}/get", b"")
    got = by_topic([m for m in device.collect(2) if m[0] != f"{prefix}/get"])
    assert got == {
        f"{prefix}/get/rejected": {"code": 404, "message": "No shadow exists with name: 'simShadow1'"}
    }

    t_report = "426bfd96-e720-46d3-95cd-014e3ef12bb6"
    device.publish(
        f"{prefix}/update",
        {"state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}}, "clientToken": t_report},
    )
    got = by_topic([m for m in device.collect(3) if m[0] != f"{prefix}/update"])
    assert set(got) == {f"{prefix}/update/accepted", f"{prefix}/update/documents"}
    v0 = got[f"{prefix}/update/accepted"]["version"]
    stored_v3 = {
        "state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}},
        "metadata": {"reported": {"ID": {"timestamp": "<timestamp>"}, "ColorRGB": _ts(3)}},
        "version": "<version>",
    }
    assert structural(got[f"{prefix}/update/documents"]) == {
        "previous": None,
        "current": stored_v3,
        "timestamp": "<timestamp>",
        "clientToken": t_report,
    }

    t_app = "21b21b21-bfd2-4279-8c65-e2f697ff4fab"
    app.publish(f"{prefix}/update", {"state": {"desired": {"ColorRGB": [255, 255, 0]}}, "clientToken": t_app})
    got = by_topic([m for m in device.collect(4) if m[0] != f"{prefix}/update"])
    assert set(got) == {f"{prefix}/update/accepted", f"{prefix}/update/documents", f"{prefix}/update/delta"}
    assert structural(got[f"{prefix}/update/accepted"]) == {
        "state": {"desired": {"ColorRGB": [255, 255, 0]}},
        "metadata": {"desired": {"ColorRGB": _ts(3)}},
        "version": "<version>",
        "timestamp": "<timestamp>",
        "clientToken": t_app,
    }
    assert structural(got[f"{prefix}/update/delta"]) == {
        "version": "<version>",
        "timestamp": "<timestamp>",
        "state": {"ColorRGB": [255, 255, 0]},
        "metadata": {"ColorRGB": _ts(3)},
        "clientToken": t_app,
    }
    assert got[f"{prefix}/update/delta"]["version"] == v0 + 1

    t_dev = "a4dc2227-9213-4c6a-a6a5-053304f60258"
    device.publish(
        f"{prefix}/update", {"state": {"reported": {"ColorRGB": [255, 255, 0]}}, "clientToken": t_dev}
    )
    got = by_topic([m for m in device.collect(3) if m[0] != f"{prefix}/update"])
    assert set(got) == {f"{prefix}/update/accepted", f"{prefix}/update/documents"}
    assert structural(got[f"{prefix}/update/accepted"]) == {
        "state": {"reported": {"ColorRGB": [255, 255, 0]}},
        "metadata": {"reported": {"ColorRGB": _ts(3)}},
        "version": "<version>",
        "timestamp": "<timestamp>",
        "clientToken": t_dev,
    }
    full_meta = {
        "desired": {"ColorRGB": _ts(3)},
        "reported": {"ID": {"timestamp": "<timestamp>"}, "ColorRGB": _ts(3)},
    }
    docs = got[f"{prefix}/update/documents"]
    assert structural(docs) == {
        "previous": {
            "state": {
                "desired": {"ColorRGB": [255, 255, 0]},
                "reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]},
            },
            "metadata": full_meta,
            "version": "<version>",
        },
        "current": {
            "state": {
                "desired": {"ColorRGB": [255, 255, 0]},
                "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]},
            },
            "metadata": full_meta,
            "version": "<version>",
        },
        "timestamp": "<timestamp>",
        "clientToken": t_dev,
    }
    assert (docs["previous"]["version"], docs["current"]["version"]) == (v0 + 1, v0 + 2)
    assert device.quiet_for(0.3) == []

    device.publish(f"{prefix}/get", b"")
    got = by_topic([m for m in device.collect(2) if m[0] != f"{prefix}/get"])
    assert structural(got[f"{prefix}/get/accepted"]) == {
        "state": {
            "desired": {"ColorRGB": [255, 255, 0]},
            "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]},
        },
        "metadata": full_meta,
        "version": "<version>",
        "timestamp": "<timestamp>",
    }

    app.publish(f"{prefix}/delete", b"anything at all")  # the device policy gives robots no delete
    got = by_topic([m for m in device.collect(2) if m[0] != f"{prefix}/delete"])
    assert got[f"{prefix}/delete/accepted"]["version"] == v0 + 2
    assert structural(got[f"{prefix}/delete/accepted"]) == {
        "version": "<version>",
        "timestamp": "<timestamp>",
    }


def test_robot_a_cannot_read_or_change_robot_b(local_cloud: LocalCloud, paho_robot: Any) -> None:
    a: Any = paho_robot(local_cloud, "iso-a")
    b: Any = paho_robot(local_cloud, "iso-b")
    a.subscribe("$aws/things/iso-b/shadow/#", "roomba/iso-b/#", "$aws/things/+/shadow/#", "roomba/#")
    b.subscribe("$aws/things/iso-b/shadow/update/accepted")
    b.publish("$aws/things/iso-b/shadow/update", {"state": {"reported": {"secret": 42}}})
    b.publish("roomba/iso-b/telemetry", {"battery": 50}, qos=0)
    assert [t for t, _ in b.collect(1)] == ["$aws/things/iso-b/shadow/update/accepted"]
    assert a.quiet_for(0.5) == [], "robot A received robot B's traffic"

    mid = a.publish("$aws/things/iso-b/shadow/update", {"state": {"reported": {"secret": 0}}})
    deadline = time.monotonic() + 5
    while mid not in a.acks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.acks[mid].value == 0x87, "publish to another robot's shadow was not refused"
    a.publish("$aws/things/iso-b/shadow/delete", b"")
    a.publish("roomba/iso-b/telemetry", {"battery": 1}, qos=0)
    b.publish("$aws/things/iso-b/shadow/get", {"clientToken": "check"})
    b.subscribe("$aws/things/iso-b/shadow/get/accepted")
    b.publish("$aws/things/iso-b/shadow/get", {"clientToken": "check2"})
    docs = [d for _t, d in b.collect(2) if d.get("clientToken") == "check2"]
    assert docs and docs[0]["state"]["reported"] == {"secret": 42} and docs[0]["version"] == 1


def _puback(robot: Any, mid: int) -> int:
    deadline = time.monotonic() + 5
    while mid not in robot.acks and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(robot.acks[mid].value)


def test_a_robot_has_exactly_the_device_policy_on_its_own_topics(
    local_cloud: LocalCloud, paho_robot: Any
) -> None:
    """As ``roomba-provision aws policy``: no delete, no spoofed responses, only the four agent topics."""
    robot: Any = paho_robot(local_cloud, "policy-robot")
    watcher: Any = paho_robot(local_cloud, OPERATOR_IDENTITY, client_id="policy-watcher")
    watcher.subscribe("$aws/things/policy-robot/#", "roomba/policy-robot/#")
    prefix = "$aws/things/policy-robot/shadow"
    allowed = [f"{prefix}/update", f"{prefix}/name/cfg/get", "roomba/policy-robot/events"]
    refused = [
        f"{prefix}/delete",
        f"{prefix}/name/cfg/delete",
        f"{prefix}/update/accepted",
        f"{prefix}/update/delta",
        "roomba/policy-robot/anything-else",
    ]
    for topic in allowed + refused:
        mid = robot.publish(topic, {"state": {"reported": {"on": topic}}, "clientToken": "p"})
        assert _puback(robot, mid) == (0 if topic in allowed else 0x87), topic
    published_by_robot: set[str] = set()  # topics on which the robot's own payload was delivered
    for topic, doc in watcher.collect(40, timeout=2):
        reported = ((doc.get("state") if isinstance(doc, dict) else None) or {}).get("reported") or {}
        if reported.get("on") == topic:
            published_by_robot.add(topic)
    assert published_by_robot == set(allowed), "a refused publish was delivered (or an allowed one lost)"

    robot.subscribe("roomba/policy-robot/#", f"{prefix}/update/accepted")
    robot.publish("roomba/policy-robot/telemetry", {"battery": 3}, qos=0)
    robot.publish(f"{prefix}/update", {"state": {"reported": {"n": 1}}, "clientToken": "mine"})
    got = robot.collect(2, timeout=1.5)
    assert [t for t, _d in got] == [f"{prefix}/update/accepted"], "a robot received its own agent topics"


def test_certificate_from_another_ca_is_refused(
    local_cloud: LocalCloud, tmp_path: Path, tls_refused: Any
) -> None:
    with pca.init_ca(tmp_path / "rogue-ca") as rogue:
        ident = pdevice.create_identity(rogue, "rogue-robot", tmp_path / "rogue")
    assert ident.key_path is not None
    assert tls_refused(local_cloud, ident.cert_path, ident.key_path) is not None
    good = local_cloud.identity("cert-good")
    assert tls_refused(local_cloud, good.cert, good.key) is None


def test_expired_certificate_is_refused(local_cloud: LocalCloud, tmp_path: Path, tls_refused: Any) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    with pca.load_ca(local_cloud.dir.ca_dir) as ca:
        ident = pdevice.create_identity(ca, "expired-robot", tmp_path / "expired", days=1, now=past)
    assert ident.not_after < dt.datetime.now(dt.UTC)
    assert ident.key_path is not None
    assert tls_refused(local_cloud, ident.cert_path, ident.key_path) is not None


BAD_UPDATES = [
    (b"{not json", 400, "Invalid JSON"),
    (b"\xff\xfe\xfd", 415, "Unsupported documented encoding; supported encoding is UTF-8"),
    (b'{"state": 7, "clientToken": "bad-1"}', 400, "State node must be an object"),
    (b'{"state": {"desired": [1]}, "clientToken": "bad-2"}', 400, "Desired node must be an object"),
    (b'{"state": {"delta": {}}, "clientToken": "bad-3"}', 400, "State contains an invalid node: 'delta'"),
    (b'{"state": {}, "version": "x", "clientToken": "bad-4"}', 400, "Invalid version"),
    (
        json.dumps({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}).encode(),
        400,
        "JSON contains too many levels of nesting; maximum is 6",
    ),
    (
        json.dumps({"state": {"reported": {"blob": "x" * 9000}}}).encode(),
        413,
        "The payload exceeds the maximum size allowed",
    ),
    (json.dumps({"state": {}, "clientToken": "t" * 65}).encode(), 400, "Invalid clientToken"),
]


def test_bad_input_gets_aws_rejections_and_the_service_stays_up(
    local_cloud: LocalCloud, paho_robot: Any
) -> None:
    robot: Any = paho_robot(local_cloud, "bad-input")
    robot.subscribe(
        "$aws/things/bad-input/shadow/update/rejected", "$aws/things/bad-input/shadow/update/accepted"
    )
    for payload, code, message in BAD_UPDATES:
        robot.publish("$aws/things/bad-input/shadow/update", payload)
        ((topic, doc),) = robot.collect(1)
        assert topic.endswith("/update/rejected"), payload
        assert (doc["code"], doc["message"]) == (code, message)
    robot.publish(
        "$aws/things/bad-input/shadow/update", {"state": {"reported": {"ok": True}}, "clientToken": "fine"}
    )
    ((topic, doc),) = robot.collect(1)
    assert topic.endswith("/update/accepted") and doc["clientToken"] == "fine"


def test_a_flooding_robot_gets_429_and_others_are_unaffected(
    local_cloud: LocalCloud, paho_robot: Any
) -> None:
    flooder: Any = paho_robot(local_cloud, "flooder")
    calm: Any = paho_robot(local_cloud, "calm-robot")
    flooder.subscribe("$aws/things/flooder/shadow/get/+")
    calm.subscribe("$aws/things/calm-robot/shadow/update/accepted")
    for i in range(120):
        flooder.publish("$aws/things/flooder/shadow/get", {"clientToken": f"f{i}"}, qos=0)
    calm.publish(
        "$aws/things/calm-robot/shadow/update", {"state": {"reported": {"ok": 1}}, "clientToken": "calm"}
    )
    ((_t, doc),) = calm.collect(1, timeout=5)
    assert doc["clientToken"] == "calm"
    answers = flooder.collect(120, timeout=5)
    codes = [d["code"] for _t, d in answers]
    assert len(answers) == 120
    assert codes.count(429) >= 80 and codes.count(404) >= 20
    assert {d["message"] for _t, d in answers if d["code"] == 429} == {"Too Many Requests"}


def _raw_answer(robot: Any, topic_prefix: str) -> tuple[str, bytes]:
    """The next message the service published under ``topic_prefix`` (the robot's own requests skipped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            topic, payload, _retain = robot.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if topic.startswith(topic_prefix) and topic.rsplit("/", 1)[1] in ("accepted", "rejected"):
            return topic, payload
    raise AssertionError(f"no answer under {topic_prefix}")


def test_aws_wire_bytes_for_404_409_and_state_null(local_cloud: LocalCloud, paho_robot: Any) -> None:
    """Byte for byte what AWS sends: a 404 for a get without token (no token, no timestamp), a 409 for a
    stale version (optimistic locking, developerguide/device-shadow-data-flow.html) and the answer to
    ``{"state": null}`` (state, metadata, version, timestamp)."""
    thing = "wire-robot"
    prefix = f"$aws/things/{thing}/shadow"
    robot: Any = paho_robot(local_cloud, thing)
    robot.subscribe(f"{prefix}/get/+", f"{prefix}/update/accepted", f"{prefix}/update/rejected")

    robot.publish(f"{prefix}/get", b"")
    assert _raw_answer(robot, f"{prefix}/get") == (
        f"{prefix}/get/rejected",
        b'{"code":404,"message":"No shadow exists with name: \'wire-robot\'"}',
    )

    robot.publish(f"{prefix}/update", {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}})
    _topic, first = _raw_answer(robot, f"{prefix}/update")
    version = json.loads(first)["version"]
    token = "426bfd96-e720-46d3-95cd-014e3ef12bb6"
    stale = {"state": {"desired": {"colors": ["BLUE"]}}, "version": version - 1, "clientToken": token}
    robot.publish(f"{prefix}/update", stale)
    assert _raw_answer(robot, f"{prefix}/update") == (
        f"{prefix}/update/rejected",
        b'{"code":409,"message":"Version conflict","clientToken":"426bfd96-e720-46d3-95cd-014e3ef12bb6"}',
    )
    robot.publish(f"{prefix}/update", {**stale, "version": version})
    topic, _payload = _raw_answer(robot, f"{prefix}/update")
    assert topic == f"{prefix}/update/accepted"
    robot.publish(f"{prefix}/get", b"")
    _topic, got = _raw_answer(robot, f"{prefix}/get")
    assert json.loads(got)["state"] == {"desired": {"colors": ["BLUE"]}, "delta": {"colors": ["BLUE"]}}
    assert json.loads(got)["version"] == version + 1

    robot.publish(f"{prefix}/update", {"state": None})
    topic, payload = _raw_answer(robot, f"{prefix}/update")
    assert topic == f"{prefix}/update/accepted"
    wire = re.fullmatch(
        rb'\{"state":null,"metadata":\{"timestamp":(\d+)\},"version":(\d+),"timestamp":\1\}', payload
    )
    assert wire is not None, payload
    assert int(wire.group(2)) == version + 2


def _persistent_311(cloud: LocalCloud, identity: str, client_id: str) -> tuple[Any, list[str]]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    ident = cloud.identity(identity)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
    )
    client.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
    received: list[str] = []
    client.on_message = lambda _c, _u, m: received.append(m.topic)
    client.connect(cloud.endpoint, cloud.port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.is_connected()
    return client, received


def test_taking_over_another_robots_client_id_reveals_nothing_queued(local_cloud: LocalCloud) -> None:
    import threading

    victim, _ = _persistent_311(local_cloud, "takeover-victim", "takeover-victim")
    subscribed = threading.Event()
    victim.on_subscribe = lambda *_a: subscribed.set()
    victim.subscribe("$aws/things/takeover-victim/shadow/update/delta", qos=1)
    assert subscribed.wait(10)
    victim.disconnect()
    victim.loop_stop()
    accepted, _doc = local_cloud.update_shadow("takeover-victim", {"state": {"desired": {"secret": 42}}})
    assert accepted  # a delta is now queued in the victim's persistent session
    thief, received = _persistent_311(local_cloud, "takeover-thief", "takeover-victim")
    try:
        local_cloud.update_shadow("takeover-victim", {"state": {"desired": {"secret": 43}}})
        time.sleep(1.0)
        assert received == [], "a robot read another robot's queued or live shadow messages"
    finally:
        thief.disconnect()
        thief.loop_stop()
