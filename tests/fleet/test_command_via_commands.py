"""``roomba-fleet command ... --via commands``: the command through AWS IoT Commands instead of the shadow.

Without a cloud: the command's payload and name, and the outcome of each execution status, against the
Commands engine itself (as the control plane would run it). With a real local cloud (``roomba-fleet up``:
Mosquitto over mutual TLS and its control plane, called with the ``local`` profile's signed requests), a
device with the robot's certificate (paho) answers the request as AWS's device SDKs do; one that never
answers times out with exit 3.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from base.testing import wait_until
from fleet import aws_commands
from fleet import cli as fleet_cli
from fleet.command import Outcome
from localcloud.awsapi.errors import ApiError
from localcloud.commands.engine import CommandsEngine
from localcloud.testing import LocalCloud, PahoRobot

ARN = "arn:aws:iot:us-east-1:000000000000"


class EngineApi:
    """The control plane as the iot service runs it: each call goes to the engine; a device answers."""

    def __init__(self, answer: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self.engine = CommandsEngine(things=lambda name: name.startswith("r"))
        self.answer = answer or {}
        self.calls: list[tuple[str, str]] = []
        self.now = 1_000.0

    def call(
        self, operation: str, params: Mapping[str, Any] | None = None, *, service: str = "iot"
    ) -> dict[str, Any]:
        assert CommandsEngine.SERVICES[operation] == service
        self.calls.append((service, operation))
        result, outputs = self.engine.call(operation, dict(params or {}), self.now)
        for topic, payload in outputs:
            if "/request/" in topic:
                thing, execution_id = topic.split("/")[3], topic.split("/")[5]
                doc = json.loads(payload)
                for update in self.answer.get(doc["action"], []):
                    response = f"$aws/commands/things/{thing}/executions/{execution_id}/response/json"
                    self.engine.handle(response, json.dumps(update).encode(), self.now)
        return result

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.engine.tick(self.now)

    def clock(self) -> float:
        return self.now


def send(api: EngineApi, things: list[str], command: dict[str, Any], **kw: Any) -> dict[str, Any]:
    seen: list[str] = []
    outcomes = aws_commands.send(
        api,
        things,
        command,
        outcome=Outcome,
        on_outcome=lambda o: seen.append(o.thing),
        sleep=api.sleep,
        clock=api.clock,
        **{"wait": True, "timeout": 5.0, **kw},
    )
    assert sorted(seen) == sorted(things)
    return outcomes


def test_the_payload_is_the_command_without_its_id_and_one_command_serves_every_run() -> None:
    api = EngineApi({"dock": [{"status": "IN_PROGRESS"}, {"status": "SUCCEEDED"}]})
    outcomes = send(api, ["r1", "r2"], {"id": "cli-1", "action": "dock"})
    assert {t: o.status for t, o in outcomes.items()} == {"r1": "done", "r2": "done"}
    stored = api.engine.commands["roomba-dock"]
    assert json.loads(base64.b64decode(stored["payload"]["content"])) == {"action": "dock"}
    assert stored["payload"]["contentType"] == "application/json"
    send(api, ["r1"], {"id": "cli-2", "action": "dock"})
    assert [op for _, op in api.calls].count("CreateCommand") == 1
    assert len(api.engine.executions) == 3
    assert outcomes["r1"].reported["status"] == "SUCCEEDED"


def test_arguments_make_a_command_of_their_own() -> None:
    drive = {"action": "drive", "velocity_mm_s": 100, "radius_mm": 0, "duration_ms": 500}
    other = {**drive, "velocity_mm_s": -100}
    assert aws_commands.command_id_for(drive) != aws_commands.command_id_for(other)
    assert aws_commands.command_id_for(drive).startswith("roomba-drive-")
    assert aws_commands.command_id_for({"action": "set_clock", "day": 1, "hour": 2, "minute": 3}).startswith(
        "roomba-set-clock-"
    )
    assert aws_commands.execution_timeout({"action": "drive", "duration_ms": 60_000}, 10) == 65
    assert aws_commands.execution_timeout({"action": "clean"}, 2.5) == 3


def test_the_same_invocation_again_starts_no_second_execution() -> None:
    api = EngineApi({"clean": [{"status": "SUCCEEDED"}]})
    first = send(api, ["r1"], {"id": "cli-same", "action": "clean"})
    again = send(api, ["r1"], {"id": "cli-same", "action": "clean"})
    assert first["r1"].reported["executionId"] == again["r1"].reported["executionId"]
    assert len(api.engine.executions) == 1


@pytest.mark.parametrize(
    ("updates", "status", "reason"),
    [
        (
            [
                {
                    "status": "FAILED",
                    "statusReason": {"reasonCode": "COMMAND_FAILED", "reasonDescription": "link down"},
                }
            ],
            "failed",
            "link down",
        ),
        (
            [{"status": "REJECTED", "statusReason": {"reasonCode": "INVALID_COMMAND"}}],
            "rejected",
            "INVALID_COMMAND",
        ),
        ([], "timeout", "$NO_RESPONSE_FROM_DEVICE"),
        ([{"status": "IN_PROGRESS"}], "timeout", "$NO_RESPONSE_FROM_DEVICE"),
    ],
    ids=["failed", "rejected", "never_answered", "stuck_in_progress"],
)
def test_each_final_status_is_an_outcome(updates: list[dict[str, Any]], status: str, reason: str) -> None:
    api = EngineApi({"spot": updates})
    outcome = send(api, ["r1"], {"id": "cli-x", "action": "spot"}, timeout=3.0)["r1"]
    assert (outcome.status, outcome.reason) == (status, reason)


def test_an_unknown_thing_is_not_sent_with_the_clouds_reason() -> None:
    api = EngineApi()
    outcome = send(api, ["ghost"], {"id": "cli-g", "action": "stop"})["ghost"]
    assert outcome.status == "not-sent" and outcome.reason is not None
    assert outcome.reason.startswith("ResourceNotFoundException")


def test_without_wait_each_robot_is_sent() -> None:
    api = EngineApi()
    outcomes = send(api, ["r1", "r2"], {"id": "cli-n", "action": "locate"}, wait=False)
    assert {o.status for o in outcomes.values()} == {"sent"}
    assert {ex["status"] for ex in api.engine.executions.values()} == {"CREATED"}


def test_a_cloud_error_stops_before_anything_is_started() -> None:
    class Refusing(EngineApi):
        def call(
            self, operation: str, params: Mapping[str, Any] | None = None, *, service: str = "iot"
        ) -> dict[str, Any]:
            if operation == "CreateCommand":
                raise ApiError(400, "ValidationException", "no")
            return super().call(operation, params, service=service)

    api = Refusing()
    with pytest.raises(ApiError):
        send(api, ["r1"], {"id": "cli-e", "action": "dock"})
    assert api.engine.executions == {}


# --- a real local cloud ----------------------------------------------------------------------------------
class Device:
    """A robot played by paho with the robot's certificate: it answers each request as AWS's device SDKs
    do (IN_PROGRESS, then the final status), waiting for each update's answer."""

    def __init__(self, cloud: LocalCloud, thing: str, final: str | None) -> None:
        self.thing = thing
        self.final = final
        self.client = PahoRobot(cloud, thing)
        prefix = f"$aws/commands/things/{thing}/executions/+/"
        self.client.subscribe(prefix + "request/json", prefix + "response/accepted/json")
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for topic, payload in self.client.collect(1, timeout=0.2):
                parts = topic.split("/")
                if parts[-2:] != ["request", "json"] or self.final is None:
                    continue
                self.requests.append(payload)
                response = "/".join([*parts[:-2], "response", "json"])
                self.client.publish(response, {"status": "IN_PROGRESS"})
                wait_until(lambda: self.client.collect(1, timeout=0.5), 10, "the IN_PROGRESS answer")
                self.client.publish(response, {"status": self.final})

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.client.close()


@pytest.fixture
def device(local_cloud: LocalCloud, request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Device] = []

    def make(final: str | None) -> Device:
        thing = "via-" + request.node.name.removeprefix("test_")[:30].replace("_", "-")
        local_cloud.add_robot(thing)
        made.append(Device(local_cloud, thing, final))
        # the cloud knows a robot as a thing within seconds of `robot add`
        iot = local_cloud.boto3_client("iot")
        wait_until(lambda: _known(iot, thing), 20, f"thing {thing}")
        return made[-1]

    yield make
    for d in made:
        d.close()


def _known(iot: Any, thing: str) -> bool:
    try:
        iot.describe_thing(thingName=thing)
    except iot.exceptions.ResourceNotFoundException:
        return False
    return True


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = fleet_cli.main(["command", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_via_commands_wait_reports_done_from_the_devices_answer(
    local_cloud: LocalCloud, device: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    robot = device("SUCCEEDED")
    args = (
        robot.thing,
        "dock",
        "--via",
        "commands",
        "--wait",
        "--timeout",
        "15",
        "--json",
        *local_cloud.cli_args,
    )
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    doc = json.loads(out)
    result = doc["robots"][robot.thing]
    assert result["status"] == "done" and result["reported"]["status"] == "SUCCEEDED"
    assert robot.requests == [{"action": "dock"}]
    iot = local_cloud.boto3_client("iot")
    got = iot.get_command_execution(
        executionId=result["reported"]["executionId"], targetArn=f"{ARN}:thing/{robot.thing}"
    )
    assert got["status"] == "SUCCEEDED" and got["commandArn"] == f"{ARN}:command/roomba-dock"


@pytest.mark.slow
def test_via_commands_a_robot_that_never_answers_times_out_with_exit_3(
    local_cloud: LocalCloud, device: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    robot = device(None)
    code, out, err = run_cli(
        capsys, robot.thing, "locate", "--via", "commands", "--wait", "--timeout", "2", *local_cloud.cli_args
    )
    assert code == 3, (out, err)
    assert f"{robot.thing}" in out and "timeout" in out and "$NO_RESPONSE_FROM_DEVICE" in out
