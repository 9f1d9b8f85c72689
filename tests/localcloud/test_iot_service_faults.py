"""The iot service's loop and control plane when something fails, in process (no broker; a real cloud
directory, real engines, the real SQLite store): a commit the disk refuses answers no HTTP 200 and holds the
MQTT answers back until a commit succeeds; an engine whose tick raises is logged and paused, not fatal."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud import cloud as cloud_files
from localcloud import mqtt_lite as mq
from localcloud.awsapi.errors import ApiError
from localcloud.iot_service import TICK_PAUSE_S, IotService
from localcloud.jobs.store import IotStore
from localcloud.layout import CloudDir

THING = "fault-robot"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[IotService]:
    d = CloudDir.at(tmp_path / "cloud")
    settings = cloud_files.prepare(d)
    cloud_files.add_robot(d, THING)
    svc = IotService(d, settings)
    try:
        yield svc
    finally:
        svc.store.close()


def _refuse_commits(monkeypatch: pytest.MonkeyPatch, svc: IotService) -> None:
    def save(_dirty: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(svc.store, "save", save)


def _publish(topic: str, body: dict[str, Any], packet_id: int = 7) -> list[mq.Packet]:
    parser = mq.PacketParser()
    parser.feed(mq.publish(topic, json.dumps(body).encode(), 1, packet_id))
    return list(parser.packets())


def _stored_job_ids(svc: IotService) -> set[str]:
    other = IotStore(svc.cloud.iot_db)
    try:
        return {key for (kind, key) in other.load_all() if kind == "jobs/job"}
    finally:
        other.close()


def test_a_control_plane_change_the_disk_refuses_is_500_and_published_only_once_saved(
    service: IotService, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = service.invoke("iot", "DescribeThing", {"thingName": THING})["thingArn"]
    _refuse_commits(monkeypatch, service)
    with pytest.raises(ApiError) as info:
        service.invoke("iot", "CreateJob", {"jobId": "unsaved", "targets": [arn], "document": "{}"})
    assert (info.value.status, info.value.code) == (500, "InternalFailureException")
    assert "could not be saved" in info.value.message and "disk I/O error" in info.value.message
    assert _stored_job_ids(service) == set()
    assert service._turn([], bytearray()) == [], "notifications wait for a commit"
    monkeypatch.undo()
    ready = service._turn([], bytearray())
    assert f"$aws/things/{THING}/jobs/notify-next" in [t for t, _ in ready]
    assert "unsaved" in _stored_job_ids(service)


def test_an_mqtt_answer_waits_for_a_commit(service: IotService, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = service.invoke("iot", "DescribeThing", {"thingName": THING})["thingArn"]
    service.invoke("iot", "CreateJob", {"jobId": "j", "targets": [arn], "document": "{}"})
    service._turn([], bytearray())
    service.unsent.clear()
    _refuse_commits(monkeypatch, service)
    acks = bytearray()
    topic = f"$aws/things/{THING}/jobs/start-next"
    assert service._turn(_publish(topic, {"clientToken": "held"}), acks) == []
    assert acks == mq.puback(7)
    assert [t for t, _ in service.unsent] == [topic + "/accepted"], "kept, not dropped"
    assert service._turn([], bytearray()) == [], "still refused: still held"
    monkeypatch.undo()
    [(answer_topic, payload)] = service._turn([], bytearray())
    assert answer_topic == topic + "/accepted" and json.loads(payload)["clientToken"] == "held"
    reopened = IotStore(service.cloud.iot_db)
    try:
        [execution] = [doc for (kind, _), doc in reopened.load_all().items() if kind == "jobs/exec"]
    finally:
        reopened.close()
    assert execution["status"] == "IN_PROGRESS"


def test_an_engine_whose_tick_raises_is_logged_paused_and_the_service_goes_on(
    service: IotService, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[float] = []

    def broken_tick(now: float) -> list[tuple[str, bytes]]:
        calls.append(now)
        raise KeyError("a bug met on a persisted record")

    monkeypatch.setattr(service.jobs, "next_deadline", lambda: 0.0)  # always due
    monkeypatch.setattr(service.jobs, "tick", broken_tick)
    topic = f"$aws/things/{THING}/jobs/get"
    [(answer_topic, _)] = service._turn(_publish(topic, {"clientToken": "still-served"}), bytearray())
    assert answer_topic == topic + "/accepted"
    assert len(calls) == 1
    deadline = service.next_deadline()
    assert deadline is not None and deadline >= calls[0] + TICK_PAUSE_S - 1e-6, (
        "no hot loop on a due deadline"
    )
    service._turn([], bytearray())
    assert len(calls) == 1, "not ticked again during the pause"
    service._tick_paused["jobs"] = 0.0  # the pause is over
    service._turn([], bytearray())
    assert len(calls) == 2
    logged = capsys.readouterr()
    assert "iot.engine.tick_failed" in logged.out + logged.err
