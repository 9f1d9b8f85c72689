"""The rollout's pure rules, table by table: option specs (and their one-line errors), AWS's configurations
they map to, the per-robot classifier over sequences of observations, and the decision."""

from __future__ import annotations

from typing import Any

import pytest

from rollout import policy
from rollout.policy import (
    AbortRule,
    Canary,
    Decision,
    Exponential,
    HealthLimits,
    Observation,
    Plan,
    SpecError,
    Track,
    advance,
    aws_abort_config,
    decide,
    job_document,
    make_plan,
    parse_abort,
    parse_canary,
    parse_duration,
    parse_exponential,
    parse_rate,
    parse_window,
    rollout_config,
)

NEW, OLD = "0.2.0", "0.1.0"


# specs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "total", "size"),
    [
        ("0", 10, 0),
        ("3", 10, 3),
        ("30", 10, 10),
        ("2%", 1000, 20),
        ("2%", 10, 1),
        ("0.1%", 1000, 1),
        ("10%", 15, 2),
        ("100%", 7, 7),
        ("0%", 10, 0),
    ],
)
def test_canary_sizes(text: str, total: int, size: int) -> None:
    assert parse_canary(text).size(total) == size


@pytest.mark.parametrize("text", ["-1", "x", "101%", "%", "1.5", "nan%"])
def test_canary_mistakes(text: str) -> None:
    with pytest.raises(SpecError, match=r"--canary .*: use N robots"):
        parse_canary(text)


def test_rates() -> None:
    assert parse_rate("1") == 1 and parse_rate("1000") == 1000
    for bad in ("0", "1001", "ten", "2.5"):
        with pytest.raises(SpecError, match=f"--rate {bad}: robots a minute"):
            parse_rate(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10,2", Exponential(10, 2.0, 10, "SUCCEEDED")),
        ("50,1.5,200", Exponential(50, 1.5, 200, "SUCCEEDED")),
        ("5,3,notified:20", Exponential(5, 3.0, 20, "NOTIFIED")),
        ("5, 2 ,SUCCEEDED:7", Exponential(5, 2.0, 7, "SUCCEEDED")),
    ],
)
def test_exponential_rates(text: str, expected: Exponential) -> None:
    assert parse_exponential(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10", "use BASE,FACTOR"),
        ("0,2", "BASE is robots a minute"),
        ("x,2", "BASE is robots a minute"),
        ("10,1.05", "FACTOR is 1.1..5.0"),
        ("10,6", "FACTOR is 1.1..5.0"),
        ("10,1.25", "one decimal"),
        ("10,2,FOO:3", "not FOO"),
        ("10,2,0", "the step N"),
    ],
)
def test_exponential_mistakes(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        parse_exponential(text)


def test_exponential_is_awss_exponential_rate() -> None:
    assert Exponential(10, 2.0, 30, "SUCCEEDED").to_aws() == {
        "baseRatePerMinute": 10,
        "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 30},
    }
    assert Exponential(10, 2.0, 30, "NOTIFIED").to_aws()["rateIncreaseCriteria"] == {
        "numberOfNotifiedThings": 30
    }


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("failed>10% after 20", (AbortRule("failed", 10.0, True, 20),)),
        ("rolled_back>5%", (AbortRule("rolled_back", 5.0, True, 1),)),
        ("unhealthy>3", (AbortRule("unhealthy", 3.0, False, 1),)),
        (
            "failed > 10 % after 20, unhealthy>0,REJECTED>50%",
            (
                AbortRule("failed", 10.0, True, 20),
                AbortRule("unhealthy", 0.0, False),
                AbortRule("rejected", 50.0, True),
            ),
        ),
        ("failed>0.5%", (AbortRule("failed", 0.5, True, 1),)),
    ],
)
def test_abort_rules(text: str, rules: tuple[AbortRule, ...]) -> None:
    assert parse_abort(text) == rules
    assert parse_abort(",".join(r.to_text() for r in rules)) == rules


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("failed", "use METRIC>N"),
        ("failed>10% after", "use METRIC>N"),
        ("failed<10%", "use METRIC>N"),
        ("crashed>1", "no metric 'crashed'"),
        ("failed>100%", "a percentage is 0..99.99"),
        ("unhealthy>3 after 5", "'after N' goes with a percentage"),
        ("failed>10% after 0", "N of at least 1"),
        ("failed>10%,", "an empty rule"),
    ],
)
def test_abort_mistakes(text: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        parse_abort(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("1.5m", 90.0), ("90", 90.0), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_and_window_mistakes() -> None:
    with pytest.raises(SpecError, match="--bake 10 minutes: a duration like 30s"):
        parse_duration("10 minutes")
    assert [parse_window(w) for w in ("docked", "IDLE", "any")] == ["docked", "idle", "any"]
    with pytest.raises(SpecError, match="--window charging: one of docked, idle, any"):
        parse_window("charging")
    with pytest.raises(SpecError, match="give one of them"):
        make_plan(rate="10", exponential="10,2")
    with pytest.raises(SpecError, match="--timeout-minutes 0"):
        make_plan(timeout_minutes=0)


def test_a_plan_survives_its_state_file() -> None:
    plan = make_plan(
        canary="2%",
        exponential="10,2,NOTIFIED:5",
        abort="failed>10% after 20,unhealthy>3",
        bake="2m",
        window="idle",
        allow_downgrade=True,
        self_test="20s",
        timeout_minutes=30,
        stage_timeout="15m",
        limits=HealthLimits(offline_s=10, max_reconnects=0),
        presign_role_arn="arn:aws:iam::123456789012:role/iot-presign",
    )
    assert Plan.from_json(plan.to_json()) == plan
    assert (plan.robot_bake_s, plan.execution_timeout_minutes, plan.canary_timeout_s) == (20.0, 30, 900.0)
    default = make_plan(bake="60s")
    assert (default.robot_bake_s, default.execution_timeout_minutes) == (60.0, 16)
    assert default.canary_timeout_s == 16 * 60 + 60


def test_the_robots_self_test_hold_is_short_and_the_fleet_bakes_on() -> None:
    """The job's ``bake_s`` is the robot's hold before it commits, not the fleet's bake window."""
    plan = make_plan(bake="10m")
    assert (plan.bake_s, plan.robot_bake_s, plan.rollback_bake_s) == (600.0, 60.0, 30.0)
    assert plan.execution_timeout_minutes == 16
    short = make_plan(bake="20s")
    assert (short.robot_bake_s, short.rollback_bake_s) == (20.0, 20.0)
    explicit = make_plan(bake="10m", self_test="5m")
    assert (explicit.robot_bake_s, explicit.rollback_bake_s) == (300.0, 30.0)
    assert make_plan(bake="1m", self_test="1m").robot_bake_s == 60.0
    with pytest.raises(SpecError, match=r"--self-test 2m: longer than the bake \(60 s\)"):
        make_plan(bake="1m", self_test="2m")


# what the jobs carry ----------------------------------------------------------------------------------------
def test_the_aws_configurations() -> None:
    rules = parse_abort("failed>10% after 20,rolled_back>5%,unhealthy>3,rejected>50% after 4,failed>0%")
    assert aws_abort_config(rules) == {
        "criteriaList": [
            {
                "failureType": "FAILED",
                "action": "CANCEL",
                "thresholdPercentage": 10.0,
                "minNumberOfExecutedThings": 20,
            },
            {
                "failureType": "TIMED_OUT",
                "action": "CANCEL",
                "thresholdPercentage": 10.0,
                "minNumberOfExecutedThings": 20,
            },
            {
                "failureType": "REJECTED",
                "action": "CANCEL",
                "thresholdPercentage": 50.0,
                "minNumberOfExecutedThings": 4,
            },
        ]
    }
    assert aws_abort_config(parse_abort("unhealthy>3,rolled_back>1%")) is None
    assert rollout_config(make_plan(rate="25")) == {"maximumPerMinute": 25}
    assert rollout_config(make_plan(exponential="5,2")) == {
        "exponentialRate": {
            "baseRatePerMinute": 5,
            "incrementFactor": 2.0,
            "rateIncreaseCriteria": {"numberOfSucceededThings": 5},
        }
    }
    assert rollout_config(make_plan()) is None


def test_the_job_document() -> None:
    release = {
        "version": NEW,
        "s3_url": "https://s3.us-east-1.amazonaws.com/b/k.bundle",
        "sha256": "ab",
        "size": 7,
    }
    assert job_document(release, bake_s=30, allow_downgrade=False, window="docked") == {
        "operation": "update",
        "release": {
            "version": NEW,
            "url": "${aws:iot:s3-presigned-url:https://s3.us-east-1.amazonaws.com/b/k.bundle}",
            "sha256": "ab",
            "size": 7,
        },
        "allow_downgrade": False,
        "bake_s": 30,
        "requires": {"docked": True},
    }
    assert "requires" not in job_document(release, bake_s=1, allow_downgrade=True, window="any")
    assert job_document(release, bake_s=1, allow_downgrade=True, window="idle")["requires"] == {"idle": True}


# one robot ----------------------------------------------------------------------------------------------------
def rep(
    agent: str = OLD, *, trial: str | None = None, update: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    return {"versions": {"agent": agent, "trial": trial, "update": update}, **more}


ONLINE = {"presence": "online", "presence_at": 1.0, "presence_version": OLD}


def on(version: str, at: float, **kw: Any) -> dict[str, Any]:
    return {"presence": "online", "presence_at": at, "presence_version": version, **kw}


COMMITTED = {"result": "committed", "to": NEW, "from": OLD, "reason": None}
ROLLED = {"result": "rolled_back", "to": NEW, "from": OLD, "reason": "self-test: no OI stream"}
LIMITS = HealthLimits(
    offline_s=60, max_reconnects=1, drain_factor=2, drain_floor_pct_per_h=10, drain_min_drop_pct=3
)

# (id, [(seconds, observation kwargs)], final state, reason fragment)
CASES: list[tuple[str, list[tuple[float, dict[str, Any]]], str, str]] = [
    ("no_execution_yet", [(0, {"reported": rep(), **ONLINE})], "queued", ""),
    ("queued", [(0, {"status": "QUEUED", "reported": rep(), **ONLINE})], "queued", ""),
    (
        "downloading",
        [
            (
                0,
                {
                    "status": "IN_PROGRESS",
                    "details": {"phase": "downloading 10/100"},
                    "reported": rep(),
                    **ONLINE,
                },
            )
        ],
        "updating",
        "downloading 10/100",
    ),
    (
        "in_trial_from_the_shadow",
        [
            (0, {"status": "QUEUED", "reported": rep()}),
            (5, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW)}),
        ],
        "in_trial",
        "self test",
    ),
    (
        "in_trial_from_the_phase",
        [(0, {"status": "IN_PROGRESS", "details": {"phase": "self_test"}, "reported": rep()})],
        "in_trial",
        "self_test",
    ),
    (
        "committed_and_baking",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(), **ONLINE}),
            (10, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW), **on(NEW, 2.0)}),
            (20, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED), **on(NEW, 2.0)}),
        ],
        "updated",
        "baking 10/30 s",
    ),
    (
        "healthy_after_the_bake_from_when_it_got_the_new_version",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(), **ONLINE}),
            (10, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW), **on(NEW, 2.0)}),
            (30, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED), **on(NEW, 2.0)}),
            (40, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED), **on(NEW, 2.0)}),
        ],
        "healthy",
        "baked 30 s",
    ),
    (
        "rejected",
        [(0, {"status": "REJECTED", "details": {"reason": "bad signature"}, "reported": rep()})],
        "rejected",
        "bad signature",
    ),
    (
        "failed_on_the_way",
        [(0, {"status": "FAILED", "details": {"reason": "disk full"}, "reported": rep()})],
        "failed",
        "disk full",
    ),
    ("timed_out_is_failed", [(0, {"status": "TIMED_OUT", "reported": rep()})], "failed", "TIMED_OUT"),
    (
        "rolled_back_by_itself",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW)}),
            (
                5,
                {
                    "status": "FAILED",
                    "details": {"reason": "self-test: no OI stream"},
                    "reported": rep(update=ROLLED),
                },
            ),
        ],
        "rolled_back",
        "self-test: no OI stream",
    ),
    (
        "rolled_back_seen_before_the_failed_status",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW)}),
            (5, {"status": "IN_PROGRESS", "reported": rep(update=ROLLED)}),
        ],
        "rolled_back",
        "self-test",
    ),
    (
        "failed_after_being_on_the_new_version_is_a_rollback",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW)}),
            (5, {"status": "FAILED", "reported": rep()}),
        ],
        "rolled_back",
        "FAILED",
    ),
    ("canceled", [(0, {"status": "CANCELED", "reported": rep()})], "canceled", "execution CANCELED"),
    (
        "rolled_back_after_it_succeeded",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED)}),
            (5, {"status": "SUCCEEDED", "reported": rep(update=ROLLED)}),
        ],
        "rolled_back",
        "self-test: no OI stream",
    ),
    (
        "a_stale_rollback_record_is_not_a_verdict",
        [(0, {"status": "SUCCEEDED", "reported": rep(update=ROLLED)})],
        "updated",
        "baking",
    ),
    (
        "offline_too_long_on_the_new_version",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED), **on(NEW, 2.0)}),
            (10, {"status": "SUCCEEDED", "presence": "offline", "presence_at": 3.0}),
            (71, {"status": "SUCCEEDED", "presence": "offline", "presence_at": 3.0}),
        ],
        "unhealthy",
        "offline for 61 s on 0.2.0",
    ),
    (
        "offline_briefly_is_fine",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, update=COMMITTED), **on(NEW, 2.0)}),
            (10, {"status": "SUCCEEDED", "presence": "offline"}),
            (20, {"status": "SUCCEEDED", **on(NEW, 2.0)}),
            (40, {"status": "SUCCEEDED", **on(NEW, 2.0)}),
        ],
        "healthy",
        "baked 40 s",
    ),
    (
        "the_switch_connection_is_not_a_reconnect_but_two_more_are",
        [
            (0, {"status": "IN_PROGRESS", "reported": rep(), **ONLINE}),
            (5, {"status": "IN_PROGRESS", "reported": rep(NEW, trial=NEW), **on(OLD, 1.0)}),
            (6, {"status": "IN_PROGRESS", **on(NEW, 2.0)}),
            (7, {"status": "SUCCEEDED", **on(NEW, 3.0)}),
            (8, {"status": "SUCCEEDED", **on(NEW, 4.0)}),
        ],
        "unhealthy",
        "reconnected 2 times on 0.2.0",
    ),
    (
        "a_restart_counter_that_rises",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, health={"restarts": 1})}),
            (5, {"status": "SUCCEEDED", "reported": rep(NEW, health={"restarts": 2})}),
        ],
        "unhealthy",
        "restarted 1 times",
    ),
    (
        "a_new_error",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, errors={"old": "x"})}),
            (5, {"status": "SUCCEEDED", "reported": rep(NEW, errors={"old": "x", "desired.leds": "bad"})}),
        ],
        "unhealthy",
        "new error(s) on 0.2.0: desired.leds",
    ),
    (
        "an_error_it_had_before_is_not_new",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, errors={"old": "x"})}),
            (40, {"status": "SUCCEEDED", "reported": rep(NEW, errors={"old": "x"})}),
        ],
        "healthy",
        "baked 40 s",
    ),
    (
        "a_command_failing_during_the_bake",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, command={"id": "c1", "status": "applied"})}),
            (
                5,
                {
                    "status": "SUCCEEDED",
                    "reported": rep(NEW, command={"id": "c2", "status": "failed", "reason": "no OI"}),
                },
            ),
        ],
        "unhealthy",
        "command c2 failed on 0.2.0: no OI",
    ),
    (
        "serial_link_down",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, link={"serial": "down"})}),
            (61, {"status": "SUCCEEDED", "reported": rep(NEW, link={"serial": "down"})}),
        ],
        "unhealthy",
        "serial link down for 61 s",
    ),
    (
        "battery_drain_above_its_own_rate",
        [
            (0, {"status": "QUEUED", "reported": rep(battery={"percent": 90})}),
            (3600, {"status": "IN_PROGRESS", "reported": rep(battery={"percent": 86})}),
            (3601, {"status": "SUCCEEDED", "reported": rep(NEW, battery={"percent": 86})}),
            (3601 + 900, {"status": "SUCCEEDED", "reported": rep(NEW, battery={"percent": 80})}),
        ],
        "unhealthy",
        "battery drains 24 %/h on 0.2.0 (before: 4 %/h)",
    ),
    (
        "battery_drain_like_before_is_fine",
        [
            (0, {"status": "QUEUED", "reported": rep(battery={"percent": 90})}),
            (3600, {"status": "IN_PROGRESS", "reported": rep(battery={"percent": 70})}),
            (3601, {"status": "SUCCEEDED", "reported": rep(NEW, battery={"percent": 70})}),
            (3601 + 900, {"status": "SUCCEEDED", "reported": rep(NEW, battery={"percent": 65})}),
        ],
        "healthy",
        "baked 900 s",
    ),
    (
        "charging_is_not_drain",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW, battery={"percent": 80})}),
            (
                60,
                {
                    "status": "SUCCEEDED",
                    "reported": rep(NEW, battery={"percent": 40, "charging": "charging"}),
                },
            ),
        ],
        "healthy",
        "baked 60 s",
    ),
    (
        "succeeded_but_another_version_for_long",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(OLD)}),
            (31, {"status": "SUCCEEDED", "reported": rep(OLD)}),
        ],
        "unhealthy",
        "SUCCEEDED but reports 0.1.0 for 31 s",
    ),
    (
        "a_verdict_is_final",
        [
            (0, {"status": "SUCCEEDED", "reported": rep(NEW)}),
            (30, {"status": "SUCCEEDED", "reported": rep(NEW)}),
            (40, {"status": "SUCCEEDED", "presence": "offline", "reported": rep(NEW, errors={"e": 1})}),
            (200, {"status": "SUCCEEDED", "presence": "offline"}),
        ],
        "healthy",
        "baked 30 s",
    ),
    (
        "pep440_equal_versions",
        [
            (0, {"status": "SUCCEEDED", "reported": rep("0.2")}),
            (30, {"status": "SUCCEEDED", "reported": rep("0.2")}),
        ],
        "healthy",
        "baked 30 s",
    ),
]


@pytest.mark.parametrize(("steps", "state", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_classifier(steps: list[tuple[float, dict[str, Any]]], state: str, reason: str) -> None:
    track = Track("r1", NEW)
    for at, kw in steps:
        track = advance(track, Observation(**kw), 1000.0 + at, bake_s=30, limits=LIMITS)
    assert track.state == state, track.reason
    assert reason in track.reason
    assert (track.final_at is not None) == (state in policy.FINAL)


def test_a_reported_version_that_is_not_one_is_no_place_to_roll_back_to() -> None:
    t = Track("r1", NEW)
    t = advance(t, Observation("QUEUED", reported=rep("..")), 1.0, bake_s=30, limits=LIMITS)
    assert (t.before, t.before_unknown) == (None, "previous version unknown: it reported '..', not a version")
    on_new = rep(NEW, update={"result": "committed", "to": NEW, "from": "..", "reason": None})
    t = advance(t, Observation("SUCCEEDED", reported=on_new), 2.0, bake_s=30, limits=LIMITS)
    assert t.before is None and t.before_unknown is not None and t.state == "updated"
    assert Track.from_json(t.to_json()) == t
    # a later, valid report fills it in
    t = advance(Track("r2", NEW), Observation("QUEUED", reported=rep("..")), 1.0, bake_s=30, limits=LIMITS)
    t = advance(t, Observation("QUEUED", reported=rep(OLD)), 2.0, bake_s=30, limits=LIMITS)
    assert (t.before, t.before_unknown) == (OLD, None)


def test_the_track_remembers_where_to_roll_back_to() -> None:
    t = Track("r1", NEW)
    t = advance(t, Observation("QUEUED", reported=rep(OLD)), 1.0, bake_s=30, limits=LIMITS)
    t = advance(t, Observation("IN_PROGRESS", reported=rep(NEW, trial=NEW)), 2.0, bake_s=30, limits=LIMITS)
    assert (t.before, t.on_target_at, t.touched) == (OLD, 2.0, True)
    late = advance(
        Track("r2", NEW),
        Observation("SUCCEEDED", reported=rep(NEW, update=COMMITTED)),
        5,
        bake_s=30,
        limits=LIMITS,
    )
    assert late.before == OLD  # from versions.update.from when it was first seen on the new version
    assert Track.from_json(t.to_json()) == t


# the rollout ---------------------------------------------------------------------------------------------------
PLAN = make_plan(canary="3", abort="failed>10% after 10,unhealthy>2", bake="60s", stage_timeout="30m")
H, F, RB, U, Q, UP, REJ, C = (
    "healthy",
    "failed",
    "rolled_back",
    "unhealthy",
    "queued",
    "updating",
    "rejected",
    "canceled",
)
CANARY = ["c1", "c2", "c3"]


def states(*groups: tuple[str, int]) -> dict[str, str]:
    out: dict[str, str] = {}
    for state, n in groups:
        for _ in range(n):
            out[f"r{len(out)}"] = state
    return out


DECISIONS: list[tuple[str, str, dict[str, str], float, bool, Decision]] = [
    (
        "canary_running",
        "canary",
        {"c1": H, "c2": UP, "c3": Q},
        10,
        False,
        Decision("continue", "canary: 1 queued, 1 updating, 1 healthy"),
    ),
    (
        "canary_all_healthy",
        "canary",
        dict.fromkeys(CANARY, H),
        10,
        False,
        Decision("promote", "canary: all 3 healthy"),
    ),
    (
        "canary_finished_not_all_healthy",
        "canary",
        {"c1": H, "c2": H, "c3": REJ},
        10,
        False,
        Decision(
            "pause",
            "canary finished but not all healthy (2 healthy, 1 rejected): resume to go on, abort to roll back",
        ),
    ),
    (
        "canary_too_slow",
        "canary",
        {"c1": H, "c2": H, "c3": UP},
        1801,
        False,
        Decision("pause", "canary not finished after 1801 s (1 updating, 2 healthy)"),
    ),
    (
        "canary_paused_by_operator",
        "canary",
        {"c1": H, "c2": H, "c3": H},
        10,
        True,
        Decision("pause", "paused by the operator (canary: 3 healthy)"),
    ),
    (
        "unhealthy_count_aborts_even_in_the_canary",
        "canary",
        {"c1": U, "c2": U, "c3": U},
        10,
        False,
        Decision("abort", "unhealthy>2: 3 robots unhealthy"),
    ),
    (
        "main_running",
        "main",
        states((H, 9), (F, 1), (UP, 5)),
        10,
        False,
        Decision("continue", "5 updating, 9 healthy, 1 failed"),
    ),
    (
        "percentage_waits_for_after",
        "main",
        states((H, 5), (F, 3), (UP, 10)),
        10,
        False,
        Decision("continue", "10 updating, 5 healthy, 3 failed"),
    ),
    (
        "failed_counts_rolled_back_and_unhealthy",
        "main",
        states((H, 8), (F, 1), (RB, 1), (U, 1), (UP, 10)),
        10,
        False,
        Decision(
            "abort", "failed>10% after 10: 3 of 11 finished robots (27.3%) failed, rolled back or unhealthy"
        ),
    ),
    (
        "exactly_at_the_threshold_is_not_above",
        "main",
        states((H, 9), (F, 1), (UP, 10)),
        10,
        False,
        Decision("continue", "10 updating, 9 healthy, 1 failed"),
    ),
    (
        "rejected_is_not_a_failure",
        "main",
        states((H, 8), (REJ, 4)),
        10,
        False,
        Decision("done", "8 healthy, 4 rejected"),
    ),
    (
        "done_when_all_final",
        "main",
        states((H, 18), (F, 1), (C, 2)),
        10,
        False,
        Decision("done", "18 healthy, 1 failed, 2 canceled"),
    ),
    (
        "an_operator_pause_does_not_hold_the_main_stage",
        "main",
        states((UP, 2)),
        10,
        True,
        Decision("continue", "2 updating"),
    ),
]


@pytest.mark.parametrize(
    ("stage", "robot_states", "at", "paused", "decision"),
    [d[1:] for d in DECISIONS],
    ids=[d[0] for d in DECISIONS],
)
def test_decide(
    stage: str, robot_states: dict[str, str], at: float, paused: bool, decision: Decision
) -> None:
    got = decide(
        PLAN,
        stage=stage,
        states=robot_states,
        canary=CANARY,
        stage_started_at=0.0,
        now=at,
        pause_requested=paused,
    )
    assert got == decision


def test_abort_rules_are_checked_in_order_and_say_why() -> None:
    rule = AbortRule("rolled_back", 5.0, True, 20)
    assert rule.crossed([H] * 18 + [RB]) == (False, "rolled_back>5% after 20: 19 of 20 robots finished")
    assert rule.crossed([H] * 18 + [RB] * 2) == (
        True,
        "rolled_back>5% after 20: 2 of 20 finished robots (10.0%) rolled back",
    )
    plan = make_plan(abort="unhealthy>0,failed>1%")
    got = decide(plan, stage="main", states={"a": U, "b": F}, canary=[], stage_started_at=0, now=1)
    assert got == Decision("abort", "unhealthy>0: 1 robots unhealthy")


def test_counts_list_every_state() -> None:
    assert list(policy.counts([H, H, Q])) == list(policy.STATES)
    assert policy.counts_text([]) == "no robots"
    assert Canary(percent=5).to_text() == "5%"
