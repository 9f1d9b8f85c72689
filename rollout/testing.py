"""Test peers for rollouts (any package's tests): a published release (a stand-in bundle and its
``release.json`` in the artifact store, as ``roomba-fleet release publish`` leaves them) and robots played
by test code over MQTT with their own certificates, answering update jobs as the agent does (phases in
``statusDetails``, ``reported.versions``, presence) with a chosen behaviour. paho-mqtt (a development
dependency) is imported only when a robot is made."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from localcloud.apiclient import ApiClient
from localcloud.artifacts import ArtifactStore
from localcloud.awsapi.errors import ApiError
from localcloud.testing import LocalCloud, PahoRobot
from rollout.controller import RELEASE_BUCKET, release_key
from shadow.topics import presence_topic, shadow_topic


def publish_release(cloud: LocalCloud, version: str, tmp: Path) -> dict[str, Any]:
    """A stand-in bundle and its release record, where the rollout reads them."""
    store = ArtifactStore(cloud.dir.artifacts_dir)
    bundle = tmp / f"roomba-agent-{version}.bundle"
    bundle.write_bytes(f"bundle {version} {uuid.uuid4().hex}".encode() * 64)
    key = f"roomba-agent/{version}/{bundle.name}"
    url = store.put(bundle, key, bucket=RELEASE_BUCKET)
    record = {
        "version": version,
        "sha256": hashlib.sha256(bundle.read_bytes()).hexdigest(),
        "size": bundle.stat().st_size,
        "s3_url": url,
        "file": bundle.name,
        "manifest": {"version": version},
    }
    doc = tmp / f"release-{version}.json"
    doc.write_text(json.dumps(record))
    store.put(doc, release_key(version), bucket=RELEASE_BUCKET)
    return record


def make_things(cloud: LocalCloud, *names: str) -> None:
    with ApiClient(cloud.dir) as client:
        for name in names:
            cloud.add_robot(name)
            try:
                client.call("CreateThing", {"thingName": name})
            except ApiError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise


class UpdateRobot:
    """One robot. ``behaviour`` for an update to a new version: ``good`` (trial, commit, SUCCEEDED),
    ``selftest`` (trial, then back on the old version: FAILED with the reason), ``reject`` (REJECTED,
    untouched), ``crash`` (commits, SUCCEEDED, then keeps reconnecting: unhealthy), ``slow`` (stays in
    its trial until :attr:`release_slow` is set). A downgrade job (a rollback) always succeeds."""

    def __init__(self, cloud: LocalCloud, thing: str, version: str, behaviour: str = "good") -> None:
        self.thing = thing
        self.version = version
        self.previous: str | None = None
        self.behaviour = behaviour
        self.update: dict[str, Any] | None = None
        self.trial: str | None = None
        self.job: dict[str, Any] | None = None
        self.step = 0
        self.release_slow = False
        self.jobs_seen: list[str] = []
        self.mqtt = PahoRobot(cloud, thing)
        self.mqtt.subscribe(f"$aws/things/{thing}/jobs/#")
        self.online()
        self.report()

    def online(self) -> None:
        body = {"state": "online", "agent_version": self.version, "at": time.time() + self.step * 1e-3}
        self.mqtt.publish(presence_topic(self.thing), body, retain=True)

    def report(self) -> None:
        versions = {
            "agent": self.version,
            "previous": self.previous,
            "trial": self.trial,
            "update": self.update,
            "contract": 2,
        }
        reported = {"versions": versions, "battery": {"percent": 90, "charging": "not charging"}}
        self.mqtt.publish(shadow_topic(self.thing, "update"), {"state": {"reported": reported}})

    def request(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        token = uuid.uuid4().hex
        self.mqtt.publish(f"$aws/things/{self.thing}/jobs/{what}", {**body, "clientToken": token})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for topic, doc in self.mqtt.collect(1, timeout=1):
                answer = topic.endswith(("/accepted", "/rejected"))
                if answer and isinstance(doc, dict) and doc.get("clientToken") == token:
                    assert topic.endswith("/accepted"), (topic, doc)
                    return doc
        raise AssertionError(f"{self.thing}: no answer to {what}")

    def _status(self, status: str, **details: str) -> None:
        assert self.job is not None
        self.request(
            f"{self.job['jobId']}/update",
            {"status": status, "statusDetails": details, "expectedVersion": self.job["versionNumber"]},
        )
        self.job["versionNumber"] += 1
        if status != "IN_PROGRESS":
            self.job = None
            self.step = 0

    def tick(self) -> None:
        """One move of the robot: take the next job, or go on with the one it runs."""
        if self.job is None:
            execution = self.request("start-next", {}).get("execution")
            if not execution:
                if self.behaviour == "crash" and self.version != self.previous and self.update:
                    self.step += 1
                    self.online()  # a crash restart: a new connection on the same version
                return
            self.job = dict(execution)
            self.jobs_seen.append(str(execution["jobId"]))
            self.step = 0
        doc = self.job["jobDocument"]
        to = doc["release"]["version"]
        assert doc["operation"] == "update" and doc["release"]["url"].startswith("http://127.0.0.1:")
        downgrade = bool(doc.get("allow_downgrade")) and to != self.version
        behaviour = "good" if downgrade else self.behaviour
        self.step += 1
        if behaviour == "reject":
            self._status("REJECTED", phase="preflight", reason="bad signature")
            return
        if self.step == 1:
            self._status("IN_PROGRESS", phase="installed", to=to, **{"from": self.version})
            return
        if self.step == 2:
            self.previous, self.version, self.trial = self.version, to, to
            self.online()
            self.report()
            self._status("IN_PROGRESS", phase="self_test", to=to)
            return
        if behaviour == "slow" and not self.release_slow:
            return
        if behaviour == "selftest":
            back = self.previous or self.version
            self.update = {
                "result": "rolled_back",
                "to": to,
                "from": back,
                "reason": "self-test: no OI stream",
            }
            self.previous, self.version, self.trial = to, back, None
            self.online()
            self.report()
            self._status("FAILED", phase="rolled_back", reason="self-test: no OI stream")
            return
        self.update = {"result": "committed", "to": to, "from": self.previous, "reason": None}
        self.trial = None
        self.report()
        self._status("SUCCEEDED", phase="committed", to=to)

    def close(self) -> None:
        self.mqtt.close()
