"""The local cloud's parts without a running cloud: broker configuration and ACL, the MQTT codec, the shadow
store and the service's disk failures, the supervisor's restart backoff, cloud directory settings, and the
rule that ``localcloud`` never imports the CLI."""

from __future__ import annotations

import ast
import fnmatch
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from base.backoff import Backoff
from localcloud import broker, mqtt_lite
from localcloud.shadow_store import ShadowStore
from localcloud.supervisor import (
    BACKOFF_CAP_S,
    BACKOFF_START_S,
    STABLE_AFTER_S,
    Child,
    Supervisor,
    next_backoff,
)
from shadow.engine import ShadowEngine, StoredShadow

T0 = 1_700_000_000.0
FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def _answers(engine: ShadowEngine, topic: str, payload: Any, now: float = T0) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {t: json.loads(p) for t, p in engine.handle(topic, data, now)}


# --- broker configuration ------------------------------------------------------------------------------------


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


def test_broker_files_are_byte_identical_to_the_golden_ones() -> None:
    """Topic builders must not change a byte of what Mosquitto reads (rule order matters to it)."""
    assert broker.acl_text() == (FIXTURES / "mosquitto.acl").read_text()
    conf = broker.broker_config(
        port=18883,
        ca_cert=Path("/c/ca.crt"),
        server_cert=Path("/c/s.crt"),
        server_key=Path("/c/s.key"),
        acl_file=Path("/c/acl"),
        log_file=Path("/c/log"),
        persistence_dir=Path("/c/data"),
        as_root=False,
    )
    assert conf == (FIXTURES / "mosquitto.conf").read_text()


def test_acl_grants_a_robot_exactly_the_aws_device_policy() -> None:
    """The broker ACL and ``roomba-provision aws policy`` must not drift apart (CONTRACTS.md "Topics")."""
    from provisioning.aws import THING, device_policy

    def as_filter(resource: str, prefix: str) -> str:
        topic = resource.split(f":{prefix}/", 1)[1].replace(THING, "%u")
        return topic[:-2] + "/#" if topic.endswith("/*") else topic.replace("*", "+")

    # The policy grants a robot the reserved topics of its own thing as one resource, ``$aws/*things/<thing>/*``
    # (three would not fit AWS's 2048 characters in aws-us-gov); the ACL names the three trees AWS publishes
    # them under, each of which the policy's pattern covers.
    own_trees = {"$aws/things/%u/shadow/#", "$aws/things/%u/jobs/#", "$aws/commands/things/%u/#"}

    def expand(topic_filter: str) -> set[str]:
        if topic_filter != "$aws/*things/%u/#":
            return {topic_filter}
        assert all(fnmatch.fnmatchcase(tree.replace("#", "x"), "$aws/*things/%u/*") for tree in own_trees)
        return own_trees

    statements = {st["Action"]: st["Resource"] for st in device_policy()["Statement"]}
    publish = {as_filter(r, "topic") for r in statements["iot:Publish"]}
    receive = set().union(*(expand(as_filter(r, "topic")) for r in statements["iot:Receive"]))
    subscribe = set().union(*(expand(as_filter(r, "topicfilter")) for r in statements["iot:Subscribe"]))
    acl = broker.acl_text().splitlines()
    assert {line.split(" ", 2)[2] for line in acl if line.startswith("pattern write ")} == publish
    assert {line.split(" ", 2)[2] for line in acl if line.startswith("pattern read ")} == receive == subscribe
    assert not [line for line in acl if line.startswith("pattern readwrite")]


def test_missing_mosquitto_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMBA_MOSQUITTO", "/nonexistent/mosquitto")
    with pytest.raises(broker.BrokerMissing, match=r"apt-get install -y mosquitto.*make setup"):
        broker.find_mosquitto()


# --- the MQTT codec --------------------------------------------------------------------------------------------


def test_mqtt_lite_round_trip_in_pieces() -> None:
    """Packets fed one byte at a time come out whole and in order (the parser keeps partial input)."""
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


# --- the shadow store and the service's disk -------------------------------------------------------------------


def test_store_round_trip(tmp_path: Path) -> None:
    """Saved shadows (named, classic, deleted with their version kept) load back equal."""
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


@pytest.mark.parametrize(("durable", "level"), [(False, 1), (True, 2)])
def test_store_durability_setting(tmp_path: Path, durable: bool, level: int) -> None:
    """``durable`` means SQLite ``synchronous=FULL`` (an fsync per commit), else NORMAL; WAL either way."""
    store = ShadowStore(tmp_path / "d.sqlite3", durable=durable)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level  # 1 NORMAL, 2 FULL
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


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


# --- the supervisor ----------------------------------------------------------------------------------------------


def test_restart_backoff_is_the_capped_exponential_with_full_jitter_and_resets_when_stable() -> None:
    top = Backoff(base_s=BACKOFF_START_S, cap_s=BACKOFF_CAP_S, rand=lambda: 1.0)
    ceilings = [next_backoff(top, uptime=1.0) for _ in range(9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert next_backoff(top, uptime=STABLE_AFTER_S) == BACKOFF_START_S
    jittered = Backoff(base_s=BACKOFF_START_S, cap_s=BACKOFF_CAP_S, rand=lambda: 0.25)
    assert [next_backoff(jittered, uptime=1.0) for _ in range(3)] == [0.125, 0.25, 0.5]


def test_supervisor_restarts_a_crashed_child_after_the_backoff_it_prints(tmp_path: Path) -> None:
    said: list[str] = []
    child = Child(
        "crasher",
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        tmp_path / "crasher.log",
        ready=lambda _c: True,
        backoff=Backoff(base_s=BACKOFF_START_S, cap_s=BACKOFF_CAP_S, rand=lambda: 0.8),
    )
    sup = Supervisor([child], say=said.append)
    changes: list[int] = []
    sup.on_change = lambda: changes.append(child.restarts)
    assert sup.start_all() is None
    try:
        proc = child.proc
        assert proc is not None
        proc.wait(10)
        now = time.monotonic()
        sup.poll_once(now)
        assert said == [
            f"roomba-fleet: crasher exited with code 3; restarting in 0.4s (see {tmp_path / 'crasher.log'})"
        ]
        assert child.restart_at == now + 0.4 and child.restarts == 0
        sup.poll_once(now + 0.2)
        assert child.restarts == 0, "restarted before its backoff was over"
        sup.poll_once(now + 0.4)
        assert child.restarts == 1 and changes == [1]
        assert child.proc is not proc
    finally:
        sup.stop_all()


# --- cloud directories -------------------------------------------------------------------------------------------


def test_a_new_port_is_saved_and_robot_configs_follow(tmp_path: Path) -> None:
    from localcloud.cloud import add_robot, prepare
    from localcloud.layout import CloudDir

    cloud = CloudDir.at(tmp_path / "c")
    assert prepare(cloud, 18001).port == 18001
    config = add_robot(cloud, "porter", "socket://127.0.0.1:7555")
    assert "listener 18001 127.0.0.1" in cloud.broker_conf.read_text()
    assert prepare(cloud, 18002).port == 18002
    assert CloudDir.at(tmp_path / "c").load_settings().port == 18002
    data = tomllib.loads(config.read_text())
    assert (data["connection"]["port"], data["robot"]["serial_port"]) == (18002, "socket://127.0.0.1:7555")
    assert prepare(cloud).port == 18002


def test_the_default_directory_is_per_user_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative to the cwd, ``robot add`` run elsewhere made a second cloud with another CA."""
    from localcloud.layout import CloudDir, default_dir

    monkeypatch.delenv("ROOMBA_FLEET_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    per_user = tmp_path / "state" / "roomba-fleet" / "local-cloud"
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        assert default_dir() == per_user
        assert CloudDir.at(None).root == per_user
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # not absolute: ignored, as the XDG spec says
    assert default_dir() == tmp_path / "home" / ".local" / "state" / "roomba-fleet" / "local-cloud"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_dir() == tmp_path / "home" / ".local" / "state" / "roomba-fleet" / "local-cloud"
    monkeypatch.setenv("ROOMBA_FLEET_DIR", "mine")
    assert default_dir() == tmp_path / "b" / "mine"
    assert CloudDir(Path("rel")).root == tmp_path / "b" / "rel"


def test_every_path_in_a_robot_config_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``robot add --serial-port rel/path`` stored the relative path: an agent started elsewhere opened
    another file (or none)."""
    from localcloud.cloud import add_robot
    from localcloud.layout import CloudDir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ttys").mkdir()
    (tmp_path / "ttys" / "robot.link").symlink_to("/dev/null")
    cloud = CloudDir.at("rel-cloud")
    config = tomllib.loads(add_robot(cloud, "abs", "ttys/robot.tty").read_text())
    assert config["robot"]["serial_port"] == str(tmp_path / "ttys" / "robot.tty")
    paths = [config["state_dir"], *(config["connection"][k] for k in ("root_ca", "cert", "key"))]
    assert all(Path(p).is_absolute() and str(p).startswith(str(tmp_path / "rel-cloud")) for p in paths), paths
    # a pty's symlink is kept, not resolved (the simulator re-points it); pyserial URLs are not paths
    linked = tomllib.loads(add_robot(cloud, "linked", "ttys/robot.link").read_text())
    assert linked["robot"]["serial_port"] == str(tmp_path / "ttys" / "robot.link")
    monkeypatch.chdir("/")
    assert all(Path(p).exists() for p in paths)
    url = tomllib.loads(add_robot(cloud, "url", "socket://127.0.0.1:7001").read_text())
    assert url["robot"]["serial_port"] == "socket://127.0.0.1:7001"


def test_a_new_cloud_is_announced_and_an_existing_one_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from localcloud.cloud import add_robot, prepare
    from localcloud.layout import CloudDir

    first = CloudDir.at(tmp_path / "first")
    first.update_settings(port=18003)  # settings written ahead of `up` (as the tests do) are not a cloud
    add_robot(first, "newcomer")
    assert f"creating a new local cloud in {first.root}\n" in capsys.readouterr().err
    add_robot(first, "second")
    prepare(first)
    assert "creating a new local cloud" not in capsys.readouterr().err
    second = CloudDir.at(tmp_path / "second")
    prepare(second)
    assert f"creating a new local cloud in {second.root}\n" in capsys.readouterr().err


def test_the_mosquitto_sub_line_is_the_operator_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    from localcloud.layout import CloudDir
    from localcloud.up import connection_info, mosquitto_sub_argv

    monkeypatch.chdir(tmp_path)
    cloud = CloudDir.at("c")
    argv = mosquitto_sub_argv(cloud, "127.0.0.1", 18004)
    operator = tmp_path / "c" / "identities" / "local-cloud-operator"
    assert argv == [
        "mosquitto_sub",
        *("--cafile", str(tmp_path / "c" / "ca" / "ca.crt")),
        *("--cert", str(operator / "device.crt"), "--key", str(operator / "device.key")),
        *("-h", "127.0.0.1", "-p", "18004", "-V", "mqttv5", "-t", "$aws/things/+/shadow/#", "-v"),
    ]
    info = connection_info(cloud, "127.0.0.1", 18004)
    assert shlex.split(str(info["mosquitto_sub"])) == argv
    assert info["operator"] == {"cert": str(operator / "device.crt"), "key": str(operator / "device.key")}


# --- package boundaries ------------------------------------------------------------------------------------------


def test_localcloud_never_imports_the_fleet_cli() -> None:
    """``fleet`` (the CLI) builds on ``localcloud``; an import back would make a cycle."""
    offenders = []
    for path in sorted((ROOT / "localcloud").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "fleet"]
    assert not offenders
