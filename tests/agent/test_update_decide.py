"""What an update job cut short by a restart does next, table-driven over the journalled phase, the
launcher's slots (the real ``agent.launcher.Slots``) and the running version; and exhaustively: every
phase × slot state × running version gets exactly one decision, and it never reports SUCCEEDED unless the
new version runs committed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from agent.launcher import Slots
from agent.update import decide
from agent.update.decide import Decision

A, B = "0.1.0", "0.2.0"
JOB = {"job_id": "up-1", "execution_number": 1}
OTHER_JOB = {"job_id": "up-0", "execution_number": 1}


def slots(**kw: Any) -> Slots:
    base: dict[str, Any] = {"current": A, "installed": frozenset({A})}
    base.update(kw)
    return Slots(**base)


ONLY_A = slots()
B_INSTALLED = slots(installed=frozenset({A, B}))
PENDING_B = slots(installed=frozenset({A, B}), pending={"to": B, "from": A, "job": JOB})
TRIAL_B = slots(
    current=B, previous=A, installed=frozenset({A, B}), trial={"version": B, "from": A, "job": JOB}
)
COMMITTED_B = slots(
    current=B,
    previous=A,
    installed=frozenset({A, B}),
    last={"result": "committed", "from": A, "to": B, "job": JOB},
)
ROLLED_BACK = slots(
    current=A,
    previous=None,
    installed=frozenset({A, B}),
    last={
        "result": "rolled_back",
        "from": A,
        "to": B,
        "reason": "self-test failed: MQTT not connected",
        "job": JOB,
    },
)
ROLLED_BACK_OTHER_JOB = slots(
    current=A,
    installed=frozenset({A, B}),
    last={"result": "rolled_back", "from": A, "to": B, "reason": "old", "job": OTHER_JOB},
)
CRASH_LOOP = slots(
    current=A,
    installed=frozenset({A, B}),
    last={"result": "rolled_back", "from": A, "to": B, "reason": "3 failed starts: exit 1", "job": JOB},
)

# three failed starts and no previous version to go back to: the launcher keeps 0.2.0 current, last failed
NO_WAY_BACK = slots(
    current=B,
    previous=None,
    installed=frozenset({B}),
    last={"result": "failed", "from": A, "to": B, "reason": "3 failed starts: exit 1", "job": JOB},
)


@pytest.mark.parametrize(
    ("phase", "running", "state", "expected"),
    [
        (None, A, ONLY_A, Decision(decide.START)),
        ("preflight", A, ONLY_A, Decision(decide.START)),
        ("downloading", A, ONLY_A, Decision(decide.DOWNLOAD)),
        ("verified", A, ONLY_A, Decision(decide.INSTALL)),  # cut short while installing
        ("verified", A, B_INSTALLED, Decision(decide.INSTALL)),  # the installer skips a complete release
        ("installed", A, B_INSTALLED, Decision(decide.SWITCH)),
        ("installed", A, ONLY_A, Decision(decide.INSTALL)),  # the release is incomplete: reinstall it
        ("switching", A, B_INSTALLED, Decision(decide.SWITCH)),  # the switch was never made durable
        (
            "switching",
            A,
            PENDING_B,
            Decision(
                decide.FAILED,
                "the launcher did not switch to 0.2.0 (still running 0.1.0): is the agent started by "
                "roomba-agent-launcher?",
            ),
        ),
        ("switching", B, TRIAL_B, Decision(decide.SELF_TEST)),
        ("self_test", B, TRIAL_B, Decision(decide.SELF_TEST)),
        ("switching", B, COMMITTED_B, Decision(decide.SUCCEEDED)),
        ("self_test", B, COMMITTED_B, Decision(decide.SUCCEEDED)),  # committed, then a crash before SUCCEEDED
        ("committed", B, COMMITTED_B, Decision(decide.SUCCEEDED)),
        (
            "self_test",
            A,
            ROLLED_BACK,
            Decision(decide.FAILED, "rolled back to 0.1.0: self-test failed: MQTT not connected"),
        ),
        (
            "switching",
            A,
            CRASH_LOOP,
            Decision(decide.FAILED, "rolled back to 0.1.0: 3 failed starts: exit 1"),
        ),
        (
            "self_test",
            B,
            NO_WAY_BACK,
            Decision(decide.FAILED, "the update to 0.2.0 failed: 3 failed starts: exit 1"),
        ),
        # a rollback of an earlier job for the same version is not this job's: ask for the switch again
        ("switching", A, ROLLED_BACK_OTHER_JOB, Decision(decide.SWITCH)),
        (
            "self_test",
            A,
            ROLLED_BACK_OTHER_JOB,
            Decision(
                decide.FAILED,
                "the switch to 0.2.0 did not happen: 0.1.0 runs, no trial and no rollback recorded",
            ),
        ),
        (
            "self_test",
            A,
            TRIAL_B,
            Decision(decide.FAILED, "the trial of 0.2.0 is on but 0.1.0 runs: the launcher is not in charge"),
        ),
        (
            "committed",
            A,
            COMMITTED_B,
            Decision(decide.FAILED, "0.2.0 was committed but 0.1.0 runs now"),
        ),
        (
            "switching",
            B,
            ONLY_A,
            Decision(decide.FAILED, "running 0.2.0 but it is neither in its trial nor current"),
        ),
    ],
)
def test_after_restart(phase: str | None, running: str, state: Slots, expected: Decision) -> None:
    assert decide.after_restart(phase, to=B, running=running, slots=state, job=JOB) == expected


def test_a_record_without_a_job_is_taken_as_this_jobs() -> None:
    state = slots(
        current=A, installed=frozenset({A, B}), last={"result": "rolled_back", "to": B, "reason": "r"}
    )
    assert decide.after_restart("self_test", to=B, running=A, slots=state, job=JOB) == Decision(
        decide.FAILED, "rolled back to 0.1.0: r"
    )


STATES = [
    ONLY_A,
    B_INSTALLED,
    PENDING_B,
    TRIAL_B,
    COMMITTED_B,
    ROLLED_BACK,
    ROLLED_BACK_OTHER_JOB,
    CRASH_LOOP,
]
ACTIONS = {
    decide.START,
    decide.DOWNLOAD,
    decide.INSTALL,
    decide.SWITCH,
    decide.SELF_TEST,
    decide.SUCCEEDED,
    decide.FAILED,
}


@pytest.mark.parametrize(
    ("phase", "running", "index"),
    list(itertools.product([None, *decide.PHASES], [A, B], range(len(STATES)))),
)
def test_every_combination_has_one_safe_decision(phase: str | None, running: str, index: int) -> None:
    state = STATES[index]
    d = decide.after_restart(phase, to=B, running=running, slots=state, job=JOB)
    assert d.action in ACTIONS
    assert (d.reason is not None) == (d.action == decide.FAILED)
    if d.action == decide.SUCCEEDED:  # only the new version, current and out of its trial
        assert running == B and state.current == B and not state.trial
    if d.action == decide.SELF_TEST:
        assert running == B and state.trial and state.trial["version"] == B
    if d.action == decide.SWITCH:  # never a second switch while one is pending or on trial
        assert not state.pending and not state.trial and B in state.installed
    if phase in (None, "preflight", "downloading", "verified") or (
        phase == "installed" and not state.pending and not state.trial
    ):
        assert d.action in (decide.START, decide.DOWNLOAD, decide.INSTALL, decide.SWITCH)
