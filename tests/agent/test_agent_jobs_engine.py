"""The jobs feature against the local cloud's real Jobs engine (``localcloud.jobs.engine``, sans-I/O), in
memory: each publish of the feature is handled by the engine and its answers and notifications come back
as the broker would deliver them. The transport can lose messages, so the exactly-once rules are shown
deterministically: lost answers, duplicate notifications, a restart in the middle of a step (a new feature
on the same database), a resumable step, a job the cloud cancels, a document the robot rejects, gates."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import config as cfg
from agent.features import FeatureRegistry
from agent.features.jobs import Jobs
from agent.jobs import protocol
from agent.jobs.journal import Journal
from agent.jobs.protocol import TERMINAL
from agent.metrics import Metrics
from agent.model import P_CAPACITY, P_CHARGE, P_CHARGING_STATE, P_SOURCES, MissionTracker, Snapshot
from agent.parts import AgentLog
from localcloud.jobs.engine import JobsEngine

THING = "robot-1"


class Cloud:
    """The real engine behind a lossy in-memory broker: ``drop`` decides, per (topic, payload), whether a
    message to the robot is lost."""

    def __init__(self) -> None:
        self.engine = JobsEngine()
        self.engine.ensure_thing(THING, time.time())
        self.robot: Callable[[str, bytes], None] | None = None
        self.drop: Callable[[str, dict[str, Any]], bool] = lambda topic, body: False
        self.sent: list[tuple[str, dict[str, Any]]] = []  # what the robot published
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self.throttle = 0  # how many of the next updates are refused with RequestThrottled
        # an update refused with InvalidRequest when this says so (given the request's body)
        self.refuse: Callable[[dict[str, Any]], bool] = lambda body: False

    def deliver(self, outs: list[tuple[str, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        for topic, payload in outs:
            if not topic.startswith(f"$aws/things/{THING}/jobs/"):
                continue
            body = json.loads(payload) if payload else {}
            if self.drop(topic, body):
                continue
            self.delivered.append((topic, body))
            if self.robot is not None:
                loop.call_soon(self.robot, topic, payload)

    def publish(self, topic: str, payload: bytes) -> None:
        body = json.loads(payload)
        self.sent.append((topic, body))
        if self.throttle and topic.endswith("/update"):
            self.throttle -= 1  # AWS's answer to a device over its rate; the request is not applied
            refusal = {
                "code": "RequestThrottled",
                "message": "Rate exceeded",
                "clientToken": body["clientToken"],
            }
            self.deliver([(topic + "/rejected", json.dumps(refusal).encode())])
            return
        if topic.endswith("/update") and self.refuse(body):
            refusal = {
                "code": "InvalidRequest",
                "message": "bad statusDetails",
                "clientToken": body["clientToken"],
            }
            self.deliver([(topic + "/rejected", json.dumps(refusal).encode())])
            return
        job_id = topic.split("/")[-2]
        if topic.endswith("/get") and job_id not in ("jobs", "$next"):
            # AWS: describing an execution in a terminal state is refused (with its state)
            try:
                execution = self.engine.call(
                    "DescribeJobExecution", {"jobId": job_id, "thingName": THING}, time.time()
                )[0]["execution"]
            except Exception:
                execution = {"status": "(none)"}  # the engine answers it
            if execution["status"] in TERMINAL:
                refusal = {
                    "code": "TerminalStateReached",
                    "message": "terminal",
                    "clientToken": body["clientToken"],
                    "executionState": {
                        "status": execution["status"],
                        "statusDetails": execution.get("statusDetails", {}).get("detailsMap", {}),
                        "versionNumber": execution["versionNumber"],
                    },
                }
                self.deliver([(topic + "/rejected", json.dumps(refusal).encode())])
                return
        self.deliver(self.engine.handle(topic, payload, time.time()))

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        result, outs = self.engine.call(op, params, time.time())
        self.deliver(outs)
        return result

    def create_job(self, job_id: str, document: Any) -> None:
        self.call(
            "CreateJob",
            jobId=job_id,
            targets=[self.engine.thing_arn(THING)],
            document=json.dumps(document),
            targetSelection="SNAPSHOT",
        )

    def execution(self, job_id: str) -> dict[str, Any]:
        return dict(self.call("DescribeJobExecution", jobId=job_id, thingName=THING)["execution"])

    def status(self, job_id: str) -> str:
        return str(self.execution(job_id)["status"])

    def updates(self, job_id: str) -> list[dict[str, Any]]:
        return [b for t, b in self.sent if t == f"$aws/things/{THING}/jobs/{job_id}/update"]


class FakeMqtt:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.connected = True

    def _done(self) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]:
        if self.connected:
            self.cloud.publish(topic, payload)
        return self._done()

    def subscribe(self, topics: Any, qos: int) -> list[asyncio.Future[object]]:
        return [self._done()]

    def pending_operations(self) -> int:
        return 0


def agent_config(tmp: Path, **jobs: Any) -> cfg.AgentConfig:
    return cfg.AgentConfig(
        thing_name=THING,
        endpoint="127.0.0.1",
        port=8883,
        root_ca="/x",
        cert="/x",
        key="/x",
        pkcs11=None,
        serial_port="/dev/null",
        state_dir=str(tmp),
        jobs=replace(cfg.JobsConfig(allow_commands=True), request_timeout_s=0.5, **jobs),
    )


class Robot:
    """One agent's jobs feature and the parts it is given (stand-ins where the robot is not involved)."""

    def __init__(self, cloud: Cloud, db: sqlite3.Connection, config: cfg.AgentConfig) -> None:
        self.loop = asyncio.get_running_loop()
        self.mqtt = FakeMqtt(cloud)
        self.features = FeatureRegistry(AgentLog(THING))
        self.side = SimpleNamespace(snapshot=None, tracker=MissionTracker(), link=None, worker=None)
        self.applied: dict[str, Any] = {}
        settings = SimpleNamespace(apply_agent_setting=self.applied.__setitem__)
        self.metrics = Metrics()
        self.jobs = Jobs(
            config=config,
            features=self.features,
            robot=self.side,  # type: ignore[arg-type]
            mqtt=self.mqtt,  # type: ignore[arg-type]
            db=db,
            sync=SimpleNamespace(setting_result=lambda *a: None),  # type: ignore[arg-type]
            pump=SimpleNamespace(publish_done=lambda f: None, pump=lambda: None),  # type: ignore[arg-type]
            events=SimpleNamespace(emit=lambda e: None),  # type: ignore[arg-type]
            settings=settings,  # type: ignore[arg-type]
            status_sections={},
            status_doc=dict,
            stopping=asyncio.Event(),
            own_process=False,
            metrics=self.metrics,
            log=AgentLog(THING),
            loop=self.loop,
        )
        cloud.robot = self.on_message

    def on_message(self, topic: str, payload: bytes) -> None:
        handler = self.features.route(topic)
        if handler is not None:
            handler(topic, payload)

    async def start(self) -> Robot:
        self.jobs.start()
        self.features.connected(False)
        await until(lambda: self.jobs.subscribed, "subscribed")
        return self

    async def stop(self) -> None:
        await self.jobs.stop()


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "agent.db", isolation_level=None)
    yield conn
    conn.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


ECHO = {
    "version": "1.0",
    "includeStdOut": "true",
    "steps": [{"action": {"name": "hello", "type": "runCommand", "input": {"command": "echo,Hello World!"}}}],
}


def test_device_client_command_succeeds_with_its_output(tmp_path: Path, db: sqlite3.Connection) -> None:
    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("echo-1", ECHO)
        await until(lambda: cloud.status("echo-1") == "SUCCEEDED", "echo-1 SUCCEEDED")
        details = cloud.execution("echo-1")["statusDetails"]["detailsMap"]
        assert details == {"stdout": "Hello World!\\n"}  # AWS takes no control characters
        updates = cloud.updates("echo-1")
        assert [u["status"] for u in updates] == ["IN_PROGRESS", "SUCCEEDED"]
        assert all(isinstance(u["expectedVersion"], int) for u in updates)
        await until(lambda: robot.jobs.current is None, "idle again")
        assert robot.metrics.counters["jobs_succeeded"] == 1
        assert robot.jobs.status()["last"]["status"] == "SUCCEEDED"
        await robot.stop()

    run(main())


def test_failed_command_reports_reason_and_output(tmp_path: Path, db: sqlite3.Connection) -> None:
    script = "import sys; print('partial'); sys.stderr.write('boom'); sys.exit(2)"
    doc = {
        "version": "1.0",
        "includeStdOut": True,
        "steps": [
            {
                "action": {
                    "name": "bad",
                    "type": "runCommand",
                    "input": {"command": f"{sys.executable},-c,{script}"},
                }
            }
        ],
        "finalStep": {"action": {"name": "never", "type": "runCommand", "input": {"command": "echo,final"}}},
    }

    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("fail-1", doc)
        await until(lambda: cloud.status("fail-1") == "FAILED", "fail-1 FAILED")
        details = cloud.execution("fail-1")["statusDetails"]["detailsMap"]
        assert details == {
            "reason": "Exited with status: 2",
            "failed_step": "bad",
            "stdout": "partial\\n",
            "stderr": "boom",
        }
        assert robot.metrics.counters["jobs_failed"] == 1
        await robot.stop()

    run(main())


def test_invalid_and_not_allowed_documents_are_rejected(tmp_path: Path, db: sqlite3.Connection) -> None:
    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path, allow_commands=False)).start()
        cloud.create_job("bad-doc", {"operation": "mission", "action": "fly"})
        cloud.create_job("no-commands", ECHO)
        await until(lambda: cloud.status("no-commands") == "REJECTED", "both REJECTED")
        assert cloud.status("bad-doc") == "REJECTED"
        reason = cloud.execution("bad-doc")["statusDetails"]["detailsMap"]["reason"]
        assert reason.startswith("invalid job document: action: 'fly' is not one of")
        assert cloud.execution("no-commands")["statusDetails"]["detailsMap"]["reason"] == (
            "this robot does not run commands or handlers from jobs (its [jobs] allow_commands is false)"
        )
        assert robot.metrics.counters["jobs_rejected"] == 2
        await robot.stop()

    run(main())


def test_lost_answers_and_duplicate_notifications_run_once(tmp_path: Path, db: sqlite3.Connection) -> None:
    marker = tmp_path / "runs.txt"
    doc = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "count",
                    "type": "runCommand",
                    "input": {"command": f"sh,-c,echo run >> {marker}"},
                }
            }
        ],
    }

    async def main() -> None:
        cloud = Cloud()
        lost: list[str] = []

        def drop(topic: str, body: dict[str, Any]) -> bool:
            # every update's first answer is lost; the robot must resend and settle it by describing
            if topic.endswith("/update/accepted") and body.get("clientToken") not in lost:
                lost.append(str(body.get("clientToken")))
                return len(lost) <= 2
            return False

        cloud.drop = drop
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("once-1", doc)
        # the same notification again, twice: nothing changes
        notify = cloud.delivered[-1]
        for _ in range(2):
            cloud.deliver([(notify[0], json.dumps(notify[1]).encode())])
        await until(lambda: cloud.status("once-1") == "SUCCEEDED", "once-1 SUCCEEDED")
        await until(lambda: robot.jobs.current is None, "idle")
        assert marker.read_text() == "run\n"
        counters = robot.metrics.counters
        assert counters["jobs_request_timeouts"] >= 1 and counters["jobs_version_mismatch"] >= 1
        assert counters["jobs_succeeded"] == 1
        await robot.stop()

    run(main())


def test_restart_mid_step_fails_it_and_never_reruns(tmp_path: Path, db: sqlite3.Connection) -> None:
    marker = tmp_path / "runs.txt"
    doc = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "long",
                    "type": "runCommand",
                    "input": {"command": f"sh,-c,echo run >> {marker}; sleep 60"},
                }
            }
        ],
    }

    async def main() -> None:
        cloud = Cloud()
        first = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("long-1", doc)
        cloud.create_job("after-1", ECHO)
        await until(lambda: marker.exists() and marker.read_text(), "the step started")
        await first.stop()  # as a crash: the step is cut short, nothing more reaches the cloud
        second = await Robot(cloud, db, agent_config(tmp_path)).start()
        await until(lambda: cloud.status("long-1") == "FAILED", "long-1 FAILED")
        assert cloud.execution("long-1")["statusDetails"]["detailsMap"]["reason"] == (
            "interrupted by restart: step 1 (long) was running and is not re-run"
        )
        await until(lambda: cloud.status("after-1") == "SUCCEEDED", "the next job ran")
        assert marker.read_text() == "run\n"
        assert second.metrics.counters["jobs_interrupted"] == 1
        await second.stop()

    run(main())


def test_finished_but_unreported_result_is_resent_not_rerun(tmp_path: Path, db: sqlite3.Connection) -> None:
    marker = tmp_path / "runs.txt"
    doc = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "c",
                    "type": "runCommand",
                    "input": {"command": f"sh,-c,echo run >> {marker}"},
                }
            }
        ],
    }

    async def main() -> None:
        cloud = Cloud()
        first = await Robot(cloud, db, agent_config(tmp_path)).start()
        # the final update never reaches the cloud (the robot loses power right after deciding it)
        cloud.drop = lambda topic, body: False
        first.mqtt.publish = _refuse_final(first.mqtt.publish)  # type: ignore[method-assign]
        cloud.create_job("resend-1", doc)
        await until(lambda: first.jobs.journal.last() is not None, "the outcome journalled")
        await first.stop()
        assert cloud.status("resend-1") == "IN_PROGRESS"
        second = await Robot(cloud, db, agent_config(tmp_path)).start()
        await until(lambda: cloud.status("resend-1") == "SUCCEEDED", "resend-1 SUCCEEDED")
        assert marker.read_text() == "run\n"
        assert second.metrics.counters["jobs_results_resent"] == 1
        assert second.metrics.counters.get("jobs_succeeded", 0) == 0  # counted once, by the first run
        await second.stop()

    run(main())


def _refuse_final(publish: Callable[..., asyncio.Future[object]]) -> Callable[..., asyncio.Future[object]]:
    def wrapped(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> asyncio.Future[object]:
        if topic.endswith("/update") and json.loads(payload).get("status") == "SUCCEEDED":
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut
        return publish(topic, payload, qos, retain)

    return wrapped


def test_resumable_step_succeeds_after_restart(tmp_path: Path, db: sqlite3.Connection) -> None:
    """restart-agent: the journal says its step ran when the agent went down; the next agent reports it."""

    async def main() -> None:
        cloud = Cloud()
        cloud.create_job("restart-1", {"operation": "restart-agent"})
        # the agent that took it: journalled and running when it exec'd itself
        token = "t-1"
        cloud.publish(
            f"$aws/things/{THING}/jobs/start-next",
            json.dumps({"clientToken": token}).encode(),
        )
        from agent.jobs.journal import Journal

        journal = Journal(db)
        journal.accept(
            ("restart-1", 1),
            {"operation": "restart-agent"},
            [{"name": "restart-agent", "resumable": True}],
            2,
        )
        journal.step_started(("restart-1", 1), 0, {})
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        await until(lambda: cloud.status("restart-1") == "SUCCEEDED", "restart-1 SUCCEEDED")
        details = cloud.execution("restart-1")["statusDetails"]["detailsMap"]
        assert details["resumed"] == "agent restarted"
        assert robot.metrics.counters["jobs_resumed"] == 1
        await robot.stop()

    run(main())


def test_job_canceled_by_the_cloud_stops_and_the_next_runs(tmp_path: Path, db: sqlite3.Connection) -> None:
    doc = {
        "version": "1.0",
        "steps": [{"action": {"name": "long", "type": "runCommand", "input": {"command": "sleep,60"}}}],
    }

    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("cancel-1", doc)
        await until(
            lambda: robot.jobs.current is not None and robot.jobs.current.phase == "running", "running"
        )
        cloud.call("CancelJob", jobId="cancel-1", force=True)
        cloud.create_job("next-1", ECHO)
        await until(lambda: cloud.status("next-1") == "SUCCEEDED", "next-1 SUCCEEDED")
        assert cloud.status("cancel-1") == "CANCELED"
        assert robot.metrics.counters["jobs_ended_by_cloud"] == 1
        await robot.stop()

    run(main())


def test_gates_wait_and_keep_the_step_timer_alive(tmp_path: Path, db: sqlite3.Connection) -> None:
    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job(
            "gated-1",
            {
                "operation": "set-settings",
                "settings": {"metrics_s": 30},
                "requires": {"docked": True, "battery_min_pct": 50},
            },
        )
        await until(
            lambda: robot.jobs.current is not None and robot.jobs.current.phase == "waiting", "waiting"
        )
        waiting = cloud.updates("gated-1")[0]
        assert waiting["statusDetails"] == {"phase": "waiting", "waiting_for": "the serial link to the robot"}
        assert waiting["stepTimeoutInMinutes"] == 10
        sensors = {P_SOURCES: 0, P_CHARGE: 1000, P_CAPACITY: 2000, P_CHARGING_STATE: 0}
        robot.side.snapshot = Snapshot(sensors=sensors)
        await until(lambda: len(cloud.updates("gated-1")) >= 2, "a new waiting reason")
        assert cloud.updates("gated-1")[1]["statusDetails"]["waiting_for"] == "docked"  # 50% is enough
        assert robot.applied == {}  # nothing ran while it waited
        robot.side.snapshot = Snapshot(sensors={**sensors, P_SOURCES: 2})
        await until(lambda: cloud.status("gated-1") == "SUCCEEDED", "gated-1 SUCCEEDED")
        running = [u for u in cloud.updates("gated-1") if u["statusDetails"].get("phase") == "running"]
        assert running[0]["stepTimeoutInMinutes"] == -1  # the waiting step timer is cleared once it runs
        assert robot.applied == {"metrics_s": 30}
        assert cloud.execution("gated-1")["statusDetails"]["detailsMap"] == {
            "operation": "set-settings",
            "applied": "metrics_s",
        }
        await robot.stop()

    run(main())


def test_throttled_updates_are_retried(tmp_path: Path, db: sqlite3.Connection) -> None:
    async def main() -> None:
        cloud = Cloud()
        cloud.throttle = 2
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("throttled-1", ECHO)
        await until(lambda: cloud.status("throttled-1") == "SUCCEEDED", "throttled-1 SUCCEEDED")
        assert robot.metrics.counters["jobs_request_refused_RequestThrottled"] == 2
        assert robot.metrics.counters["jobs_request_retries"] == 2
        assert [u["status"] for u in cloud.updates("throttled-1")] == [
            "IN_PROGRESS",
            "IN_PROGRESS",
            "IN_PROGRESS",
            "SUCCEEDED",
        ]
        await robot.stop()

    run(main())


def _started_elsewhere(cloud: Cloud, db: sqlite3.Connection, job_id: str, doc: Any) -> None:
    """An agent took ``job_id`` and journalled its step as running, then went down."""
    cloud.publish(f"$aws/things/{THING}/jobs/start-next", json.dumps({"clientToken": "t-0"}).encode())
    journal = Journal(db)
    journal.accept((job_id, 1), doc, [{"name": "long", "resumable": False}], 2)
    journal.step_started((job_id, 1), 0, {})


def test_journalled_job_the_cloud_ended_while_down_is_closed(tmp_path: Path, db: sqlite3.Connection) -> None:
    """The describe of a job canceled while the agent was down is refused (TerminalStateReached): the
    journalled row is closed with the state the refusal carries, and the robot takes the next job."""
    doc = {
        "version": "1.0",
        "steps": [{"action": {"name": "long", "type": "runCommand", "input": {"command": "sleep,60"}}}],
    }

    async def main() -> None:
        cloud = Cloud()
        cloud.create_job("old-1", doc)
        _started_elsewhere(cloud, db, "old-1", doc)
        cloud.call("CancelJob", jobId="old-1", force=True)
        cloud.create_job("next-1", ECHO)
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        await until(lambda: cloud.status("next-1") == "SUCCEEDED", "next-1 SUCCEEDED")
        old = robot.jobs.journal.get(("old-1", 1))
        assert old is not None and old.reported and old.final_status == "CANCELED"
        assert robot.metrics.counters["jobs_request_refused_TerminalStateReached"] >= 1
        assert robot.jobs.recovering is None
        await robot.stop()

    run(main())


def test_job_force_canceled_while_its_notifications_are_lost(tmp_path: Path, db: sqlite3.Connection) -> None:
    """No notification of the cancel arrives: the final update is refused (InvalidStateTransition, with
    the execution's state), the job is taken as ended by the cloud and the next one runs."""
    flag = tmp_path / "go"
    doc = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "wait",
                    "type": "runCommand",
                    "input": {"command": f"sh,-c,while [ ! -e {flag} ]; do sleep 0.05; done"},
                }
            }
        ],
    }

    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        cloud.create_job("cancel-2", doc)
        await until(
            lambda: robot.jobs.current is not None and robot.jobs.current.phase == "running", "running"
        )
        cloud.drop = lambda topic, body: topic.endswith(("/notify", "/notify-next"))
        cloud.call("CancelJob", jobId="cancel-2", force=True)
        cloud.create_job("next-2", ECHO)
        flag.touch()  # the step ends; its SUCCEEDED is refused
        await until(lambda: robot.jobs.journal.get(("cancel-2", 1)) is not None, "journalled")
        await until(lambda: robot.jobs.current is None or robot.jobs.current.job_id != "cancel-2", "let go")
        entry = robot.jobs.journal.get(("cancel-2", 1))
        assert entry is not None and entry.reported
        assert robot.metrics.counters["jobs_ended_by_cloud"] == 1
        assert cloud.status("cancel-2") == "CANCELED"
        cloud.drop = lambda topic, body: False
        robot.jobs.send("start-next")  # the notification of next-2 was lost too
        await until(lambda: cloud.status("next-2") == "SUCCEEDED", "next-2 SUCCEEDED")
        await robot.stop()

    run(main())


def test_refused_final_update_is_never_taken_as_reported(
    tmp_path: Path, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A final update refused for its details (InvalidRequest), also with the reason alone, is sent again
    with backoff, then with a fixed ASCII reason; the journal never says reported before the cloud has it."""
    monkeypatch.setattr(protocol, "backoff_s", lambda attempt, cap=60.0: 0.05)
    fixed = protocol.refused_details("InvalidRequest")
    assert fixed == {"reason": "details refused by the cloud: InvalidRequest"}

    async def main() -> None:
        cloud = Cloud()
        robot = await Robot(cloud, db, agent_config(tmp_path)).start()
        reported_when_refused: list[bool] = []

        def refuse(body: dict[str, Any]) -> bool:
            if body["status"] == "IN_PROGRESS" or body.get("statusDetails") == fixed:
                return False
            entry = robot.jobs.journal.get(("refused-1", 1))
            reported_when_refused.append(entry is not None and entry.reported)
            return True

        cloud.refuse = refuse
        cloud.create_job("refused-1", ECHO)
        await until(lambda: cloud.status("refused-1") == "SUCCEEDED", "refused-1 SUCCEEDED")
        assert cloud.execution("refused-1")["statusDetails"]["detailsMap"] == fixed
        finals = [u["statusDetails"] for u in cloud.updates("refused-1") if u["status"] == "SUCCEEDED"]
        reason_only = {"reason": "update refused: InvalidRequest bad statusDetails"}
        assert finals == [{"stdout": "Hello World!\\n"}, reason_only, reason_only, reason_only, fixed]
        assert reported_when_refused == [False] * 4
        await until(lambda: robot.jobs.current is None, "idle")
        assert robot.jobs.journal.get(("refused-1", 1)).reported  # type: ignore[union-attr]
        assert robot.metrics.counters["jobs_succeeded"] == 1
        await robot.stop()

    run(main())
