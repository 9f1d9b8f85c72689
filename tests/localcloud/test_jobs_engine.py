"""The pure AWS IoT Jobs engine (``localcloud.jobs.engine``): the device MQTT API, notifications, the control
plane, and the enforced rules (rollout rates, abort, timers, retries, scheduling), with AWS's payloads as
exact vectors where the references give them (``shared/reference/aws/jobs_ota.md`` §1, §2, §8;
``jobs_and_provisioning.md`` §(a)). Time is a number passed in; nothing here sleeps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from localcloud.awsapi.errors import ApiError
from localcloud.jobs.engine import JobsEngine

T0 = datetime(2027, 1, 15, 12, 0, tzinfo=UTC).timestamp()
TS = int(T0)
ACCOUNT = "000000000000"
REGION = "us-east-1"


def at(hh: int, mm: int, ss: int = 0, *, day: int = 15) -> float:
    return datetime(2027, 1, day, hh, mm, ss, tzinfo=UTC).timestamp()


def thing_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{name}"


def group_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{name}"


class Harness:
    def __init__(self, engine: JobsEngine | None = None, now: float = T0, **kwargs: Any) -> None:
        self.engine = engine if engine is not None else JobsEngine(**kwargs)
        self.now = now
        self.published: list[tuple[str, Any]] = []
        self.records: dict[tuple[str, str], dict[str, Any]] = {}

    # ------------------------------------------------------------ control plane
    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        result, outs = self.engine.call(operation, params, self.now)
        self._keep(outs)
        return result

    def things(self, *names: str, group: str | None = None) -> None:
        if group is not None and group not in self.engine.groups:
            self.call("CreateThingGroup", thingGroupName=group)
        for name in names:
            self.call("CreateThing", thingName=name)
            if group is not None:
                self.call("AddThingToThingGroup", thingGroupName=group, thingName=name)

    def job(self, job_id: str, targets: list[str], document: Any = None, **params: Any) -> dict[str, Any]:
        doc = json.dumps(document if document is not None else {"operation": job_id})
        return self.call("CreateJob", jobId=job_id, targets=targets, document=doc, **params)

    # ------------------------------------------------------------ device side
    def request(
        self, thing: str, suffix: str, payload: Any = None, *, raw: bytes | None = None
    ) -> tuple[str, Any]:
        """Publish a device request; returns (accepted|rejected, body) and keeps the other messages."""
        topic = f"$aws/things/{thing}/jobs/{suffix}"
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        outs = self.engine.handle(topic, body, self.now)
        answer_topic, answer = outs[0]
        assert answer_topic.startswith(topic + "/"), answer_topic
        self._keep(outs[1:])
        return answer_topic.rsplit("/", 1)[1], json.loads(answer)

    def ok(self, thing: str, suffix: str, payload: Any = None) -> Any:
        kind, body = self.request(thing, suffix, payload)
        assert kind == "accepted", body
        return body

    def status(self, thing: str, suffix: str) -> str:
        """The status ``{jobId}/get`` describes: a terminal one is rejected ``TerminalStateReached`` with it."""
        kind, body = self.request(thing, suffix)
        if kind == "rejected":
            assert body["code"] == "TerminalStateReached", body
            return str(body["executionState"]["status"])
        return str(body["execution"]["status"])

    def rejected(self, thing: str, suffix: str, payload: Any = None, *, raw: bytes | None = None) -> Any:
        kind, body = self.request(thing, suffix, payload, raw=raw)
        assert kind == "rejected", body
        return body

    # ------------------------------------------------------------ clock and output
    def tick(self, now: float) -> None:
        deadline = self.engine.next_deadline()
        self.now = now
        self._keep(self.engine.tick(now))
        assert deadline is None or deadline > 0

    def run_until(self, end: float) -> None:
        """Tick at every deadline up to ``end``, exactly when it is due (never early)."""
        while True:
            deadline = self.engine.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self._keep(self.engine.tick(self.now))
        self.now = end
        self._keep(self.engine.tick(end))

    def _keep(self, outs: list[tuple[str, bytes]]) -> None:
        for topic, payload in outs:
            self.published.append((topic, json.loads(payload)))

    def take(self, prefix: str = "") -> list[tuple[str, Any]]:
        taken = [(t, p) for t, p in self.published if t.startswith(prefix)]
        self.published = [(t, p) for t, p in self.published if not t.startswith(prefix)]
        return taken

    def notifications(self, thing: str) -> list[tuple[str, Any]]:
        """The notify / notify-next messages of one thing since the last call, as (kind, payload)."""
        prefix = f"$aws/things/{thing}/jobs/"
        return [(t[len(prefix) :], p) for t, p in self.take(prefix)]

    def commit(self) -> None:
        for key, record in self.engine.take_dirty().items():
            if record is None:
                self.records.pop(key, None)
            else:
                self.records[key] = json.loads(json.dumps(record))

    def restart(self, **kwargs: Any) -> Harness:
        self.commit()
        again = Harness(JobsEngine(dict(self.records), **kwargs), now=self.now)
        again.records = dict(self.records)
        return again


def summary(job_id: str, queued: float = T0, updated: float | None = None, *, version: int = 1, number: int = 1,
            started: float | None = None) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"jobId": job_id, "queuedAt": int(queued)}
    if started is not None:
        out["startedAt"] = int(started)
    out.update(
        lastUpdatedAt=int(updated if updated is not None else queued),
        versionNumber=version,
        executionNumber=number,
    )
    return out


def api_error(h: Harness, operation: str, **params: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        h.call(operation, **params)
    return info.value


# ----------------------------------------------------------------------------------------- SDK flow
def test_the_sdk_integration_test_flow_on_a_continuous_group_job() -> None:
    """awsiotsdk test/test_jobs.py: continuous job on a group, thing added, notify + notify-next, start-next,
    describe, update SUCCEEDED, final empty notifications, empty pending list, cleanup."""
    h = Harness()
    group = h.call("CreateThingGroup", thingGroupName="sdk-group")
    assert group["thingGroupArn"] == group_arn("sdk-group")
    created = h.call("CreateThing", thingName="sdk-thing")
    assert created["thingArn"] == thing_arn("sdk-thing") and created["thingId"]
    job = h.job("sdk-job", [group["thingGroupArn"]], {"ToDo": "Reboot"}, targetSelection="CONTINUOUS")
    assert job == {"jobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/sdk-job", "jobId": "sdk-job"}
    assert h.take() == []
    assert h.ok("sdk-thing", "get", {"clientToken": "c1"}) == {
        "inProgressJobs": [],
        "queuedJobs": [],
        "timestamp": TS,
        "clientToken": "c1",
    }

    h.call("AddThingToThingGroup", thingGroupName="sdk-group", thingName="sdk-thing")
    assert h.notifications("sdk-thing") == [
        ("notify", {"timestamp": TS, "jobs": {"QUEUED": [summary("sdk-job")]}}),
        (
            "notify-next",
            {
                "timestamp": TS,
                "execution": {
                    "jobId": "sdk-job",
                    "status": "QUEUED",
                    "queuedAt": TS,
                    "lastUpdatedAt": TS,
                    "versionNumber": 1,
                    "executionNumber": 1,
                    "jobDocument": {"ToDo": "Reboot"},
                },
            },
        ),
    ]

    h.now = T0 + 5
    started = h.ok("sdk-thing", "start-next", {"clientToken": "c2"})
    execution = {
        "jobId": "sdk-job",
        "thingName": "sdk-thing",
        "jobDocument": {"ToDo": "Reboot"},
        "status": "IN_PROGRESS",
        "queuedAt": TS,
        "startedAt": TS + 5,
        "lastUpdatedAt": TS + 5,
        "versionNumber": 2,
        "executionNumber": 1,
    }
    assert started == {"execution": execution, "timestamp": TS + 5, "clientToken": "c2"}
    assert h.take() == [], "QUEUED -> IN_PROGRESS is silent"
    assert h.ok("sdk-thing", "sdk-job/get", {"clientToken": "c3"}) == {
        "execution": execution,
        "timestamp": TS + 5,
        "clientToken": "c3",
    }

    h.now = T0 + 9
    assert h.ok("sdk-thing", "sdk-job/update", {"status": "SUCCEEDED", "clientToken": "c4"}) == {
        "timestamp": TS + 9,
        "clientToken": "c4",
    }
    assert h.notifications("sdk-thing") == [
        ("notify", {"timestamp": TS + 9, "jobs": {}}),
        ("notify-next", {"timestamp": TS + 9}),
    ]
    event = h.take("$aws/events/")
    assert len(event) == 1 and event[0][0] == "$aws/events/jobExecution/sdk-job/succeeded"
    body = dict(event[0][1])
    assert body.pop("eventId")
    assert body == {
        "eventType": "JOB_EXECUTION",
        "timestamp": TS + 9,
        "operation": "succeeded",
        "jobId": "sdk-job",
        "thingArn": thing_arn("sdk-thing"),
        "status": "SUCCEEDED",
    }
    assert h.ok("sdk-thing", "get", {"clientToken": "c5"}) == {
        "inProgressJobs": [],
        "queuedJobs": [],
        "timestamp": TS + 9,
        "clientToken": "c5",
    }
    described = h.call("DescribeJob", jobId="sdk-job")["job"]
    assert described["status"] == "IN_PROGRESS", "a CONTINUOUS job never completes"
    assert described["jobProcessDetails"]["numberOfSucceededThings"] == 1

    h.call("DeleteJob", jobId="sdk-job", force=True)
    h.call("DeleteThing", thingName="sdk-thing")
    h.call("DeleteThingGroup", thingGroupName="sdk-group")
    assert [t for t, _ in h.take("$aws/events/job/")] == [
        "$aws/events/job/sdk-job/deletion_in_progress",
        "$aws/events/job/sdk-job/deleted",
    ]
    assert api_error(h, "DescribeJob", jobId="sdk-job").code == "ResourceNotFoundException"


# ----------------------------------------------------------------------------------------- notifications
def test_notification_sequence_of_the_developer_guide() -> None:
    """jobs-comm-notifications: the table of jobs_ota.md §1.4, row by row."""
    h = Harness()
    h.things("t", group="g")
    h.job("job1", [group_arn("g")])
    assert [k for k, _ in h.notifications("t")] == ["notify", "notify-next"]

    h.now = T0 + 10
    h.job("job2", [group_arn("g")])
    assert h.notifications("t") == [
        ("notify", {"timestamp": TS + 10, "jobs": {"QUEUED": [summary("job1"), summary("job2", T0 + 10)]}})
    ], "front unchanged: no notify-next"

    h.now = T0 + 20
    h.ok("t", "start-next")
    assert h.notifications("t") == [], "QUEUED -> IN_PROGRESS: no notifications"

    h.now = T0 + 30
    h.ok("t", "job1/update", {"status": "SUCCEEDED"})
    note = h.notifications("t")
    assert note[0] == ("notify", {"timestamp": TS + 30, "jobs": {"QUEUED": [summary("job2", T0 + 10)]}})
    assert note[1][0] == "notify-next" and note[1][1]["execution"]["jobId"] == "job2"

    h.now = T0 + 40
    h.job("job3", [group_arn("g")])
    assert [k for k, _ in h.notifications("t")] == ["notify"]
    h.now = T0 + 50
    h.ok("t", "job3/update", {"status": "IN_PROGRESS"})
    note = h.notifications("t")
    assert [k for k, _ in note] == ["notify-next"], "job3 moved ahead of job2: the front changed"
    assert note[0][1]["execution"]["jobId"] == "job3" and note[0][1]["execution"]["status"] == "IN_PROGRESS"
    assert note[0][1]["execution"]["startedAt"] == TS + 50

    h.now = T0 + 60
    h.call("DeleteJob", jobId="job3", force=True)
    note = h.notifications("t")
    assert note[0] == ("notify", {"timestamp": TS + 60, "jobs": {"QUEUED": [summary("job2", T0 + 10)]}})
    assert note[1][1]["execution"]["jobId"] == "job2"
    h.call("DeleteJob", jobId="job2", force=True)
    assert h.notifications("t") == [
        ("notify", {"timestamp": TS + 60, "jobs": {}}),
        ("notify-next", {"timestamp": TS + 60}),
    ]


def test_notify_lists_at_most_ten_in_progress_first_then_by_queue_time() -> None:
    h = Harness()
    h.things("t")
    for i in range(12):
        h.now = T0 + i
        h.job(f"j{i:02d}", [thing_arn("t")])
    h.now = T0 + 100
    h.ok("t", "j05/update", {"status": "IN_PROGRESS"})
    h.take()
    h.ok("t", "j00/update", {"status": "SUCCEEDED"})
    note = dict(h.notifications("t"))
    jobs = note["notify"]["jobs"]
    assert [s["jobId"] for s in jobs["IN_PROGRESS"]] == ["j05"]
    assert [s["jobId"] for s in jobs["QUEUED"]] == [
        "j01",
        "j02",
        "j03",
        "j04",
        "j06",
        "j07",
        "j08",
        "j09",
        "j10",
    ]
    assert "notify-next" not in note, "j05 became the front when it started"
    pending = h.ok("t", "get")
    assert len(pending["queuedJobs"]) == 10 and [s["jobId"] for s in pending["inProgressJobs"]] == ["j05"]


# ----------------------------------------------------------------------------------------- device requests
def test_start_next_returns_the_in_progress_one_again_and_nothing_when_empty() -> None:
    h = Harness()
    h.things("t")
    assert h.ok("t", "start-next", {"clientToken": "x"}) == {"timestamp": TS, "clientToken": "x"}
    h.job("a", [thing_arn("t")])
    h.job("b", [thing_arn("t")])
    first = h.ok("t", "start-next", {"statusDetails": {"step": "download"}, "clientToken": "y"})["execution"]
    assert (
        first["jobId"] == "a"
        and first["statusDetails"] == {"step": "download"}
        and first["versionNumber"] == 2
    )
    again = h.ok("t", "start-next", {"statusDetails": {"step": "other"}})["execution"]
    assert again == first, "an IN_PROGRESS execution keeps its statusDetails and version"
    assert h.ok("t", "$next/get", {"includeJobDocument": False})["execution"]["jobId"] == "a"
    assert "jobDocument" not in h.ok("t", "$next/get", {"includeJobDocument": False})["execution"]


def test_expected_version_as_number_or_numeric_string() -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")])
    assert h.ok(
        "t", "j/update", {"status": "IN_PROGRESS", "expectedVersion": 1, "includeJobExecutionState": True}
    )["executionState"] == {"status": "IN_PROGRESS", "versionNumber": 2}
    assert h.ok("t", "j/update", {"status": "IN_PROGRESS", "expectedVersion": "2", "clientToken": "k"}) == {
        "timestamp": TS,
        "clientToken": "k",
    }
    assert h.rejected(
        "t", "j/update", {"status": "SUCCEEDED", "expectedVersion": "2", "clientToken": "m"}
    ) == {
        "code": "VersionMismatch",
        "message": "expectedVersion 2 does not match 3.",
        "clientToken": "m",
        "timestamp": TS,
        "executionState": {"status": "IN_PROGRESS", "versionNumber": 3},
    }
    for bad in ("two", 2.5, True, [3]):
        assert (
            h.rejected("t", "j/update", {"status": "SUCCEEDED", "expectedVersion": bad})["code"]
            == "InvalidRequest"
        )
    assert h.ok(
        "t", "j/update", {"status": "SUCCEEDED", "expectedVersion": 3, "includeJobExecutionState": True}
    )["executionState"] == {"status": "SUCCEEDED", "versionNumber": 4}


def test_terminal_executions_and_device_settable_statuses() -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")], {"a": 1})
    assert h.rejected("t", "j/update", {"clientToken": "s"})["code"] == "InvalidRequest", "status is required"
    for status in ("QUEUED", "CANCELED", "TIMED_OUT", "REMOVED", "DONE"):
        assert h.rejected("t", "j/update", {"status": status})["code"] == "InvalidRequest"
    done = h.ok(
        "t",
        "j/update",
        {"status": "REJECTED", "statusDetails": {"reason": "wrong model"}, "includeJobDocument": True},
    )
    assert done == {"jobDocument": {"a": 1}, "timestamp": TS}
    again = h.rejected("t", "j/update", {"status": "SUCCEEDED", "clientToken": "z"})
    assert again["code"] == "InvalidStateTransition" and again["clientToken"] == "z"
    assert again["executionState"] == {
        "status": "REJECTED",
        "statusDetails": {"reason": "wrong model"},
        "versionNumber": 2,
    }
    described = h.rejected("t", "j/get", {"executionNumber": 1, "clientToken": "d"})
    assert described == {
        "code": "TerminalStateReached",
        "message": "Job execution j on t is REJECTED, a terminal state.",
        "clientToken": "d",
        "timestamp": TS,
        "executionState": {
            "status": "REJECTED",
            "statusDetails": {"reason": "wrong model"},
            "versionNumber": 2,
        },
    }
    assert h.ok("t", "$next/get") == {"timestamp": TS}, "$next describes only pending executions"


@pytest.mark.parametrize(
    "details",
    [
        pytest.param({f"k{i}": "v" for i in range(11)}, id="eleven_pairs"),
        pytest.param({"bad key": "v"}, id="key_with_space"),
        pytest.param({"k" * 129: "v"}, id="key_too_long"),
        pytest.param({"k": "v" * 1025}, id="value_too_long"),
        pytest.param({"k": ""}, id="empty_value"),
        pytest.param({"k": 5}, id="number_value"),
        pytest.param(["k"], id="not_an_object"),
    ],
)
def test_status_details_limits(details: Any) -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")])
    assert (
        h.rejected("t", "j/update", {"status": "IN_PROGRESS", "statusDetails": details})["code"]
        == "InvalidRequest"
    )
    assert h.rejected("t", "start-next", {"statusDetails": details})["code"] == "InvalidRequest"


def test_status_details_at_the_limits_are_accepted() -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")])
    details = {f"k:{i}_-" + "x" * 100: "v" * 1024 for i in range(10)}
    details["k:0_-" + "x" * 100] = "line one\nline two"
    state = h.ok(
        "t", "j/update", {"status": "IN_PROGRESS", "statusDetails": details, "includeJobExecutionState": True}
    )
    assert state["executionState"]["statusDetails"] == details


def test_malformed_requests_unknown_things_jobs_and_topics() -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")])
    bad = h.rejected("t", "j/update", raw=b'{"status": "SUCCEEDED", "clientToken": "q"')
    assert bad == {"code": "InvalidJson", "message": bad["message"], "clientToken": "q", "timestamp": TS}
    assert h.rejected("t", "get", raw=b"[1]")["code"] == "InvalidRequest"
    assert h.rejected("ghost", "get", {"clientToken": "g"}) == {
        "code": "ResourceNotFound",
        "message": "Thing ghost does not exist.",
        "clientToken": "g",
        "timestamp": TS,
    }
    assert h.rejected("t", "nojob/get")["code"] == "ResourceNotFound"
    assert h.rejected("t", "nojob/update", {"status": "SUCCEEDED"})["code"] == "ResourceNotFound"
    assert h.rejected("t", "j/get", {"executionNumber": 7})["code"] == "ResourceNotFound"
    assert h.rejected("t", "j/frobnicate")["code"] == "InvalidTopic"
    assert h.rejected("t", "start-next", {"stepTimeoutInMinutes": 0})["code"] == "InvalidRequest"
    assert h.rejected("t", "start-next", {"stepTimeoutInMinutes": 10081})["code"] == "InvalidRequest"
    for topic in ("get/accepted", "j/update/rejected", "notify", "notify-next", "start-next/accepted"):
        assert h.engine.handle(f"$aws/things/t/jobs/{topic}", b"{}", T0) == [], topic
    assert h.engine.handle("$aws/things/t/shadow/update", b"{}", T0) == []


def test_job_document_is_an_object_over_mqtt_and_a_string_from_get_job_document() -> None:
    h = Harness()
    h.things("t")
    document = {"version": "1.0", "steps": [{"action": {"name": "x", "type": "runCommand"}}]}
    h.job("j", [thing_arn("t")], document)
    assert h.ok("t", "j/get")["execution"]["jobDocument"] == document
    assert json.loads(h.call("GetJobDocument", jobId="j")["document"]) == document


def test_presigned_url_placeholders_are_signed_at_every_fetch() -> None:
    calls: list[tuple[str, int, float]] = []

    def presign(url: str, expires: int, now: float) -> str:
        calls.append((url, expires, now))
        return f"http://127.0.0.1:8444/local-artifacts/fw.bin?X-Amz-Expires={expires}&X-Amz-Date={int(now)}"

    h = Harness(presign=presign)
    h.things("t")
    url = "https://s3.us-east-1.amazonaws.com/local-artifacts/fw.bin"
    document = {"url": "${aws:iot:s3-presigned-url:" + url + "}", "sha256": "ab"}
    h.job("j", [thing_arn("t")], document, presignedUrlConfig={"expiresInSec": 600})
    assert calls == [(url, 600, T0)], "the notify-next at queue time carries a signed URL"
    note = dict(h.notifications("t"))
    assert note["notify-next"]["execution"]["jobDocument"]["url"].endswith(
        f"X-Amz-Expires=600&X-Amz-Date={TS}"
    )
    h.now = T0 + 100
    fetched = h.ok("t", "j/get")["execution"]["jobDocument"]
    assert fetched == {
        "url": f"http://127.0.0.1:8444/local-artifacts/fw.bin?X-Amz-Expires=600&X-Amz-Date={TS + 100}",
        "sha256": "ab",
    }
    h.now = T0 + 200
    h.ok("t", "start-next")
    assert calls[-1] == (url, 600, T0 + 200)
    assert json.loads(h.call("GetJobDocument", jobId="j")["document"]) == document, (
        "stored with the placeholder"
    )

    h2 = Harness(presign=presign)
    h2.things("t")
    h2.job("k", [thing_arn("t")], document)
    assert calls[-1] == (url, 3600, T0), "expiresInSec defaults to 3600"


# ----------------------------------------------------------------------------------------- timers
def approx_left(h: Harness, job_id: str, thing: str) -> int | None:
    execution = h.call("DescribeJobExecution", jobId=job_id, thingName=thing)["execution"]
    value = execution.get("approximateSecondsBeforeTimedOut")
    return value if value is None else int(value)


def test_step_timers_replace_each_other_and_never_pass_the_in_progress_timeout() -> None:
    """jobs_ota.md §1.3: 20-min job started 12:00; step 7 @12:05 -> 12:12; 5 @12:10 -> 12:15; 9 @12:13 -> 12:20."""
    h = Harness(now=at(12, 0))
    h.things("t")
    h.job("j", [thing_arn("t")], timeoutConfig={"inProgressTimeoutInMinutes": 20})
    h.ok("t", "start-next")
    assert h.engine.next_deadline() == at(12, 20)
    h.now = at(12, 5)
    h.ok("t", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 7})
    assert h.engine.next_deadline() == at(12, 12) and approx_left(h, "j", "t") == 7 * 60
    h.now = at(12, 10)
    h.ok("t", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 5})
    assert h.engine.next_deadline() == at(12, 15)
    h.now = at(12, 13)
    h.ok("t", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 9})
    assert h.engine.next_deadline() == at(12, 20), "capped by the in-progress timer"
    h.now = at(12, 14)
    h.ok("t", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1})
    assert h.engine.next_deadline() == at(12, 20), "-1 discards the step timer; the job timer stays"
    h.take()
    h.run_until(at(12, 19, 59))
    assert h.status("t", "j/get") == "IN_PROGRESS", "never early"
    h.run_until(at(12, 20, 2))
    assert h.call("DescribeJobExecution", jobId="j", thingName="t")["execution"]["status"] == "TIMED_OUT"
    note = h.notifications("t")
    assert note == [
        ("notify", {"timestamp": int(at(12, 20)), "jobs": {}}),
        ("notify-next", {"timestamp": int(at(12, 20))}),
    ]
    assert [t for t, _ in h.take("$aws/events/")] == [
        "$aws/events/jobExecution/j/timed_out",
        "$aws/events/job/j/completed",
    ]
    assert h.rejected("t", "j/update", {"status": "SUCCEEDED"})["code"] == "InvalidStateTransition"


def test_a_step_timer_alone_times_out_and_minus_one_clears_it() -> None:
    h = Harness()
    h.things("t", "u")
    h.job("j", [thing_arn("t"), thing_arn("u")])
    h.ok("t", "start-next", {"stepTimeoutInMinutes": 3})
    h.ok("u", "start-next", {"stepTimeoutInMinutes": 3})
    h.now = T0 + 60
    h.ok("u", "j/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1})
    assert h.engine.next_deadline() == T0 + 180
    h.run_until(T0 + 3600)
    assert h.status("t", "j/get") == "TIMED_OUT"
    assert h.status("u", "j/get") == "IN_PROGRESS"
    assert h.engine.next_deadline() is None


def test_in_progress_timeout_starts_when_the_execution_starts() -> None:
    h = Harness()
    h.things("t")
    h.job("j", [thing_arn("t")], timeoutConfig={"inProgressTimeoutInMinutes": 1})
    h.run_until(T0 + 600)
    assert h.status("t", "j/get") == "QUEUED", "QUEUED executions do not time out"
    h.ok("t", "start-next")
    h.run_until(T0 + 659)
    assert h.status("t", "j/get") == "IN_PROGRESS"
    h.run_until(T0 + 660)
    assert h.status("t", "j/get") == "TIMED_OUT"


# ----------------------------------------------------------------------------------------- retries
def test_failed_executions_are_retried_with_new_execution_numbers() -> None:
    h = Harness()
    h.things("t")
    h.job(
        "j",
        [thing_arn("t")],
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 2}]},
    )
    h.take()
    for number in (1, 2, 3):
        h.now += 10
        started = h.ok("t", "start-next")["execution"]
        assert started["executionNumber"] == number and started["versionNumber"] == 2
        h.ok("t", "j/update", {"status": "FAILED", "statusDetails": {"reason": f"try {number}"}})
        note = dict(h.notifications("t"))
        if number < 3:
            assert note["notify"]["jobs"]["QUEUED"][0]["executionNumber"] == number + 1
            assert note["notify-next"]["execution"]["executionNumber"] == number + 1
            assert note["notify-next"]["execution"]["status"] == "QUEUED"
        else:
            assert note == {
                "notify": {"timestamp": int(h.now), "jobs": {}},
                "notify-next": {"timestamp": int(h.now)},
            }
    summaries = h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]
    assert [
        (s["jobExecutionSummary"]["executionNumber"], s["jobExecutionSummary"]["retryAttempt"])
        for s in summaries
    ] == [(3, 2)]
    assert (
        h.call("DescribeJobExecution", jobId="j", thingName="t", executionNumber=1)["execution"]["status"]
        == "FAILED"
    )
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "COMPLETED" and job["jobProcessDetails"]["numberOfFailedThings"] == 1


def test_rejected_is_never_retried_and_timed_out_needs_a_timeout() -> None:
    h = Harness()
    h.things("t", "u")
    retry_all = {"criteriaList": [{"failureType": "ALL", "numberOfRetries": 3}]}
    h.job("j", [thing_arn("t")], jobExecutionsRetryConfig=retry_all)
    h.ok("t", "j/update", {"status": "REJECTED"})
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "COMPLETED"
    err = api_error(
        h, "CreateJob", jobId="k", targets=[thing_arn("u")], document="{}",
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
    )  # fmt: skip
    assert err.code == "InvalidRequestException"
    h.job(
        "k", [thing_arn("u")], timeoutConfig={"inProgressTimeoutInMinutes": 1},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
    )  # fmt: skip
    h.ok("u", "start-next")
    h.run_until(T0 + 61)
    retried = h.ok("u", "k/get")["execution"]
    assert (retried["status"], retried["executionNumber"]) == ("QUEUED", 2)
    h.ok("u", "start-next")
    h.run_until(T0 + 200)
    assert h.status("u", "k/get") == "TIMED_OUT"
    assert h.call("DescribeJob", jobId="k")["job"]["jobProcessDetails"]["numberOfTimedOutThings"] == 1


# ----------------------------------------------------------------------------------------- rollout
def created_per_minute(h: Harness, job_id: str, first: int, last: int) -> list[int]:
    """Executions created in each minute ``first``..``last`` of a rollout that began at T0."""

    def total() -> int:
        return len(h.call("ListJobExecutionsForJob", jobId=job_id, maxResults=250)["executionSummaries"])

    out = []
    for m in range(first, last + 1):
        before = total() if m > 0 else 0
        h.run_until(T0 + 60 * m + 59)
        out.append(total() - before)
    return out


def test_maximum_per_minute_meters_executions_in_minute_batches() -> None:
    h = Harness()
    names = [f"r{i:02d}" for i in range(25)]
    h.things(*names, group="fleet")
    h.job("j", [group_arn("fleet")], jobExecutionsRolloutConfig={"maximumPerMinute": 10})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["isConcurrent"] is True and job["jobProcessDetails"]["processingTargets"] == [
        group_arn("fleet")
    ]
    assert h.engine.next_deadline() == T0 + 60
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 10
    assert created_per_minute(h, "j", 0, 3) == [10, 10, 5, 0]
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["isConcurrent"] is False and "processingTargets" not in job["jobProcessDetails"]
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 25


def test_default_rate_is_a_thousand_per_minute() -> None:
    h = Harness()
    names = [f"r{i:04d}" for i in range(1001)]
    h.things(*names, group="fleet")
    h.job("j", [group_arn("fleet")])
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfQueuedThings"] == 1000
    h.run_until(T0 + 60)
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfQueuedThings"] == 1001


def test_exponential_rate_steps_up_by_the_factor_at_each_multiple_of_notified_things() -> None:
    h = Harness()
    h.things(*[f"r{i:02d}" for i in range(60)], group="fleet")
    rate = {
        "baseRatePerMinute": 5,
        "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfNotifiedThings": 10},
    }
    h.job("j", [group_arn("fleet")], jobExecutionsRolloutConfig={"exponentialRate": rate})
    assert created_per_minute(h, "j", 0, 5) == [5, 5, 10, 20, 20, 0]


def test_exponential_rate_by_succeeded_things() -> None:
    h = Harness()
    names = [f"r{i:02d}" for i in range(20)]
    h.things(*names, group="fleet")
    rate = {
        "baseRatePerMinute": 2,
        "incrementFactor": 1.5,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 2},
    }
    h.job("j", [group_arn("fleet")], jobExecutionsRolloutConfig={"exponentialRate": rate})
    assert created_per_minute(h, "j", 0, 1) == [2, 2], "no success yet: the base rate"
    for name in names[:4]:
        if h.call("ListJobExecutionsForThing", thingName=name)["executionSummaries"]:
            h.ok(name, "j/update", {"status": "SUCCEEDED"})
    assert created_per_minute(h, "j", 2, 3) == [3, 4], (
        "2 succeeded: 2 * 1.5; 4 succeeded: 2 * 1.5 ** 2 (one step a minute)"
    )


def test_things_joining_a_running_continuous_job_are_not_metered() -> None:
    h = Harness()
    h.things("a", "b", "c", group="fleet")
    h.job(
        "j",
        [group_arn("fleet")],
        targetSelection="CONTINUOUS",
        jobExecutionsRolloutConfig={"maximumPerMinute": 1},
    )
    h.things("late")
    h.call("AddThingToThingGroup", thingGroupName="fleet", thingName="late")
    assert h.ok("late", "get")["queuedJobs"][0]["jobId"] == "j"
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfQueuedThings"] == 2


# ----------------------------------------------------------------------------------------- abort
def test_abort_cancels_queued_executions_and_leaves_in_progress_ones_running() -> None:
    h = Harness()
    names = [f"r{i}" for i in range(10)]
    h.things(*names, group="fleet")
    abort = {"criteriaList": [
        {"failureType": "TIMED_OUT", "action": "CANCEL", "thresholdPercentage": 10, "minNumberOfExecutedThings": 1},
        {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 4},
    ]}  # fmt: skip
    h.job("j", [group_arn("fleet")], abortConfig=abort)
    for name in names[:6]:
        h.ok(name, "start-next")
    h.ok("r0", "j/update", {"status": "SUCCEEDED"})
    h.ok("r1", "j/update", {"status": "FAILED"})
    h.ok("r2", "j/update", {"status": "FAILED"})
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "IN_PROGRESS", (
        "only 3 completed: below the minimum"
    )
    h.take()
    h.now = T0 + 30
    h.ok("r3", "j/update", {"status": "FAILED"})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "CANCELED" and job["reasonCode"] == "ABORT_CRITERIA_MET"
    assert job["comment"].startswith(
        "Job aborted by abortConfig criterion 2: 3 of 4 completed executions FAILED"
    )
    assert job["jobProcessDetails"] == {
        "numberOfCanceledThings": 4,
        "numberOfSucceededThings": 1,
        "numberOfFailedThings": 3,
        "numberOfRejectedThings": 0,
        "numberOfQueuedThings": 0,
        "numberOfInProgressThings": 2,
        "numberOfRemovedThings": 0,
        "numberOfTimedOutThings": 0,
    }
    assert h.status("r6", "j/get") == "CANCELED"
    assert dict(h.notifications("r6"))["notify"] == {"timestamp": TS + 30, "jobs": {}}
    assert h.status("r4", "j/get") == "IN_PROGRESS"
    assert h.notifications("r4") == []
    h.ok("r4", "j/update", {"status": "SUCCEEDED"})
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfSucceededThings"] == 2
    events = [t for t, _ in h.take("$aws/events/job/")]
    assert events == ["$aws/events/job/j/cancellation_in_progress", "$aws/events/job/j/canceled"]


def test_abort_percentage_over_all_failure_types_and_pending_rollout_is_dropped() -> None:
    h = Harness()
    h.things(*[f"r{i}" for i in range(10)], group="fleet")
    abort = {
        "criteriaList": [
            {
                "failureType": "ALL",
                "action": "CANCEL",
                "thresholdPercentage": 100,
                "minNumberOfExecutedThings": 2,
            }
        ]
    }
    h.job("j", [group_arn("fleet")], abortConfig=abort, jobExecutionsRolloutConfig={"maximumPerMinute": 3})
    h.ok("r0", "j/update", {"status": "REJECTED"})
    h.ok("r1", "j/update", {"status": "FAILED"})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "CANCELED" and job["jobProcessDetails"]["numberOfCanceledThings"] == 1
    h.run_until(T0 + 600)
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 3, (
        "no rollout after abort"
    )


def test_abort_counts_failures_that_were_retried_and_cancels_the_queued_retries() -> None:
    h = Harness()
    h.things("a", "b", "c", group="fleet")
    h.job(
        "j", [group_arn("fleet")],
        abortConfig={"criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 60, "minNumberOfExecutedThings": 2}]},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 5}]},
    )  # fmt: skip
    h.ok("a", "j/update", {"status": "FAILED"})
    assert h.ok("a", "j/get")["execution"]["executionNumber"] == 2, "retried"
    h.ok("b", "j/update", {"status": "SUCCEEDED"})
    h.ok("a", "j/update", {"status": "FAILED"})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "CANCELED", "2 of 3 completed executions FAILED: 66.67 % >= 60 %"
    assert "2 of 3 completed executions FAILED (66.67%)" in job["comment"]
    latest = h.call("DescribeJobExecution", jobId="j", thingName="a")["execution"]
    assert (latest["executionNumber"], latest["status"]) == (2, "FAILED"), "no retry after the abort"
    assert h.status("c", "j/get") == "CANCELED"


# ----------------------------------------------------------------------------------------- scheduling
def test_scheduled_job_starts_at_start_time_and_stops_rollout_at_end_time() -> None:
    h = Harness(now=at(12, 0))
    h.things(*[f"r{i}" for i in range(5)], group="fleet")
    sched = {"startTime": "2027-01-15T13:00", "endTime": "2027-01-15T14:00", "endBehavior": "STOP_ROLLOUT"}
    h.job(
        "j", [group_arn("fleet")], schedulingConfig=sched, jobExecutionsRolloutConfig={"maximumPerMinute": 1}
    )
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "SCHEDULED"
    assert h.call("ListJobs", status="SCHEDULED")["jobs"][0]["jobId"] == "j"
    assert h.engine.next_deadline() == at(13, 0)
    h.things("joined", group="fleet")
    h.run_until(at(12, 59, 59))
    assert h.ok("r0", "get")["queuedJobs"] == []
    h.run_until(at(13, 0))
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "IN_PROGRESS"
    assert h.ok("joined", "get")["queuedJobs"][0]["jobId"] == "j", "targets are resolved at the start"
    h.run_until(at(13, 2, 30))
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 3
    err = api_error(
        h,
        "CreateJob",
        jobId="soon",
        targets=[group_arn("fleet")],
        document="{}",
        schedulingConfig={"startTime": "2027-01-15T13:10"},
    )
    assert err.code == "InvalidRequestException", "start time must be at least 30 minutes ahead"


def test_end_time_stop_rollout_then_snapshot_completes() -> None:
    sched = {"startTime": "2027-01-15 12:30", "endTime": "2027-01-15T13:00"}
    h2 = Harness(now=at(12, 0))
    h2.things(*[f"r{i}" for i in range(100)], group="fleet")
    h2.job(
        "j", [group_arn("fleet")], schedulingConfig=sched, jobExecutionsRolloutConfig={"maximumPerMinute": 1}
    )
    h2.run_until(at(13, 5))
    execs = h2.call("ListJobExecutionsForJob", jobId="j", maxResults=250)["executionSummaries"]
    assert len(execs) == 30, "one per minute from 12:30 to 12:59, none after endTime"
    assert h2.call("DescribeJob", jobId="j")["job"]["isConcurrent"] is False
    for s in execs:
        h2.ok(s["thingArn"].rsplit("/", 1)[1], "j/update", {"status": "SUCCEEDED"})
    assert h2.call("DescribeJob", jobId="j")["job"]["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("behavior", "in_progress_after"), [("CANCEL", "IN_PROGRESS"), ("FORCE_CANCEL", "CANCELED")]
)
def test_end_behavior_cancel_and_force_cancel(behavior: str, in_progress_after: str) -> None:
    h = Harness(now=at(12, 0))
    h.things("a", "b", group="fleet")
    sched = {"startTime": "2027-01-15T12:30", "endTime": "2027-01-15T13:00", "endBehavior": behavior}
    h.job("j", [group_arn("fleet")], schedulingConfig=sched)
    h.run_until(at(12, 30))
    h.ok("a", "start-next")
    h.run_until(at(13, 0))
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "CANCELED"
    assert h.status("b", "j/get") == "CANCELED"
    assert h.status("a", "j/get") == in_progress_after


def test_maintenance_windows_meter_rollout_and_hide_queued_executions_outside_them() -> None:
    h = Harness(now=at(12, 0))
    h.things("a", "b", "c", group="fleet")
    windows = [{"startTime": "cron(0 14 * * ? *)", "durationInMinutes": 60}]
    h.job(
        "j",
        [group_arn("fleet")],
        schedulingConfig={"maintenanceWindows": windows},
        jobExecutionsRolloutConfig={"maximumPerMinute": 2},
    )
    described = h.call("DescribeJob", jobId="j")["job"]
    assert described["status"] == "IN_PROGRESS"
    assert described["scheduledJobRollouts"][:2] == [
        {"startTime": "2027-01-15T14:00"},
        {"startTime": "2027-01-16T14:00"},
    ]
    assert h.ok("a", "get")["queuedJobs"] == [] and h.engine.next_deadline() == at(14, 0)
    h.run_until(at(14, 0))
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 2
    assert [k for k, _ in h.notifications("a")] == ["notify", "notify-next"]
    h.ok("a", "start-next")
    h.run_until(at(14, 59))
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 3
    h.take()
    h.run_until(at(15, 1))
    assert h.notifications("b") == [
        ("notify", {"timestamp": int(at(15, 0)), "jobs": {}}),
        ("notify-next", {"timestamp": int(at(15, 0))}),
    ]
    assert h.notifications("a") == [], "its IN_PROGRESS execution stays visible"
    assert h.ok("b", "start-next") == {"timestamp": int(at(15, 1))}, "window-bound QUEUED executions wait"
    assert len(h.ok("b", "get")["queuedJobs"]) == 1
    assert h.status("a", "$next/get") == "IN_PROGRESS"
    h.take()
    h.run_until(at(14, 0, day=16))
    opened = dict(h.notifications("b"))
    assert opened["notify"]["jobs"]["QUEUED"][0]["jobId"] == "j", "visible again when the window opens"
    assert opened["notify-next"]["execution"]["jobId"] == "j"
    assert h.ok("b", "start-next")["execution"]["jobId"] == "j"


# ----------------------------------------------------------------------------------------- control plane
def test_create_job_validation_follows_botocore() -> None:
    h = Harness()
    h.things("t")
    arn = thing_arn("t")
    cases: list[dict[str, Any]] = [
        {"jobId": "bad id", "targets": [arn], "document": "{}"},
        {"jobId": "x" * 65, "targets": [arn], "document": "{}"},
        {"jobId": "j", "targets": [], "document": "{}"},
        {"jobId": "j", "targets": [arn], "document": "x" * 32769},
        {"jobId": "j", "targets": [arn], "document": "not json"},
        {"jobId": "j", "targets": [arn]},
        {"jobId": "j", "targets": [arn], "document": "{}", "targetSelection": "SOMETIMES"},
        {"jobId": "j", "targets": [arn], "document": "{}", "presignedUrlConfig": {"expiresInSec": 30}},
        {
            "jobId": "j",
            "targets": [arn],
            "document": "{}",
            "jobExecutionsRolloutConfig": {"maximumPerMinute": 0},
        },
        {
            "jobId": "j",
            "targets": [arn],
            "document": "{}",
            "timeoutConfig": {"inProgressTimeoutInMinutes": 10081},
        },
        {"jobId": "j", "targets": [arn], "document": "{}", "abortConfig": {"criteriaList": []}},
        {"jobId": "j", "targets": ["arn:aws:iot:us-east-1:000000000000:job/x"], "document": "{}"},
        {
            "jobId": "j",
            "targets": [arn],
            "document": "{}",
            "schedulingConfig": {
                "maintenanceWindows": [{"startTime": "cron(0 L * * ? *)", "durationInMinutes": 5}]
            },
        },
    ]
    for params in cases:
        with pytest.raises(ApiError) as info:
            h.engine.call("CreateJob", params, T0)
        assert info.value.code == "InvalidRequestException", params
    assert (
        api_error(h, "CreateJob", jobId="j", targets=[thing_arn("ghost")], document="{}").code
        == "ResourceNotFoundException"
    )
    h.job("j", [arn])
    assert (
        api_error(h, "CreateJob", jobId="j", targets=[arn], document="{}").code
        == "ResourceAlreadyExistsException"
    )
    assert (
        h.call("CreateJob", jobId="big", targets=[arn], document=json.dumps({"p": "x" * 32750}))["jobId"]
        == "big"
    )


def test_snapshot_job_completes_with_its_event_and_counters() -> None:
    h = Harness()
    h.things("a", "b", group="g")
    h.job("j", [group_arn("g")], description="update firmware")
    h.things("c", group="g")
    assert h.rejected("c", "j/get")["code"] == "ResourceNotFound", "SNAPSHOT: later members get nothing"
    h.now = T0 + 10
    h.ok("a", "j/update", {"status": "SUCCEEDED"})
    h.ok("b", "j/update", {"status": "FAILED"})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "COMPLETED" and job["completedAt"] == T0 + 10
    completed = h.take("$aws/events/job/")
    assert [t for t, _ in completed] == ["$aws/events/job/j/completed"]
    body = dict(completed[0][1])
    assert body.pop("eventId")
    assert body == {
        "eventType": "JOB",
        "timestamp": TS + 10,
        "operation": "completed",
        "jobId": "j",
        "status": "COMPLETED",
        "targetSelection": "SNAPSHOT",
        "targets": [group_arn("g")],
        "description": "update firmware",
        "completedAt": (TS + 10) * 1000,
        "createdAt": TS * 1000,
        "lastUpdatedAt": (TS + 10) * 1000,
        "jobProcessDetails": {
            "numberOfCanceledThings": 0,
            "numberOfRejectedThings": 0,
            "numberOfFailedThings": 1,
            "numberOfRemovedThings": 0,
            "numberOfSucceededThings": 1,
            "numberOfTimedOutThings": 0,
        },
    }
    assert (
        h.call("ListJobs", status="COMPLETED", targetSelection="SNAPSHOT", thingGroupName="g")["jobs"][0][
            "jobId"
        ]
        == "j"
    )
    assert h.call("ListJobs", status="IN_PROGRESS")["jobs"] == []


def test_continuous_job_removes_executions_of_things_that_leave() -> None:
    h = Harness()
    h.things("a", "b", group="g")
    h.job("j", [group_arn("g")], targetSelection="CONTINUOUS")
    h.ok("a", "start-next")
    h.take()
    h.call("RemoveThingFromThingGroup", thingGroupArn=group_arn("g"), thingArn=thing_arn("a"))
    h.call("RemoveThingFromThingGroup", thingGroupName="g", thingName="b")
    assert h.status("a", "j/get") == "REMOVED"
    assert h.status("b", "j/get") == "REMOVED"
    assert [t for t, _ in h.take("$aws/events/")] == ["$aws/events/jobExecution/j/removed"] * 2
    assert h.notifications("a") == [
        ("notify", {"timestamp": TS, "jobs": {}}),
        ("notify-next", {"timestamp": TS}),
    ]
    h.call("AddThingToThingGroup", thingGroupName="g", thingName="a")
    again = h.ok("a", "j/get")["execution"]
    assert (again["status"], again["executionNumber"]) == ("QUEUED", 2), "joining again: a new execution"
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfRemovedThings"] == 1


def test_nested_groups_are_targets_too() -> None:
    h = Harness()
    h.call("CreateThingGroup", thingGroupName="all")
    h.call("CreateThingGroup", thingGroupName="eu", parentGroupName="all")
    h.things("x", group="eu")
    h.job("j", [group_arn("all")], targetSelection="CONTINUOUS")
    assert h.ok("x", "get")["queuedJobs"][0]["jobId"] == "j"
    h.things("y", group="eu")
    assert h.ok("y", "get")["queuedJobs"][0]["jobId"] == "j"
    meta = h.call("DescribeThingGroup", thingGroupName="eu")["thingGroupMetadata"]
    assert meta["parentGroupName"] == "all" and meta["rootToParentThingGroups"] == [
        {"groupName": "all", "groupArn": group_arn("all")}
    ]
    assert h.call("ListThingsInThingGroup", thingGroupName="all", recursive=True)["things"] == ["x", "y"]
    assert h.call("ListThingsInThingGroup", thingGroupName="all")["things"] == []
    assert api_error(h, "DeleteThingGroup", thingGroupName="all").code == "InvalidRequestException"


def test_cancel_job_with_and_without_force() -> None:
    h = Harness()
    h.things("a", "b", "c", group="g")
    h.job("j", [group_arn("g")])
    h.ok("a", "start-next")
    h.ok("b", "start-next")
    h.call("CancelJob", jobId="j", reasonCode="BAD_BUILD", comment="build 42 is broken")
    job = h.call("DescribeJob", jobId="j")["job"]
    assert (job["status"], job["reasonCode"], job["comment"], job["forceCanceled"]) == (
        "CANCELED",
        "BAD_BUILD",
        "build 42 is broken",
        False,
    )
    assert h.status("c", "j/get") == "CANCELED"
    h.ok("a", "j/update", {"status": "SUCCEEDED"})
    h.call("CancelJob", jobId="j", force=True)
    b = h.call("DescribeJobExecution", jobId="j", thingName="b")["execution"]
    assert b["status"] == "CANCELED" and b["forceCanceled"] is True
    assert h.rejected("b", "j/update", {"status": "SUCCEEDED"})["code"] == "InvalidStateTransition"
    events = [t for t, _ in h.take("$aws/events/job/")]
    assert events == ["$aws/events/job/j/cancellation_in_progress", "$aws/events/job/j/canceled"] * 2
    assert api_error(h, "CancelJob", jobId="j", reasonCode="lower case").code == "InvalidRequestException"


def test_cancel_and_delete_job_executions() -> None:
    h = Harness()
    h.things("a", "b")
    h.job("j", [thing_arn("a"), thing_arn("b")])
    h.ok("a", "start-next")
    assert (
        api_error(h, "CancelJobExecution", jobId="j", thingName="a").code == "InvalidStateTransitionException"
    )
    assert (
        api_error(h, "CancelJobExecution", jobId="j", thingName="a", force=True, expectedVersion=1).code
        == "VersionConflictException"
    )
    h.call(
        "CancelJobExecution",
        jobId="j",
        thingName="a",
        force=True,
        expectedVersion=2,
        statusDetails={"why": "operator"},
    )
    a = h.call("DescribeJobExecution", jobId="j", thingName="a")["execution"]
    assert (a["status"], a["forceCanceled"], a["statusDetails"]) == (
        "CANCELED",
        True,
        {"detailsMap": {"why": "operator"}},
    )
    assert (
        api_error(h, "CancelJobExecution", jobId="j", thingName="a").code == "InvalidStateTransitionException"
    )
    assert (
        api_error(h, "DeleteJobExecution", jobId="j", thingName="b", executionNumber=1).code
        == "InvalidStateTransitionException"
    )
    h.call("DeleteJobExecution", jobId="j", thingName="b", executionNumber=1, force=True)
    assert api_error(h, "DescribeJobExecution", jobId="j", thingName="b").code == "ResourceNotFoundException"
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "COMPLETED"
    assert [t for t, _ in h.take("$aws/events/jobExecution/")] == [
        "$aws/events/jobExecution/j/canceled",
        "$aws/events/jobExecution/j/deleted",
    ]


def test_delete_job_needs_force_while_in_progress_and_frees_the_job_id() -> None:
    h = Harness()
    h.things("a")
    h.job("j", [thing_arn("a")])
    assert api_error(h, "DeleteJob", jobId="j").code == "InvalidStateTransitionException"
    h.ok("a", "j/update", {"status": "SUCCEEDED"})
    h.call("DeleteJob", jobId="j")
    assert h.rejected("a", "j/get")["code"] == "ResourceNotFound"
    h.job("j", [thing_arn("a")])
    assert h.ok("a", "j/get")["execution"]["executionNumber"] == 1


def test_associate_targets_with_a_continuous_job() -> None:
    h = Harness()
    h.things("a", group="g1")
    h.things("b", group="g2")
    h.job("c", [group_arn("g1")], targetSelection="CONTINUOUS", description="d")
    h.job("s", [group_arn("g1")])
    assert h.call("AssociateTargetsWithJob", jobId="c", targets=[group_arn("g2")]) == {
        "jobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/c",
        "jobId": "c",
        "description": "d",
    }
    assert h.ok("b", "get")["queuedJobs"][0]["jobId"] == "c"
    assert h.call("DescribeJob", jobId="c")["job"]["targets"] == [group_arn("g1"), group_arn("g2")]
    assert (
        api_error(h, "AssociateTargetsWithJob", jobId="s", targets=[group_arn("g2")]).code
        == "InvalidRequestException"
    )


def test_list_executions_for_job_and_thing_with_filters_and_pages() -> None:
    h = Harness()
    names = [f"r{i}" for i in range(5)]
    h.things(*names, group="g")
    h.job("j", [group_arn("g")])
    h.job("k", [thing_arn("r0")])
    h.ok("r1", "j/update", {"status": "SUCCEEDED"})
    page1 = h.call("ListJobExecutionsForJob", jobId="j", maxResults=2)
    assert [s["thingArn"] for s in page1["executionSummaries"]] == [thing_arn("r0"), thing_arn("r1")]
    page2 = h.call("ListJobExecutionsForJob", jobId="j", maxResults=2, nextToken=page1["nextToken"])
    page3 = h.call("ListJobExecutionsForJob", jobId="j", maxResults=2, nextToken=page2["nextToken"])
    assert (
        len(page2["executionSummaries"]) == 2
        and len(page3["executionSummaries"]) == 1
        and "nextToken" not in page3
    )
    done = h.call("ListJobExecutionsForJob", jobId="j", status="SUCCEEDED")["executionSummaries"]
    assert done == [{"thingArn": thing_arn("r1"), "jobExecutionSummary": {
        "status": "SUCCEEDED", "queuedAt": T0, "lastUpdatedAt": T0, "executionNumber": 1, "retryAttempt": 0}}]  # fmt: skip
    for_thing = h.call("ListJobExecutionsForThing", thingName="r0")["executionSummaries"]
    assert [s["jobId"] for s in for_thing] == ["j", "k"]
    assert [
        s["jobId"]
        for s in h.call("ListJobExecutionsForThing", thingName="r0", jobId="k")["executionSummaries"]
    ] == ["k"]
    assert api_error(h, "ListJobExecutionsForJob", jobId="j", status="DONE").code == "InvalidRequestException"
    assert [j["jobId"] for j in h.call("ListJobs")["jobs"]] == ["k", "j"]
    assert [j["jobId"] for j in h.call("ListJobs", maxResults=1)["jobs"]] == ["k"]


def test_update_job_changes_configs_for_what_comes_next() -> None:
    h = Harness()
    h.things(*[f"r{i}" for i in range(5)], group="g")
    h.job("j", [group_arn("g")], jobExecutionsRolloutConfig={"maximumPerMinute": 1})
    h.call(
        "UpdateJob",
        jobId="j",
        description="faster",
        jobExecutionsRolloutConfig={"maximumPerMinute": 3},
        timeoutConfig={"inProgressTimeoutInMinutes": 5},
    )
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["description"] == "faster" and job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 3}
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 3
    h.ok("r0", "start-next")
    assert approx_left(h, "j", "r0") == 300


def test_job_templates_supply_document_and_configs() -> None:
    h = Harness()
    h.things("t")
    made = h.call(
        "CreateJobTemplate", jobTemplateId="reboot", description="Reboot", document='{"op":"reboot"}',
        timeoutConfig={"inProgressTimeoutInMinutes": 7}, jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]},
    )  # fmt: skip
    assert made == {
        "jobTemplateArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:jobtemplate/reboot",
        "jobTemplateId": "reboot",
    }
    assert (
        api_error(h, "CreateJobTemplate", jobTemplateId="reboot", description="x", document="{}").code
        == "ConflictException"
    )
    h.call("CreateJob", jobId="j", targets=[thing_arn("t")], jobTemplateArn=made["jobTemplateArn"])
    job = h.call("DescribeJob", jobId="j")["job"]
    assert (
        job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 7}
        and job["jobTemplateArn"] == made["jobTemplateArn"]
    )
    assert h.ok("t", "j/get")["execution"]["jobDocument"] == {"op": "reboot"}
    from_job = h.call(
        "CreateJobTemplate",
        jobTemplateId="copy",
        description="copy",
        jobArn=f"arn:aws:iot:{REGION}:{ACCOUNT}:job/j",
    )
    assert h.call("DescribeJobTemplate", jobTemplateId="copy")["document"] == '{"op":"reboot"}'
    assert from_job["jobTemplateId"] == "copy"
    assert [t["jobTemplateId"] for t in h.call("ListJobTemplates")["jobTemplates"]] == ["copy", "reboot"]
    h.call("DeleteJobTemplate", jobTemplateId="copy")
    assert api_error(h, "DescribeJobTemplate", jobTemplateId="copy").code == "ResourceNotFoundException"
    assert (
        api_error(
            h, "CreateJob", jobId="k", targets=[thing_arn("t")], jobTemplateArn=from_job["jobTemplateArn"]
        ).code
        == "ResourceNotFoundException"
    )


# ----------------------------------------------------------------------------------------- registry
def test_things_registry() -> None:
    h = Harness()
    made = h.call("CreateThing", thingName="robot-1", attributePayload={"attributes": {"model": "create2"}})
    assert (
        h.call("CreateThing", thingName="robot-1", attributePayload={"attributes": {"model": "create2"}})
        == made
    )
    assert api_error(h, "CreateThing", thingName="robot-1").code == "ResourceAlreadyExistsException"
    assert api_error(h, "CreateThing", thingName="bad/name").code == "InvalidRequestException"
    assert h.call("DescribeThing", thingName="robot-1") == {
        "defaultClientId": "robot-1",
        "thingName": "robot-1",
        "thingId": made["thingId"],
        "thingArn": thing_arn("robot-1"),
        "attributes": {"model": "create2"},
        "version": 1,
    }
    h.call(
        "UpdateThing", thingName="robot-1", attributePayload={"attributes": {"site": "lab"}, "merge": True}
    )
    assert h.call("DescribeThing", thingName="robot-1")["attributes"] == {"model": "create2", "site": "lab"}
    assert (
        api_error(h, "UpdateThing", thingName="robot-1", expectedVersion=1).code == "VersionConflictException"
    )
    h.call(
        "UpdateThing",
        thingName="robot-1",
        attributePayload={"attributes": {"site": "home"}},
        expectedVersion=2,
    )
    assert h.call("DescribeThing", thingName="robot-1")["attributes"] == {"site": "home"}
    for i in range(3):
        h.call("CreateThing", thingName=f"robot-{i + 2}", attributePayload={"attributes": {"site": "lab"}})
    listed = h.call("ListThings", maxResults=2)
    assert [t["thingName"] for t in listed["things"]] == ["robot-1", "robot-2"]
    assert [t["thingName"] for t in h.call("ListThings", nextToken=listed["nextToken"])["things"]] == [
        "robot-3",
        "robot-4",
    ]
    assert len(h.call("ListThings", attributeName="site", attributeValue="lab")["things"]) == 3
    assert (
        len(
            h.call("ListThings", attributeName="site", attributeValue="ho", usePrefixAttributeValue=True)[
                "things"
            ]
        )
        == 1
    )
    h.call(
        "CreateThingGroup", thingGroupName="lab", thingGroupProperties={"thingGroupDescription": "the lab"}
    )
    h.call("AddThingToThingGroup", thingGroupArn=group_arn("lab"), thingName="robot-2")
    assert h.call("ListThingGroupsForThing", thingName="robot-2")["thingGroups"] == [
        {"groupName": "lab", "groupArn": group_arn("lab")}
    ]
    assert h.call("ListThingGroups", namePrefixFilter="la")["thingGroups"] == [
        {"groupName": "lab", "groupArn": group_arn("lab")}
    ]
    assert (
        api_error(h, "AddThingToThingGroup", thingGroupName="lab", thingName="ghost").code
        == "ResourceNotFoundException"
    )
    assert (
        api_error(h, "AddThingToThingGroup", thingGroupName="ghost", thingName="robot-2").code
        == "ResourceNotFoundException"
    )
    h.call("DeleteThing", thingName="robot-2")
    h.call("DeleteThing", thingName="robot-2")
    assert h.call("ListThingsInThingGroup", thingGroupName="lab")["things"] == []
    assert api_error(h, "DescribeThing", thingName="robot-2").code == "ResourceNotFoundException"
    assert (
        h.engine.ensure_thing("robot-9", T0) == []
        and h.call("DescribeThing", thingName="robot-9")["version"] == 1
    )


def test_deleting_a_thing_removes_its_pending_executions() -> None:
    h = Harness()
    h.things("a")
    h.job("j", [thing_arn("a")])
    h.call("DeleteThing", thingName="a")
    assert h.call("DescribeJob", jobId="j")["job"]["status"] == "COMPLETED"
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfRemovedThings"] == 1


# ----------------------------------------------------------------------------------------- persistence
def test_a_new_engine_from_the_records_continues_rollouts_timers_and_counters() -> None:
    h = Harness()
    h.things(*[f"r{i}" for i in range(6)], group="fleet")
    h.job(
        "j", [group_arn("fleet")], targetSelection="CONTINUOUS", jobExecutionsRolloutConfig={"maximumPerMinute": 2},
        timeoutConfig={"inProgressTimeoutInMinutes": 10},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]},
    )  # fmt: skip
    h.ok("r0", "start-next", {"stepTimeoutInMinutes": 2})
    h.ok("r1", "j/update", {"status": "FAILED"})
    h.call("CreateJobTemplate", jobTemplateId="t", description="t", document="{}")
    before = h.call("DescribeJob", jobId="j")["job"]
    h.take()

    h = h.restart()
    assert h.call("DescribeJob", jobId="j")["job"] == before
    assert h.engine.next_deadline() == T0 + 60
    assert h.ok("r1", "j/get")["execution"]["executionNumber"] == 2
    h.run_until(T0 + 60)
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 4
    h = h.restart()
    h.run_until(T0 + 130)
    assert h.status("r0", "j/get") == "TIMED_OUT"
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 6
    h.take()
    h = h.restart()
    h.ok("r2", "start-next")
    assert h.notifications("r2") == [], "the notify-next front survived the restart"
    h.ok("r2", "j/update", {"status": "SUCCEEDED"})
    assert dict(h.notifications("r2"))["notify-next"] == {"timestamp": int(h.now)}
    assert h.call("DescribeJob", jobId="j")["job"]["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert h.call("DescribeJobTemplate", jobTemplateId="t")["description"] == "t"
    h.call("DeleteJob", jobId="j", force=True)
    h = h.restart()
    assert not any(kind in ("exec", "job") for kind, _ in h.records)


def test_requeue_dirty_gives_records_back() -> None:
    engine = JobsEngine()
    engine.call("CreateThing", {"thingName": "a"}, T0)
    dirty = engine.take_dirty()
    assert ("thing", "a") in dirty and engine.take_dirty() == {}
    engine.requeue_dirty(dirty)
    assert engine.take_dirty() == dirty


def test_a_thousand_things_create_and_complete() -> None:
    h = Harness()
    names = [f"robot-{i:04d}" for i in range(1000)]
    h.things(*names, group="fleet")
    h.take()
    h.job("j", [group_arn("fleet")])
    assert len(h.take()) == 2000
    for name in names:
        h.ok(name, "start-next")
        h.ok(name, "j/update", {"status": "SUCCEEDED", "expectedVersion": 2})
    job = h.call("DescribeJob", jobId="j")["job"]
    assert job["status"] == "COMPLETED" and job["jobProcessDetails"]["numberOfSucceededThings"] == 1000
    assert len(h.engine.take_dirty()) >= 2000


def test_document_parameters_fill_template_placeholders() -> None:
    h = Harness()
    h.things("t")
    document = (
        '{"steps":[{"action":{"input":{"handler":"reboot.sh","path":"${aws:iot:parameter:pathToHandler}"}}}]}'
    )
    template = h.call(
        "CreateJobTemplate", jobTemplateId="AWS-Reboot", description="reboot", document=document
    )
    h.call(
        "CreateJob",
        jobId="j",
        targets=[thing_arn("t")],
        jobTemplateArn=template["jobTemplateArn"],
        documentParameters={"pathToHandler": "/opt/handlers"},
    )
    step = h.ok("t", "j/get")["execution"]["jobDocument"]["steps"][0]
    assert step["action"]["input"]["path"] == "/opt/handlers"
    assert h.call("DescribeJob", jobId="j")["job"]["documentParameters"] == {"pathToHandler": "/opt/handlers"}


def test_deleting_a_target_group_removes_the_continuous_executions_of_its_members() -> None:
    h = Harness()
    h.things("a", "b", group="g")
    h.job("j", [group_arn("g")], targetSelection="CONTINUOUS")
    h.call("DeleteThingGroup", thingGroupName="g")
    assert h.status("a", "j/get") == "REMOVED"
    assert h.call("ListThingGroupsForThing", thingName="a")["thingGroups"] == []
    assert h.call("DeleteThingGroup", thingGroupName="g") == {}, (
        "deleting a missing group succeeds, as on AWS"
    )


def test_a_thing_in_two_target_groups_keeps_its_execution_until_it_leaves_both() -> None:
    h = Harness()
    h.things("a", group="g1")
    h.call("CreateThingGroup", thingGroupName="g2")
    h.call("AddThingToThingGroup", thingGroupName="g2", thingName="a")
    h.job("j", [group_arn("g1"), group_arn("g2")], targetSelection="CONTINUOUS")
    h.call("RemoveThingFromThingGroup", thingGroupName="g1", thingName="a")
    assert h.status("a", "j/get") == "QUEUED"
    h.call("RemoveThingFromThingGroup", thingGroupName="g2", thingName="a")
    assert h.status("a", "j/get") == "REMOVED"


def test_window_state_and_rollout_survive_a_restart() -> None:
    h = Harness(now=at(12, 0))
    h.things(*[f"r{i}" for i in range(5)], group="fleet")
    windows = [{"startTime": "cron(0 13 * * ? *)", "durationInMinutes": 2}]
    h.job(
        "j",
        [group_arn("fleet")],
        schedulingConfig={"maintenanceWindows": windows},
        jobExecutionsRolloutConfig={"maximumPerMinute": 2},
    )
    h.run_until(at(13, 0, 30))
    h = h.restart()
    assert h.engine.next_deadline() == at(13, 1)
    h.run_until(at(13, 5))
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 4, (
        "2 at 13:00, 2 at 13:01"
    )
    h = h.restart()
    assert h.engine.next_deadline() == at(13, 0, day=16)
    h.run_until(at(13, 0, day=16))
    assert len(h.call("ListJobExecutionsForJob", jobId="j")["executionSummaries"]) == 5


def test_list_thing_groups_by_parent() -> None:
    h = Harness()
    h.call("CreateThingGroup", thingGroupName="root")
    h.call("CreateThingGroup", thingGroupName="mid", parentGroupName="root")
    h.call("CreateThingGroup", thingGroupName="leaf", parentGroupName="mid")

    def names(**params: Any) -> list[str]:
        return [g["groupName"] for g in h.call("ListThingGroups", **params)["thingGroups"]]

    assert names() == ["leaf", "mid", "root"]
    assert names(parentGroup="root") == ["mid"]
    assert names(parentGroup="root", recursive=True) == ["leaf", "mid"]
    assert (
        api_error(h, "CreateThingGroup", thingGroupName="x", parentGroupName="ghost").code
        == "InvalidRequestException"
    )


def test_every_device_payload_parses_with_the_aws_iot_device_sdk_models() -> None:
    """The peer client's own model classes (awsiot.iotjobs, used by IotJobsClientV2 and V1) read our payloads."""
    from awsiot import iotjobs

    h = Harness()
    h.things("t", group="g")
    h.job("j", [group_arn("g")], {"ToDo": "Reboot"}, targetSelection="CONTINUOUS")
    h.job("k", [thing_arn("t")], {"ToDo": "Nothing"})
    notify = {
        "notify": iotjobs.JobExecutionsChangedEvent,
        "notify-next": iotjobs.NextJobExecutionChangedEvent,
    }
    for kind, payload in h.notifications("t"):
        notify[kind].from_payload(payload)
    pending = iotjobs.GetPendingJobExecutionsResponse.from_payload(h.ok("t", "get", {"clientToken": "a"}))
    assert [s.job_id for s in pending.queued_jobs] == ["j", "k"] and pending.client_token == "a"
    started = iotjobs.StartNextJobExecutionResponse.from_payload(
        h.ok("t", "start-next", {"stepTimeoutInMinutes": 5})
    )
    assert started.execution.status == "IN_PROGRESS" and started.execution.job_document == {"ToDo": "Reboot"}
    assert started.execution.version_number == 2 and started.execution.thing_name == "t"
    described = iotjobs.DescribeJobExecutionResponse.from_payload(h.ok("t", "j/get", {"executionNumber": 1}))
    assert described.execution.started_at is not None
    update = {
        "status": "SUCCEEDED",
        "expectedVersion": 2,
        "includeJobExecutionState": True,
        "includeJobDocument": True,
    }
    updated = iotjobs.UpdateJobExecutionResponse.from_payload(h.ok("t", "j/update", update))
    assert updated.execution_state.status == "SUCCEEDED" and updated.job_document == {"ToDo": "Reboot"}
    for kind, payload in h.notifications("t"):
        event = notify[kind].from_payload(payload)
        if kind == "notify-next":
            assert isinstance(event, iotjobs.NextJobExecutionChangedEvent) and event.execution.job_id == "k"
    error = iotjobs.RejectedError.from_payload(
        h.rejected("t", "j/update", {"status": "SUCCEEDED", "clientToken": "z"})
    )
    assert error.code == "InvalidStateTransition" and error.execution_state.status == "SUCCEEDED"
    assert error.client_token == "z" and error.timestamp is not None
