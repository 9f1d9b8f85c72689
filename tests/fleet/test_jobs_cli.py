"""``roomba-fleet jobs``: the options become CreateJob's configurations exactly (checked against botocore's
own model), mistakes are one-line usage errors before anything is sent; then every sub-command against a
real local cloud, with a robot played by AWS's device protocol over MQTT, and ``watch`` carrying on through
a restart of ``up``."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from base.testing import wait_until
from fleet.cli import main
from fleet.jobs import (
    STATUSES,
    Execution,
    Poll,
    Progress,
    UsageError,
    build_parser,
    create_params,
    live_view,
    parse_abort,
    parse_exponential,
    parse_retry,
    progress_text,
    read_document,
    spec_from_args,
)
from localcloud.apiclient import ApiClient
from localcloud.awsapi.errors import ApiError
from localcloud.testing import LocalCloud, PahoRobot


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spec(*argv: str) -> Any:
    return spec_from_args(build_parser().parse_args(["create", *argv]))


# the request ---------------------------------------------------------------------------------------------------
def test_every_option_lands_in_its_createjob_member() -> None:
    s = spec(
        "fw-2",
        "--document-json",
        '{"operation": "mission", "action": "dock"}',
        "--targets",
        "r1",
        "--continuous",
        "--max-per-minute",
        "50",
        "--exponential",
        "10,1.5,SUCCEEDED:20",
        "--abort",
        "FAILED:12.5:3",
        "--abort",
        "all:50:10",
        "--timeout-minutes",
        "30",
        "--retry",
        "FAILED:2",
        "--retry",
        "TIMED_OUT:1",
        "--description",
        "dock them",
    )
    params = create_params(s, ["arn:aws:iot:us-east-1:000000000000:thing/r1"])
    assert params == {
        "jobId": "fw-2",
        "targets": ["arn:aws:iot:us-east-1:000000000000:thing/r1"],
        "targetSelection": "CONTINUOUS",
        "document": '{"operation":"mission","action":"dock"}',
        "description": "dock them",
        "jobExecutionsRolloutConfig": {
            "maximumPerMinute": 50,
            "exponentialRate": {
                "baseRatePerMinute": 10,
                "incrementFactor": 1.5,
                "rateIncreaseCriteria": {"numberOfSucceededThings": 20},
            },
        },
        "abortConfig": {
            "criteriaList": [
                {
                    "failureType": "FAILED",
                    "action": "CANCEL",
                    "thresholdPercentage": 12.5,
                    "minNumberOfExecutedThings": 3,
                },
                {
                    "failureType": "ALL",
                    "action": "CANCEL",
                    "thresholdPercentage": 50.0,
                    "minNumberOfExecutedThings": 10,
                },
            ]
        },
        "timeoutConfig": {"inProgressTimeoutInMinutes": 30},
        "jobExecutionsRetryConfig": {
            "criteriaList": [
                {"failureType": "FAILED", "numberOfRetries": 2},
                {"failureType": "TIMED_OUT", "numberOfRetries": 1},
            ]
        },
    }
    # botocore's own validator takes it as a CreateJob request
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("iot").operation_model("CreateJob")
    report = ParamValidator().validate(params, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_defaults_are_a_snapshot_job_with_no_configurations(tmp_path: Path) -> None:
    doc = tmp_path / "job.json"
    doc.write_text('{\n  "operation": "doctor"\n}\n')
    params = create_params(spec("j1", "--document", str(doc), "--all"), ["arn:t"])
    assert params == {
        "jobId": "j1",
        "targets": ["arn:t"],
        "targetSelection": "SNAPSHOT",
        "document": '{"operation":"doctor"}',
    }
    params = create_params(spec("j2", "--template", "AWS-Reboot", "--prefix", "lab-"), ["arn:t"], "arn:tpl")
    assert params == {
        "jobId": "j2",
        "targets": ["arn:t"],
        "targetSelection": "SNAPSHOT",
        "jobTemplateArn": "arn:tpl",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "50,2,NOTIFIED:1000",
            {
                "baseRatePerMinute": 50,
                "incrementFactor": 2.0,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 1000},
            },
        ),
        (
            "1,5,succeeded:1",
            {
                "baseRatePerMinute": 1,
                "incrementFactor": 5.0,
                "rateIncreaseCriteria": {"numberOfSucceededThings": 1},
            },
        ),
    ],
)
def test_exponential_rates(text: str, expected: dict[str, Any]) -> None:
    assert parse_exponential(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("50,2", "use BASE,FACTOR"),
        ("0,2,NOTIFIED:5", "must be 1..1000"),
        ("50,1.05,NOTIFIED:5", "must be 1.1..5"),
        ("50,1.25,NOTIFIED:5", "one decimal"),
        ("50,2,STARTED:5", "NOTIFIED:N or SUCCEEDED:N"),
        ("50,2,NOTIFIED:0", "must be 1.."),
        ("x,2,NOTIFIED:5", "not a whole number"),
    ],
    ids=["short", "base", "factor-low", "factor-decimals", "criteria", "count", "nan"],
)
def test_exponential_mistakes(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_exponential(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("FAILED:10", "TYPE:PCT:MIN"),
        ("SLOW:10:5", "TYPE is one of"),
        ("FAILED:0:5", "above 0"),
        ("FAILED:101:5", "0..100"),
        ("FAILED:10.125:5", "2 decimals"),
        ("FAILED:10:0", "1.."),
    ],
    ids=["short", "type", "zero", "over", "decimals", "min"],
)
def test_abort_mistakes(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_abort(text)


def test_retry_criteria_and_mistakes() -> None:
    assert parse_retry("timed_out:10") == {"failureType": "TIMED_OUT", "numberOfRetries": 10}
    for text, why in (("FAILED", "TYPE:N"), ("REJECTED:1", "never retried"), ("FAILED:11", "0..10")):
        with pytest.raises(UsageError, match=why):
            parse_retry(text)
    with pytest.raises(UsageError, match="one per failure type"):
        spec("j", "--document-json", "{}", "--all", "--retry", "FAILED:1", "--retry", "FAILED:2")
    with pytest.raises(UsageError, match="needs --timeout-minutes"):
        spec("j", "--document-json", "{}", "--all", "--retry", "TIMED_OUT:1")


def test_documents_must_be_json_objects_within_awss_size(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not JSON"):
        read_document(text="{nope")
    with pytest.raises(UsageError, match="a JSON object"):
        read_document(text="[1]")
    with pytest.raises(UsageError, match="at most 32768"):
        read_document(text=json.dumps({"pad": "x" * 33000}))
    with pytest.raises(UsageError, match="cannot read it"):
        read_document(path=str(tmp_path / "absent.json"))
    with pytest.raises(UsageError, match="JOB_ID"):
        spec("no spaces", "--document-json", "{}", "--all")


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["create", "j", "--all"], "one of the arguments --document"),
        (["create", "j", "--document-json", "{}"], "one of the arguments --targets"),
        (["create", "j", "--document-json", "{}", "--all", "--prefix", "p"], "not allowed with"),
        (["create", "j", "--document-json", "{}", "--all", "--max-per-minute", "1001"], "1..1000"),
        (["create", "j", "--document-json", "{}", "--all", "--timeout", "5"], "--timeout is for --wait"),
        (["executions"], "give JOB_ID, or --thing"),
        (["watch", "j", "--interval", "0"], "must be above 0"),
    ],
    ids=[
        "no-document",
        "no-targets",
        "two-targets",
        "rate",
        "timeout-without-wait",
        "executions",
        "interval",
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        code, _out, err = run_cli(capsys, "jobs", *argv, "--dir", str(tmp_path))
    except SystemExit as exc:
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 2
    assert why in err and len(err.strip().splitlines()) == 1, err


def test_a_cloud_that_never_ran_says_how_to_start_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _out, err = run_cli(capsys, "jobs", "list", "--dir", str(tmp_path))
    assert code == 2
    assert "roomba-fleet up --dir" in err and len(err.strip().splitlines()) == 1


# the view -------------------------------------------------------------------------------------------------------
def _progress(status: str = "IN_PROGRESS", selection: str = "SNAPSHOT", **counts: int) -> Progress:
    details = {f"numberOf{k}Things": v for k, v in counts.items()}
    rows = [
        Execution("r1", "SUCCEEDED", 1, 0, 100.0, 101.0, 102.0),
        Execution("r2", "FAILED", 1, 0, 100.0, 101.0, 105.0),
        Execution("r3", "QUEUED", 1, 0, 100.0, None, 100.0),
    ]
    return Progress(
        {"jobId": "j", "status": status, "targetSelection": selection, "jobProcessDetails": details}, rows
    )


def test_done_means_completed_or_for_continuous_jobs_nothing_left_to_run() -> None:
    assert not _progress(Succeeded=1, Queued=1).done
    assert _progress("COMPLETED", Succeeded=1, Failed=1).done
    assert _progress("CANCELED", Canceled=2).done
    assert not _progress("IN_PROGRESS", "CONTINUOUS").done, (
        "a continuous job with no executions yet is waiting"
    )
    assert not _progress("IN_PROGRESS", "CONTINUOUS", Succeeded=1, InProgress=1).done
    assert _progress("IN_PROGRESS", "CONTINUOUS", Succeeded=2).done
    assert (
        _progress("COMPLETED", Succeeded=2).all_succeeded
        and not _progress("COMPLETED", Succeeded=1, Failed=1).all_succeeded
    )


def test_the_text_view_has_counters_bars_and_the_latest_executions_first() -> None:
    text = progress_text(_progress(Succeeded=1, Failed=1, Queued=1))
    lines = text.splitlines()
    assert lines[0] == "job j: IN_PROGRESS (SNAPSHOT), 3 executions: 1 QUEUED, 1 SUCCEEDED, 1 FAILED"
    assert lines[1].split()[0] == "QUEUED" and lines[1].split()[-1] == "1" and "#" * 10 in lines[1]
    recent = [line.split()[0] for line in lines[lines.index("recent:") + 2 :]]
    assert recent == ["r2", "r1", "r3"]


def test_the_live_view_draws_every_status_and_says_when_it_is_reconnecting() -> None:
    from rich.console import Console

    poll = Poll(
        state="reconnecting",
        attempt=2,
        reason="nothing listens on 127.0.0.1:8444",
        last=_progress(Succeeded=1, Failed=1, Queued=1),
    )
    console = Console(width=100, height=40, record=True, color_system=None)
    console.print(live_view(poll, "j", 100, 40))
    screen = console.export_text()
    assert "roomba-fleet jobs watch j" in screen and "not connected" in screen
    assert "reconnecting (attempt 2)… nothing listens on 127.0.0.1:8444" in screen
    for status in (
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "REJECTED",
        "TIMED_OUT",
        "CANCELED",
        "REMOVED",
    ):
        assert status in screen
    assert screen.index("r2 ") < screen.index("r1 ") < screen.index("r3 ")


# against a real local cloud ----------------------------------------------------------------------------------
JOB_DOC = '{"operation":"mission","action":"dock"}'


def api(cloud: LocalCloud) -> ApiClient:
    return ApiClient(cloud.dir)


def make_things(cloud: LocalCloud, *names: str) -> None:
    """Robots added as ``robot add`` does, and made things right away (the service also picks them up)."""
    with api(cloud) as client:
        for name in names:
            cloud.add_robot(name)
            try:
                client.call("CreateThing", {"thingName": name})
            except ApiError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise


def boto3_iot(cloud: LocalCloud) -> Any:
    """AWS's own client through the ``local`` profile ``up`` wrote: the independent view of what we did."""
    return cloud.boto3_client("iot")


class Device:
    """One robot speaking AWS's jobs protocol over MQTT with its own certificate (paho)."""

    def __init__(self, cloud: LocalCloud, thing: str) -> None:
        self.thing = thing
        self.robot = PahoRobot(cloud, thing)
        self.robot.subscribe(f"$aws/things/{thing}/jobs/#")

    def request(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        token = uuid.uuid4().hex
        self.robot.publish(f"$aws/things/{self.thing}/jobs/{what}", {**body, "clientToken": token})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for topic, doc in self.robot.collect(1, timeout=1):
                answer = topic.endswith(("/accepted", "/rejected"))  # not our own request's echo
                if answer and isinstance(doc, dict) and doc.get("clientToken") == token:
                    assert topic.endswith("/accepted"), (topic, doc)
                    return doc
        raise AssertionError(f"{self.thing}: no answer to {what}")

    def run_next(self, status: str = "SUCCEEDED") -> dict[str, Any]:
        """start-next, then the final status; the execution started (waits for one to be queued)."""
        deadline = time.monotonic() + 15
        while True:
            execution = self.request("start-next", {}).get("execution")
            if execution or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert execution, f"{self.thing}: nothing queued"
        self.request(
            f"{execution['jobId']}/update",
            {
                "status": status,
                "expectedVersion": execution["versionNumber"],
                "statusDetails": {"by": "test"},
            },
        )
        return dict(execution)

    def close(self) -> None:
        self.robot.close()


def uid() -> str:
    return uuid.uuid4().hex[:6]


@pytest.mark.slow
def test_create_describe_executions_cancel_and_delete(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    u = uid()
    a, b = f"cli-a-{u}", f"cli-b-{u}"
    make_things(local_cloud, a, b)
    job = f"cli-job-{u}"
    code, out, err = run_cli(
        capsys,
        "jobs",
        "create",
        job,
        "--document-json",
        JOB_DOC,
        "--targets",
        a,
        b,
        "--timeout-minutes",
        "30",
        "--max-per-minute",
        "100",
        *local_cloud.cli_args,
        "--json",
    )
    assert (code, err) == (0, ""), err
    created = json.loads(out)
    assert created["jobId"] == job and created["jobArn"].endswith(f":job/{job}") and created["targets"] == 2
    described = boto3_iot(local_cloud).describe_job(jobId=job)["job"]
    assert [t.rsplit("/", 1)[1] for t in described["targets"]] == [a, b]
    assert described["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert described["jobExecutionsRolloutConfig"]["maximumPerMinute"] == 100

    def queued() -> bool:
        code, out, _ = run_cli(capsys, "jobs", "executions", job, *local_cloud.cli_args, "--json")
        return code == 0 and sorted(e["status"] for e in json.loads(out)["executions"]) == [
            "QUEUED",
            "QUEUED",
        ]

    wait_until(queued, 10, "two queued executions")
    code, out, _ = run_cli(capsys, "jobs", "describe", job, *local_cloud.cli_args)
    assert code == 0 and f"job {job}: IN_PROGRESS (SNAPSHOT)" in out and "executions: 2 QUEUED" in out
    code, out, _ = run_cli(capsys, "jobs", "executions", job, *local_cloud.cli_args)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [[a, "QUEUED"], [b, "QUEUED"]]
    code, out, _ = run_cli(capsys, "jobs", "list", "--status", "IN_PROGRESS", *local_cloud.cli_args, "--json")
    assert job in [j["jobId"] for j in json.loads(out)["jobs"]]
    code, out, _ = run_cli(capsys, "jobs", "watch", job, "--once", *local_cloud.cli_args, "--json")
    assert code == 0 and json.loads(out)["counts"]["QUEUED"] == 2
    code, out, err = run_cli(capsys, "jobs", "cancel", job, "--comment", "test", *local_cloud.cli_args)
    assert (code, err) == (0, "") and f"canceled job {job}" in out

    def canceled() -> bool:
        _code, out, _ = run_cli(capsys, "jobs", "describe", job, *local_cloud.cli_args, "--json")
        doc = json.loads(out)["job"]
        return bool(doc["status"] == "CANCELED" and doc["jobProcessDetails"]["numberOfCanceledThings"] == 2)

    wait_until(canceled, 10, "the job canceled")
    code, _out, err = run_cli(capsys, "jobs", "delete", job, "--force", *local_cloud.cli_args)
    assert (code, err) == (0, "")
    code, out, err = run_cli(capsys, "jobs", "describe", job, *local_cloud.cli_args)
    assert (
        code == 1 and out == "" and err.startswith("roomba-fleet jobs describe: ResourceNotFoundException: ")
    )


@pytest.mark.slow
def test_targets_by_prefix_group_and_all_and_unknown_names(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    u = uid()
    names = [f"pfx-{u}-1", f"pfx-{u}-2"]
    make_things(local_cloud, *names, f"other-{u}")
    code, out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"p-{u}",
        "--document-json",
        JOB_DOC,
        "--prefix",
        f"pfx-{u}-",
        *local_cloud.cli_args,
    )
    assert code == 0, err
    assert [
        t.rsplit("/", 1)[1] for t in boto3_iot(local_cloud).describe_job(jobId=f"p-{u}")["job"]["targets"]
    ] == names
    group = f"grp-{u}"
    with api(local_cloud) as client:
        client.call("CreateThingGroup", {"thingGroupName": group})
        client.call("AddThingToThingGroup", {"thingGroupName": group, "thingName": names[0]})
    code, out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"g-{u}",
        "--document-json",
        JOB_DOC,
        "--group",
        group,
        "--continuous",
        *local_cloud.cli_args,
        "--json",
    )
    assert code == 0, err
    job = boto3_iot(local_cloud).describe_job(jobId=f"g-{u}")["job"]
    assert job["targets"] == [f"arn:aws:iot:us-east-1:000000000000:thinggroup/{group}"]
    assert job["targetSelection"] == "CONTINUOUS"
    code, out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"a-{u}",
        "--document-json",
        JOB_DOC,
        "--all",
        *local_cloud.cli_args,
        "--json",
    )
    assert code == 0 and json.loads(out)["targets"] >= 3
    for argv, why in (
        (["--targets", f"nosuch-{u}"], f"no such thing(s): nosuch-{u}"),
        (["--group", f"nosuch-{u}"], f"--group nosuch-{u}: no such thing group"),
        (["--prefix", f"nosuch-{u}"], f"--prefix nosuch-{u}: no thing's name starts with it"),
        (["--targets", names[0], "--template", "nosuch"], None),
    ):
        doc = [] if "--template" in argv else ["--document-json", JOB_DOC]
        code, out, err = run_cli(capsys, "jobs", "create", f"x-{u}", *doc, *argv, *local_cloud.cli_args)
        assert code == 2 and out == "", err
        assert why is None or why in err, err
    fresh = f"fresh-{u}"
    local_cloud.add_robot(fresh)  # `robot add` and the job right after: the cloud registers it within seconds
    code, out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"f-{u}",
        "--document-json",
        JOB_DOC,
        "--targets",
        fresh,
        *local_cloud.cli_args,
        "--json",
    )
    assert (code, json.loads(out)["targets"]) == (0, 1), err
    code, _out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"p-{u}",
        "--document-json",
        JOB_DOC,
        "--targets",
        names[0],
        *local_cloud.cli_args,
    )
    assert code == 1 and "ResourceAlreadyExistsException" in err


def _wait_process(cloud: LocalCloud, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet", "jobs", *argv, *cloud.cli_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_create_wait_follows_the_job_until_the_robots_have_run_it(local_cloud: LocalCloud) -> None:
    u = uid()
    ok, bad = f"wait-ok-{u}", f"wait-bad-{u}"
    make_things(local_cloud, ok, bad)
    robots = [Device(local_cloud, ok), Device(local_cloud, bad)]
    try:
        proc = _wait_process(
            local_cloud,
            "create",
            f"w1-{u}",
            "--document-json",
            JOB_DOC,
            "--targets",
            ok,
            "--wait",
            "--timeout",
            "60",
            "--json",
        )
        assert robots[0].run_next("SUCCEEDED")["jobId"] == f"w1-{u}"
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        doc = json.loads(out)
        assert (
            doc["job"]["status"] == "COMPLETED"
            and doc["job"]["jobProcessDetails"]["numberOfSucceededThings"] == 1
        )
        proc = _wait_process(
            local_cloud,
            "create",
            f"w2-{u}",
            "--document-json",
            JOB_DOC,
            "--targets",
            ok,
            bad,
            "--wait",
            "--timeout",
            "60",
        )
        robots[0].run_next("SUCCEEDED")
        robots[1].run_next("FAILED")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (out, err)
        assert out.splitlines()[0].startswith(f"created job w2-{u} for 2 target(s)")
        assert "1 SUCCEEDED, 1 FAILED" in out.splitlines()[-1]
        assert f"job w2-{u} ended COMPLETED: 1 SUCCEEDED, 1 FAILED" in err
        proc = _wait_process(
            local_cloud,
            "create",
            f"w3-{u}",
            "--document-json",
            JOB_DOC,
            "--targets",
            bad,
            "--wait",
            "--timeout",
            "2",
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and "not done after 2 s: 1 QUEUED" in err, (out, err)
    finally:
        for r in robots:
            r.close()


@pytest.mark.slow
def test_watch_carries_on_through_a_restart_of_up(new_cloud: Callable[..., LocalCloud]) -> None:
    cloud = new_cloud()
    thing = "watch-robot"
    make_things(cloud, thing)
    with api(cloud) as client:
        client.call(
            "CreateJob",
            {
                "jobId": "watched",
                "targets": [f"arn:aws:iot:us-east-1:000000000000:thing/{thing}"],
                "document": JOB_DOC,
            },
        )
    proc = _wait_process(cloud, "watch", "watched", "--interval", "0.3")
    lines: queue.Queue[tuple[str, str]] = queue.Queue()

    def pump(name: str, stream: IO[str]) -> None:
        for line in stream:
            lines.put((name, line.rstrip()))

    assert proc.stdout is not None and proc.stderr is not None
    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=pump, args=(name, stream), daemon=True).start()

    def expect(where: str, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                got = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(got)
            if got[0] == where and text in got[1]:
                return
        raise AssertionError(f"no {text!r} on std{where}; saw {seen}")

    try:
        expect("out", "IN_PROGRESS: 1 QUEUED")
        cloud.stop()
        expect("err", "lost the control plane")
        cloud = new_cloud()
        robot = Device(cloud, thing)
        try:
            robot.run_next("SUCCEEDED")
        finally:
            robot.close()
        expect("out", "COMPLETED: 1 SUCCEEDED")
        assert proc.poll() is None, "watch keeps watching until interrupted"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


@pytest.mark.slow
def test_an_artifact_named_in_a_document_reaches_the_robot_as_a_url_that_downloads_it(
    local_cloud: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = uid()
    thing = f"art-{u}"
    make_things(local_cloud, thing)
    payload = os.urandom(4096)
    (tmp_path / "blob.bin").write_bytes(payload)
    code, out, _ = run_cli(
        capsys,
        "artifact",
        "put",
        str(tmp_path / "blob.bin"),
        "--key",
        f"t/{u}.bin",
        *local_cloud.cli_args,
        "--json",
    )
    assert code == 0
    placeholder = json.loads(out)["placeholder"]
    document = json.dumps({"operation": "collect-logs", "url": placeholder})
    code, _out, err = run_cli(
        capsys,
        "jobs",
        "create",
        f"art-{u}",
        "--document-json",
        document,
        "--targets",
        thing,
        *local_cloud.cli_args,
    )
    assert code == 0, err
    robot = Device(local_cloud, thing)
    try:
        execution = robot.request("start-next", {})["execution"]
    finally:
        robot.close()
    url = execution["jobDocument"]["url"]
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == payload


@pytest.mark.slow
def test_watch_on_a_terminal_draws_counters_bars_and_recent_executions(local_cloud: LocalCloud) -> None:
    from base.ptyterm import PtyProcess

    u = uid()
    done, waiting = f"tty-done-{u}", f"tty-wait-{u}"
    make_things(local_cloud, done, waiting)
    with api(local_cloud) as client:
        arns = [str(client.call("DescribeThing", {"thingName": t})["thingArn"]) for t in (done, waiting)]
        client.call("CreateJob", {"jobId": f"tty-{u}", "targets": arns, "document": JOB_DOC})
    robot = Device(local_cloud, done)
    try:
        robot.run_next("SUCCEEDED")
    finally:
        robot.close()
    fleet = str(Path(sys.executable).with_name("roomba-fleet"))
    with PtyProcess([fleet, "jobs", "watch", f"tty-{u}", *local_cloud.cli_args], rows=30, cols=100) as watch:
        lines = watch.wait_screen(
            lambda ls: (
                any(line.startswith(done) for line in ls)
                and any("1 QUEUED, 1 SUCCEEDED" in line for line in ls)
            ),
            30,
            "the counters and the robot that ran it",
        )
        assert lines[0].lstrip().startswith(f"roomba-fleet jobs watch tty-{u}") and "connected" in lines[0]
        bars = {
            line.split()[0]: line.split()[-1]
            for line in lines
            if line.split() and line.split()[0] in STATUSES
        }
        assert bars == {s: "1" if s in ("QUEUED", "SUCCEEDED") else "0" for s in STATUSES}, lines
        rows = [line.split()[:2] for line in lines if line.startswith((done, waiting))]
        assert rows == [[done, "SUCCEEDED"], [waiting, "QUEUED"]], "the latest first"
        assert watch.scrolled() == 0
        assert watch.interrupt() == 0
