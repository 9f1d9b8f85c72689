"""The Jobs engine's SQLite store (``localcloud.jobs.store``) and its cron / date-time parsing
(``localcloud.jobs.cron``): records survive a reopen and a whole engine continues from them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from localcloud.jobs.cron import Cron, format_datetime, parse_datetime
from localcloud.jobs.engine import JobsEngine
from localcloud.jobs.store import IotStore

T0 = datetime(2027, 1, 15, 12, 0, tzinfo=UTC).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_store_saves_upserts_and_deletes_in_one_transaction(tmp_path: Path) -> None:
    store = IotStore(tmp_path / "iot.db")
    store.save({("thing", "a"): {"name": "a", "v": 1}, ("job", "j"): {"jobId": "j"}})
    store.save({("thing", "a"): {"name": "a", "v": 2}, ("job", "j"): None, ("job", "never"): None})
    store.close()
    again = IotStore(tmp_path / "iot.db", durable=True)
    assert again.load_all() == {("thing", "a"): {"name": "a", "v": 2}}
    again.checkpoint()
    again.close()


def test_an_engine_continues_from_the_database(tmp_path: Path) -> None:
    store = IotStore(tmp_path / "iot.db")
    engine = JobsEngine()
    engine.call("CreateThingGroup", {"thingGroupName": "g"}, T0)
    for name in ("a", "b", "c"):
        engine.call("CreateThing", {"thingName": name}, T0)
        engine.call("AddThingToThingGroup", {"thingGroupName": "g", "thingName": name}, T0)
    engine.call(
        "CreateJob",
        {
            "jobId": "j",
            "targets": ["arn:aws:iot:us-east-1:000000000000:thinggroup/g"],
            "document": "{}",
            "jobExecutionsRolloutConfig": {"maximumPerMinute": 2},
        },
        T0,
    )
    engine.handle("$aws/things/a/jobs/start-next", b'{"stepTimeoutInMinutes": 5}', T0)
    store.save(engine.take_dirty())
    store.close()

    reopened = JobsEngine(IotStore(tmp_path / "iot.db").load_all())
    assert reopened.next_deadline() == T0 + 60
    outs = reopened.tick(T0 + 60)
    assert [t for t, _ in outs] == ["$aws/things/c/jobs/notify", "$aws/things/c/jobs/notify-next"]
    assert reopened.next_deadline() == T0 + 300
    outs = reopened.tick(T0 + 300)
    assert "$aws/events/jobExecution/j/timed_out" in [t for t, _ in outs]
    job = reopened.call("DescribeJob", {"jobId": "j"}, T0 + 300)[0]["job"]
    assert job["jobProcessDetails"]["numberOfTimedOutThings"] == 1
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 2


@pytest.mark.parametrize(
    ("expression", "after", "fire"),
    [
        ("cron(0 22 ? * SUN *)", "2027-01-15T12:00", "2027-01-17T22:00"),  # the 15th is a Friday
        ("cron(30 2 * * ? *)", "2027-01-15T02:30", "2027-01-15T02:30"),
        ("cron(30 2 * * ? *)", "2027-01-15T02:30:01", "2027-01-16T02:30"),
        ("cron(0/15 * * * ? *)", "2027-01-15T12:01", "2027-01-15T12:15"),
        ("cron(0 8 1 JAN,JUL ? *)", "2027-01-15T00:00", "2027-07-01T08:00"),
        ("cron(0 9 ? * MON-FRI *)", "2027-01-16T10:00", "2027-01-18T09:00"),
        ("cron(0 0 ? * 1 2028)", "2027-01-15T00:00", "2028-01-02T00:00"),
        ("0 12 * * ?", "2027-01-15T12:00", "2027-01-15T12:00"),
    ],
)
def test_cron_next_fire(expression: str, after: str, fire: str) -> None:
    assert Cron.parse(expression).next_fire(utc(after)) == utc(fire)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 L * * ? *)",
        "cron(0 12 ? * 2#1 *)",
        "cron(61 * * * ? *)",
        "cron(* * *)",
        "cron(0 ? * * ? *)",
        "x y z w v u",
    ],
)
def test_cron_refuses_what_it_does_not_implement(expression: str) -> None:
    with pytest.raises(ValueError):
        Cron.parse(expression)


def test_cron_with_no_future_fire() -> None:
    assert Cron.parse("cron(0 0 1 1 ? 2020)").next_fire(T0) is None


def test_scheduling_date_times() -> None:
    assert parse_datetime("2027-01-15T12:00") == T0
    assert parse_datetime("2027-01-15 12:00") == T0
    assert parse_datetime("2027-01-15T12:00:00Z") == T0
    assert format_datetime(T0) == "2027-01-15T12:00"
    with pytest.raises(ValueError):
        parse_datetime("15/01/2027 12:00")
    assert json.loads(json.dumps(format_datetime(T0 + 61))) == "2027-01-15T12:01"
