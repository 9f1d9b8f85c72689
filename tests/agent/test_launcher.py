"""The launcher's pure core (every transition) and its file shell (every crash point of ``Layout.apply``).

A crash is simulated after each single file system step of an apply (``Layout.fs_hook`` raises at step k);
the next boot must then reach the same state as if the apply had either not started or finished, with a
runnable version and both links pointing at installed releases.
"""

from __future__ import annotations

import ast
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import launcher as L

LAUNCHER = Path(L.__file__)
NOW = 1_800_000_000.0
U, V, W = "0.1.0", "0.2.0", "0.3.0"


# --- helpers -----------------------------------------------------------------------------------------------
def slots(current: str | None = U, installed: tuple[str, ...] = (U, V, W), **kw: Any) -> L.Slots:
    return L.Slots(current=current, installed=frozenset(installed), **kw)


def switched(to: str = V, *, base: L.Slots | None = None, commit_timeout_s: float | None = 30) -> L.Slots:
    """A robot on U that asked for ``to`` and booted into its trial (in flight)."""
    s = L.request_switch(base or slots(), to, 5, commit_timeout_s, {"job_id": "j1"}, NOW)
    new, version, _ = L.on_boot(s, NOW)
    assert version == to
    return new


def boot(s: L.Slots, now: float = NOW) -> tuple[L.Slots, str | None]:
    new, version, _ = L.on_boot(s, now)
    return new, version


def events(s: L.Slots) -> list[str]:
    return [n["event"] for n in L.on_boot(s, NOW)[2]]


STAMPS = frozenset({"at", "started_at", "switched_at", "failed_at"})


def norm(value: Any) -> Any:
    """Slots as plain data without timestamps (a retried step writes a later time)."""
    if isinstance(value, L.Slots):
        value = value.to_json()
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items() if k not in STAMPS}
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def check_consistent(s: L.Slots, version: str | None) -> None:
    """What must hold after every boot: the launched version is installed and is current (or on trial)."""
    if s.installed:
        assert version is not None
    if version is None:
        return
    assert version in s.installed
    assert s.current == version
    if s.trial is not None:
        assert s.trial["version"] == version
        assert s.trial["in_flight"] is True
        assert s.previous == s.trial["from"]
        assert s.trial["failed_starts"] < L.MAX_FAILED_STARTS
        assert s.trial["interrupted_starts"] <= L.MAX_INTERRUPTED_STARTS
    assert s.pending is None
    assert s.previous is None or s.previous in s.installed


# --- the single-file, stdlib-only contract -----------------------------------------------------------------
def test_imports_only_the_standard_library() -> None:
    """The launcher is copied as one file and run by the system python3: it imports the stdlib only."""
    tree = ast.parse(LAUNCHER.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            assert node.module is not None
            names.add(node.module.split(".")[0])
    assert names, "no imports found"
    assert names - {"__future__"} <= sys.stdlib_module_names, names - sys.stdlib_module_names


def test_runs_as_a_copied_file_with_the_system_python(tmp_path: Path) -> None:
    """Copied alone to another directory and run with an isolated interpreter (no site-packages, no
    checkout on the path), it parses its options and reads an empty root."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    copy = tmp_path / "lib" / "launcher.py"
    copy.parent.mkdir()
    shutil.copy(LAUNCHER, copy)
    helped = subprocess.run(
        [python, "-I", "-S", str(copy), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert helped.returncode == 0, helped.stderr
    assert "--root" in helped.stdout and "exit codes" in helped.stdout
    status = subprocess.run(
        [python, "-I", "-S", str(copy), "--root", str(tmp_path / "root"), "--status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["current"] is None


def test_the_console_scripts_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``roomba-agent-launcher`` is ``agent.launcher:main``: argv in, exit code out."""
    assert L.main(["--root", str(tmp_path), "--status"]) == 0
    assert json.loads(capsys.readouterr().out)["installed"] == []
    with pytest.raises(SystemExit) as exc:
        L.main(["--help"])
    assert exc.value.code == 0


def test_exit_codes() -> None:
    assert (L.EXIT_SWITCH, L.EXIT_ROLLBACK, L.EX_CONFIG) == (100, 101, 78)
    assert (L.MAX_FAILED_STARTS, L.MAX_INTERRUPTED_STARTS) == (3, 10)
    assert L.exit_status(-9) == 137 and L.exit_status(3) == 3
    assert L.describe(-9) == "killed by SIGKILL" and L.describe(1) == "exited with 1"


# --- pure core: boots and switches -------------------------------------------------------------------------
def test_a_plain_boot_runs_current_and_changes_nothing() -> None:
    s = slots()
    assert L.on_boot(s, NOW) == (s, U, [])


def test_fresh_is_one_release_installed_and_current() -> None:
    assert boot(L.fresh(U)) == (L.fresh(U), U)


def test_request_switch_records_a_pending_switch() -> None:
    s = L.request_switch(slots(), V, 5, 30, {"job_id": "j1"}, NOW)
    assert s.pending is not None
    assert norm(s.pending) == {
        "format": 1,
        "to": V,
        "from": U,
        "bake_s": 5,
        "commit_timeout_s": 30,
        "job": {"job_id": "j1"},
    }
    assert s.current == U and s.trial is None


@pytest.mark.parametrize(
    ("s", "to", "message"),
    [
        pytest.param(slots(installed=(U,)), V, "not installed", id="not_installed"),
        pytest.param(slots(), U, "already current", id="same_version"),
        pytest.param(switched(V), W, "trial of 0.2.0 is in progress", id="during_a_trial"),
        pytest.param(slots(), "../etc", "not a usable release version", id="bad_name"),
    ],
)
def test_request_switch_refusals(s: L.Slots, to: str, message: str) -> None:
    with pytest.raises(L.LayoutError, match=message):
        L.request_switch(s, to, 5, 30, None, NOW)


def test_a_pending_switch_becomes_a_trial_in_flight() -> None:
    s = L.request_switch(slots(previous=W), V, 7, 30, {"job_id": "j1"}, NOW)
    new, version, notes = L.on_boot(s, NOW)
    assert version == V
    assert (new.current, new.previous, new.pending) == (V, U, None)
    assert new.trial is not None
    assert norm(new.trial) == {
        "format": 1,
        "version": V,
        "from": U,
        "previous_before": W,
        "failed_starts": 0,
        "interrupted_starts": 0,
        "starts": 1,
        "in_flight": True,
        "failures": [],
        "bake_s": 7,
        "commit_timeout_s": 30,
        "job": {"job_id": "j1"},
        "failure": None,
    }
    assert [n["event"] for n in notes] == ["launcher.switch", "launcher.trial_start"]
    check_consistent(new, version)


def test_a_pending_switch_to_a_version_not_installed_is_dropped_and_recorded() -> None:
    s = slots(pending={"format": 1, "to": W, "from": U, "job": {"job_id": "j2"}}, installed=(U, V))
    new, version = boot(s)
    assert (version, new.pending, new.trial) == (U, None, None)
    assert new.last is not None and new.last["result"] == "failed" and W in new.last["reason"]
    assert new.last["job"] == {"job_id": "j2"}


@pytest.mark.parametrize(
    "pending",
    [
        pytest.param({"corrupt": "pending.json: not JSON"}, id="corrupt"),
        pytest.param({"format": 1}, id="no_target"),
        pytest.param({"format": 1, "to": U}, id="already_current"),
    ],
)
def test_unusable_pending_switches_are_dropped(pending: dict[str, Any]) -> None:
    new, version = boot(slots(pending=pending))
    assert (version, new.pending, new.trial, new.current) == (U, None, None, U)
    assert events(slots(pending=pending)) == ["launcher.pending_dropped"]


def test_a_pending_switch_during_a_trial_is_dropped() -> None:
    s = L.Slots(**{**switched(V).__dict__, "pending": {"format": 1, "to": W, "from": V}})
    s = L.on_exit(s, L.EXIT_SWITCH, "exited with 100", NOW)
    new, version = boot(s)
    assert version == V and new.pending is None and new.trial is not None


# --- pure core: the end of an attempt ----------------------------------------------------------------------
@pytest.mark.parametrize("code", [0, L.EXIT_SWITCH])
def test_a_clean_stop_or_a_switch_exit_counts_nothing(code: int) -> None:
    s = switched(V)
    if code == L.EXIT_SWITCH:  # a 100 counts nothing only with a switch pending (the agent wrote one)
        s = L.Slots(**{**s.__dict__, "pending": {"format": 1, "to": W, "from": V}})
    s = L.on_exit(s, code, "exited", NOW)
    assert s.trial is not None
    assert (s.trial["failed_starts"], s.trial["interrupted_starts"], s.trial["in_flight"]) == (0, 0, False)
    new, version = boot(s)
    assert version == V and new.trial is not None and new.trial["starts"] == 2


@pytest.mark.parametrize(("code", "reason"), [(1, "exited with 1"), (None, "killed by SIGKILL"), (78, "x")])
def test_any_other_end_is_a_failed_start(code: int | None, reason: str) -> None:
    s = L.on_exit(switched(V), code, reason, NOW)
    assert s.trial is not None
    assert (s.trial["failed_starts"], s.trial["failures"], s.current) == (1, [reason], V)


def test_exit_switch_with_no_switch_pending_is_a_failed_start_and_rolls_back() -> None:
    """During a trial no switch can be asked for (the agent commits first): a version that exits 100 on
    every start, with nothing pending, would otherwise restart with a fresh commit window forever."""
    s = switched(V)
    for attempt in range(1, L.MAX_FAILED_STARTS + 1):
        s = L.on_exit(s, L.EXIT_SWITCH, "exited with 100", NOW)
        if attempt < L.MAX_FAILED_STARTS:
            assert s.trial is not None
            assert (s.trial["failed_starts"], s.trial["interrupted_starts"]) == (attempt, 0)
            assert s.trial["failures"][-1] == "exited 100 (switch) with no switch pending"
            s, version = boot(s)
            assert version == V
    assert s.trial is None and s.current == U
    assert s.last is not None and s.last["result"] == "rolled_back"
    assert s.last["reason"] == "3 failed starts; last: exited 100 (switch) with no switch pending"


def test_three_failed_starts_roll_back_and_record_the_version_as_broken() -> None:
    s = switched(V, base=slots(previous=W))
    for attempt in range(1, L.MAX_FAILED_STARTS + 1):
        s = L.on_exit(s, 1, f"exited with 1 (#{attempt})", NOW)
        if attempt < L.MAX_FAILED_STARTS:
            assert s.trial is not None and s.trial["failed_starts"] == attempt
            s, version = boot(s)
            assert version == V
    assert s.trial is None
    assert (s.current, s.previous) == (U, W)
    assert s.last is not None
    assert norm(s.last) == {
        "format": 1,
        "result": "rolled_back",
        "from": U,
        "to": V,
        "reason": "3 failed starts; last: exited with 1 (#3)",
        "job": {"job_id": "j1"},
    }
    assert s.broken[V]["reason"] == s.last["reason"]
    assert boot(s) == (s, U)


def test_exit_rollback_reverts_at_once_with_the_agents_reason() -> None:
    s = L.fail_trial(switched(V), "self-test: shadow not in sync after 30 s", NOW)
    s = L.on_exit(s, L.EXIT_ROLLBACK, "exited with 101", NOW)
    assert s.trial is None and s.current == U
    assert s.last is not None
    assert (s.last["result"], s.last["reason"]) == ("rolled_back", "self-test: shadow not in sync after 30 s")


def test_exit_rollback_without_a_reason_says_so() -> None:
    s = L.on_exit(switched(V), L.EXIT_ROLLBACK, "exited with 101", NOW)
    assert s.last is not None and s.last["reason"] == "the agent asked for a rollback"


@pytest.mark.parametrize("code", [0, 1, None, L.EXIT_SWITCH, L.EXIT_ROLLBACK])
def test_outside_a_trial_an_exit_changes_nothing(code: int | None) -> None:
    s = slots()
    assert L.on_exit(s, code, "x", NOW) == s
    not_in_flight = L.on_exit(switched(V), 0, "x", NOW)
    assert L.on_exit(not_in_flight, code, "x", NOW) == not_in_flight


# --- pure core: power cuts ---------------------------------------------------------------------------------
def test_a_power_cut_during_a_trial_is_interrupted_not_failed() -> None:
    s, version = boot(switched(V))
    assert version == V and s.trial is not None
    assert (s.trial["failed_starts"], s.trial["interrupted_starts"], s.trial["starts"]) == (0, 1, 2)
    assert "launcher.trial_interrupted" in events(switched(V))


def test_more_than_ten_power_cuts_in_a_row_roll_back() -> None:
    s = switched(V)
    for cut in range(1, L.MAX_INTERRUPTED_STARTS + 1):
        s, version = boot(s)
        assert version == V, cut
        assert s.trial is not None and s.trial["interrupted_starts"] == cut
    s, version = boot(s)
    assert version == U and s.trial is None
    assert s.last is not None and s.last["result"] == "rolled_back"
    assert "11 starts in a row never ended" in s.last["reason"]


def test_an_observed_end_resets_the_interrupted_count_and_power_cuts_never_burn_tries() -> None:
    s = switched(V)
    for _ in range(4):  # power cuts, a crash, and again: never more than 2 failed, never 11 cuts in a row
        for _ in range(L.MAX_INTERRUPTED_STARTS):
            s, version = boot(s)
            assert version == V
        s = L.on_exit(s, 0, "stopped", NOW)
        s, version = boot(s)
    assert version == V and s.trial is not None
    assert s.trial["failed_starts"] == 0 and s.trial["interrupted_starts"] == 0
    s = L.on_exit(L.on_exit(boot(L.on_exit(s, 1, "a", NOW))[0], 1, "b", NOW), 0, "c", NOW)
    assert s.trial is not None and s.trial["failed_starts"] == 2


# --- pure core: commit, deadline, revert targets, fallbacks ------------------------------------------------
def test_commit_ends_the_trial_and_clears_a_broken_record() -> None:
    s = switched(V)
    s = L.Slots(**{**s.__dict__, "broken": {V: {"reason": "earlier"}}})
    c = L.committed(s, V, NOW)
    assert (c.current, c.previous, c.trial, c.broken) == (V, U, None, {})
    assert c.last is not None
    assert norm(c.last) == {
        "format": 1,
        "result": "committed",
        "from": U,
        "to": V,
        "reason": None,
        "job": {"job_id": "j1"},
    }
    assert L.committed(c, V, NOW) == c, "committing again is a no-op"
    assert boot(c) == (c, V)


def test_commit_refusals() -> None:
    with pytest.raises(L.LayoutError, match=r"the trial is of 0.2.0, not 0.3.0"):
        L.committed(switched(V), W, NOW)
    rolled = L.on_exit(switched(V), L.EXIT_ROLLBACK, "x", NOW)
    with pytest.raises(L.LayoutError, match=r"no trial of 0.2.0 to commit.*current is 0.1.0.*rolled_back"):
        L.committed(rolled, V, NOW)
    with pytest.raises(L.LayoutError, match="no trial in progress"):
        L.fail_trial(slots(), "x", NOW)
    with pytest.raises(L.LayoutError, match="no trial to roll back"):
        L.revert(slots(), "x", NOW)


def test_a_missed_commit_deadline_rolls_back() -> None:
    s = L.deadline_missed(switched(V), V, 30, NOW)
    assert s.current == U and s.last is not None
    assert s.last["reason"] == "not committed within 30 s of its start"
    c = L.committed(switched(V), V, NOW)
    assert L.deadline_missed(c, V, 30, NOW) == c


def test_revert_falls_back_to_previous_before_when_from_is_gone() -> None:
    s = switched(V, base=slots(previous=W))
    s = L.Slots(**{**s.__dict__, "installed": frozenset({V, W})})
    r = L.revert(s, "bad", NOW)
    assert (r.current, r.previous) == (W, None)
    assert r.last is not None and r.last["result"] == "rolled_back"


def test_revert_with_nothing_to_go_back_to_stays_and_says_failed() -> None:
    s = switched(V)
    s = L.Slots(**{**s.__dict__, "installed": frozenset({V})})
    r = L.revert(s, "bad", NOW)
    assert (r.current, r.trial) == (V, None)
    assert r.last is not None and r.last["result"] == "failed"
    assert "no installed version to roll back to" in r.last["reason"]
    assert boot(r)[1] == V


def test_a_trial_whose_release_went_missing_rolls_back_at_boot() -> None:
    s = L.on_exit(switched(V), 1, "x", NOW)
    s = L.Slots(**{**s.__dict__, "installed": frozenset({U})})
    new, version = boot(s)
    assert version == U and new.last is not None and "not installed" in new.last["reason"]


def test_current_incomplete_falls_back_to_previous() -> None:
    s = slots(current=V, previous=U, installed=(U,))
    new, version, notes = L.on_boot(s, NOW)
    assert (version, new.current, new.previous) == (U, U, None)
    assert "incomplete" in new.broken[V]["reason"]
    assert [n["event"] for n in notes] == ["launcher.fallback"]


@pytest.mark.parametrize(
    "s",
    [
        pytest.param(slots(current=None, installed=()), id="empty"),
        pytest.param(slots(current=V, previous=W, installed=(U,)), id="both_incomplete"),
    ],
)
def test_nothing_runnable(s: L.Slots) -> None:
    _, version, notes = L.on_boot(s, NOW)
    assert version is None and notes[-1]["event"] == "launcher.no_release"


def test_current_missing_but_previous_installed() -> None:
    new, version = boot(slots(current=None, previous=U, installed=(U,)))
    assert (version, new.current) == (U, U)


def test_activate() -> None:
    s = L.activate(slots(current=None, installed=(U,)), U, NOW)
    assert (s.current, s.previous) == (U, None)
    s = L.activate(slots(), V, NOW)
    assert (s.current, s.previous) == (V, U)
    with pytest.raises(L.LayoutError, match="not installed"):
        L.activate(slots(installed=(U,)), V, NOW)
    with pytest.raises(L.LayoutError, match="trial"):
        L.activate(switched(V), W, NOW)


def test_protected_versions() -> None:
    s = switched(V, base=slots(previous=W))
    assert s.protected() == {U, V, W}
    assert L.request_switch(slots(installed=(U, V)), V, 1, 1, None, NOW).protected() == {U, V}


# --- pure core: every sequence of events -------------------------------------------------------------------
Event = Callable[[L.Slots], L.Slots | None]


def _boot_then(code: int | None) -> Event:
    def run(s: L.Slots) -> L.Slots | None:
        new, version = boot(s)
        check_consistent(new, version)
        return L.on_exit(new, code, f"code {code}", NOW)

    return run


def _power_cut(s: L.Slots) -> L.Slots | None:
    new, version = boot(s)
    check_consistent(new, version)
    return new


def _commit(s: L.Slots) -> L.Slots | None:
    new, version = boot(s)
    if new.trial is None or version is None:
        return None
    return L.on_exit(L.committed(new, version, NOW), 0, "stopped", NOW)


def _fail(s: L.Slots) -> L.Slots | None:
    new, _ = boot(s)
    if new.trial is None:
        return None
    return L.on_exit(L.fail_trial(new, "self-test failed", NOW), L.EXIT_ROLLBACK, "x", NOW)


def _switch_to(version: str) -> Event:
    def run(s: L.Slots) -> L.Slots | None:
        try:
            return L.request_switch(s, version, 1, 30, None, NOW)
        except L.LayoutError:
            return None

    return run


EVENTS: dict[str, Event] = {
    "ok": _boot_then(0),
    "crash": _boot_then(1),
    "killed": _boot_then(None),
    "exit100": _boot_then(L.EXIT_SWITCH),
    "exit101": _boot_then(L.EXIT_ROLLBACK),
    "cut": _power_cut,
    "commit": _commit,
    "selftest_fail": _fail,
    "switch_v": _switch_to(V),
    "switch_w": _switch_to(W),
}


def test_every_sequence_of_six_events_keeps_a_runnable_version() -> None:
    """Breadth-first over all sequences of six events (deduplicated by state): after every boot the
    launched version is installed and consistent with the links, a trial never exceeds its tries, and a
    rolled-back version is never current unless nothing else is installed; no function changes its input."""
    frontier = {json.dumps(norm(slots(installed=(U, V, W))), sort_keys=True): slots()}
    seen = 0
    for _depth in range(6):
        nxt: dict[str, L.Slots] = {}
        for s, (name, event) in itertools.product(frontier.values(), EVENTS.items()):
            before = copy.deepcopy(s.to_json())
            out = event(s)
            assert s.to_json() == before, f"{name} changed its input"
            if out is None:
                continue
            seen += 1
            if out.last and out.last.get("result") == "rolled_back" and out.trial is None:
                assert out.current != out.last["to"], name
            new, version = boot(out)
            check_consistent(new, version)
            nxt.setdefault(json.dumps(norm(out), sort_keys=True), out)
        frontier = nxt
    assert seen > 1000


# --- the file shell ----------------------------------------------------------------------------------------
def install(layout: L.Layout, version: str) -> None:
    exe = layout.agent_exe(version)
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    layout.mark_installed(version, json.dumps({"version": version}).encode())


@pytest.fixture
def layout(tmp_path: Path) -> L.Layout:
    lay = L.Layout(tmp_path / "root")
    for version in (U, V, W):
        install(lay, version)
    lay.activate(U)
    return lay


def write_slots(layout: L.Layout, s: L.Slots) -> None:
    """Make the files say ``s`` (from whatever they say now)."""
    layout.apply(layout.read(), s)
    assert norm(layout.read()) == norm(s)


def test_read_of_an_empty_root(tmp_path: Path) -> None:
    assert L.Layout(tmp_path / "nothing").read() == L.Slots()


def test_mark_installed_writes_the_marker_last(tmp_path: Path) -> None:
    lay = L.Layout(tmp_path)
    with pytest.raises(L.LayoutError, match="venv is not built"):
        lay.mark_installed(U, b"{}")
    steps: list[tuple[str, str]] = []
    lay.fs_hook = lambda step, path: steps.append((step, path.name))
    install(lay, U)
    assert lay.is_installed(U)
    renames = [name for step, name in steps if step == "rename"]
    assert renames == ["manifest.json", ".installed"]
    assert steps[-1] == ("fsync_dir", "releases")
    assert (lay.release_dir(U) / "manifest.json").read_bytes() == b'{"version": "0.1.0"}'


def test_links_are_relative_symlinks_switched_by_rename(layout: L.Layout) -> None:
    steps: list[tuple[str, str]] = []
    layout.fs_hook = lambda step, path: steps.append((step, path.name))
    layout.activate(V)
    assert os.readlink(layout.root / "current") == "releases/0.2.0"
    assert os.readlink(layout.root / "previous") == "releases/0.1.0"
    assert [s for s, _ in steps] == ["symlink", "rename", "fsync_dir"] * 2
    assert steps[1] == ("rename", "current") and steps[4] == ("rename", "previous")


def test_the_switch_writes_in_the_documented_order(layout: L.Layout) -> None:
    layout.request_switch(V, 5, 30, {"job_id": "j1"})
    old = layout.read()
    new, _, _ = L.on_boot(old, NOW)
    assert [str(op) for op in layout.plan(old, new)] == [
        "write trial.json",
        "link current 0.2.0",
        "link previous 0.1.0",
        "remove pending.json",
    ]
    rolled = L.on_exit(new, L.EXIT_ROLLBACK, "x", NOW)
    assert [str(op) for op in layout.plan(new, rolled)] == [
        "write trial.json",
        "write 0.2.0",
        "write last.json",
        "link current 0.1.0",
        "link previous (removed)",
        "remove trial.json",
    ]


def test_corrupt_state_files(layout: L.Layout) -> None:
    """An unreadable trial rolls back to previous; an unreadable pending switch is dropped."""
    layout.activate(V)
    layout.trial_path.write_text("{not json")
    layout.pending_path.write_text("[1]")
    s = layout.read()
    assert s.trial is not None and s.trial["corrupt"]
    assert s.pending is not None and s.pending["corrupt"]
    new, version, _ = L.on_boot(s, NOW)
    assert version == U and new.trial is None and new.pending is None
    layout.apply(s, new)
    after = layout.read()
    assert (after.current, after.trial, after.pending) == (U, None, None)
    assert after.last is not None and "trial.json was unreadable" in after.last["reason"]


def test_links_that_do_not_point_into_releases_read_as_none(layout: L.Layout) -> None:
    (layout.root / "previous").symlink_to("/etc")
    assert layout.read().previous is None


def test_commit_reads_back(layout: L.Layout) -> None:
    layout.request_switch(V, 5, 30, None)
    with layout.locked():
        old = layout.read()
        layout.apply(old, L.on_boot(old, NOW)[0])
    back = layout.commit(V)
    assert back.trial is None and back.current == V and back.last is not None
    assert back.last["result"] == "committed"
    assert layout.commit(V).current == V  # again: still committed
    with pytest.raises(L.LayoutError, match=r"no trial of 0.3.0"):
        layout.commit(W)


def test_commit_after_the_launcher_rolled_back_raises(layout: L.Layout) -> None:
    write_slots(layout, L.on_exit(switched(V), L.EXIT_ROLLBACK, "x", NOW))
    with pytest.raises(L.LayoutError, match=r"no trial of 0.2.0 to commit"):
        layout.commit(V)


def test_fail_trial_records_the_reason(layout: L.Layout) -> None:
    write_slots(layout, switched(V))
    back = layout.fail_trial("self-test: OI stream stalled")
    assert back.trial is not None and back.trial["failure"] == "self-test: OI stream stalled"
    assert L.on_exit(back, L.EXIT_ROLLBACK, "x", NOW).broken[V]["reason"] == "self-test: OI stream stalled"


def test_request_switch_on_files(layout: L.Layout) -> None:
    back = layout.request_switch(V, 5, 30, {"job_id": "j"})
    assert back.pending is not None and back.pending["to"] == V
    assert json.loads(layout.pending_path.read_text())["to"] == V
    with pytest.raises(L.LayoutError, match="not installed"):
        layout.request_switch("9.9.9")


def test_the_launcher_lock_admits_one(layout: L.Layout) -> None:
    fd = layout.launcher_lock()
    try:
        with pytest.raises(L.LayoutError, match=rf"another launcher \(pid {os.getpid()}\)"):
            layout.launcher_lock()
    finally:
        os.close(fd)
    os.close(layout.launcher_lock())


def test_remove_release_refuses_protected_versions(layout: L.Layout) -> None:
    write_slots(layout, L.request_switch(layout.read(), V, 1, 1, None, NOW))
    for version in (U, V):
        with pytest.raises(L.LayoutError, match="refusing to remove"):
            layout.remove_release(version)
    layout.remove_release(W)
    assert not layout.release_dir(W).exists() and W not in layout.read().installed
    layout.remove_release(W)  # already gone: nothing to do


def test_prune_keeps_the_newest_and_the_protected(layout: L.Layout) -> None:
    for i, version in enumerate(("0.4.0", "0.5.0", "0.6.0")):
        install(layout, version)
        os.utime(layout.release_dir(version) / ".installed", (NOW + i, NOW + i))
    for i, version in enumerate((U, V, W)):
        os.utime(layout.release_dir(version) / ".installed", (NOW - 10 + i, NOW - 10 + i))
    (layout.releases / "0.7.0" / "venv").mkdir(parents=True)  # an incomplete install
    write_slots(layout, L.activate(layout.read(), V, NOW))  # current V, previous U
    removed = layout.prune(keep=3)
    assert sorted(removed) == ["0.3.0", "0.7.0"]
    assert layout.read().installed == {U, V, "0.4.0", "0.5.0", "0.6.0"}
    assert layout.prune(keep=3) == []


def test_free_bytes_and_downloads(layout: L.Layout) -> None:
    assert layout.free_bytes() == shutil.disk_usage(layout.root).free
    assert layout.downloads_dir() == layout.root / "downloads" and layout.downloads_dir().is_dir()


def test_clean_temp_removes_leftovers(layout: L.Layout) -> None:
    (layout.root / ".tmp-current-1-1").symlink_to("releases/0.2.0")
    (layout.state / ".tmp-trial.json-1-2").write_text("{")
    assert len(layout.clean_temp()) == 2
    assert layout.read().current == U


def test_safe_version() -> None:
    assert L.safe_version(switched(V)) == U
    assert L.safe_version(slots(current=V)) == V
    assert L.safe_version(slots(current=V, previous=U, installed=(U,))) == U
    assert L.safe_version(slots(current=None, installed=())) is None


def test_a_disk_that_cannot_be_written_runs_the_known_good_version(layout: L.Layout) -> None:
    """ENOSPC (or a read-only root) while the launcher boots into a trial: nothing changes on disk and the
    version the trial came from runs, outside any trial (no deadline, nothing counted)."""
    write_slots(layout, L.request_switch(layout.read(), V, 1, 30, None, NOW))
    before = layout.read()

    def full(step: str, path: Path) -> None:
        raise OSError(28, "No space left on device")

    layout.fs_hook = full
    launcher = L.Launcher(layout, [], env={})
    version, s = launcher.boot()
    assert (version, s.trial, s.pending) == (U, None, None)
    layout.fs_hook = None
    assert norm(layout.read()) == norm(before)
    layout.fs_hook = full
    read, after = launcher.settle(U, 1, "exited with 1", False, 30)
    assert read == after and after.trial is None


@pytest.mark.parametrize("in_trial", [False, True], ids=["run_says_no_trial", "another_version_ran"])
def test_an_exit_of_the_safe_version_leaves_the_trial_alone(layout: L.Layout, in_trial: bool) -> None:
    """A power cut during V's trial (in flight), then a boot whose apply fails (a full disk): U runs outside
    any trial. U's exit, settled once the disk is writable again, gives V no failed start and keeps its
    interruption; the launcher decides as outside a trial."""
    write_slots(layout, switched(V))
    before = layout.read()
    assert before.trial is not None and before.trial["in_flight"] is True

    def full(step: str, path: Path) -> None:
        raise OSError(28, "No space left on device")

    layout.fs_hook = full
    launcher = L.Launcher(layout, [], env={})
    version, s = launcher.boot()
    assert (version, s.trial) == (U, None)
    layout.fs_hook = None
    if in_trial:  # what a direct caller says: the version that ran (U) is not the trial's (V)
        read, after = launcher.settle(U, 1, "exited with 1", False, 30)
    else:  # what run() says: the boot gave no trial
        read, after = launcher.settle(U, 1, "exited with 1", False, 30, in_trial=False)
    assert read == after and after.trial is None
    assert norm(layout.read()) == norm(before)
    nxt, version = boot(layout.read())
    assert version == V and nxt.trial is not None
    assert (nxt.trial["failed_starts"], nxt.trial["interrupted_starts"]) == (0, 1)


# --- every crash point of every apply ----------------------------------------------------------------------
class Cut(Exception):
    pass


def _scenarios() -> dict[str, Callable[[L.Slots], tuple[L.Slots, L.Slots]]]:
    """name -> (state before, state after) transitions the launcher and the agent write."""

    def on_boot_switch(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = L.request_switch(base, V, 5, 30, {"job_id": "j"}, NOW)
        return old, L.on_boot(old, NOW)[0]

    def in_trial(base: L.Slots) -> L.Slots:
        return on_boot_switch(base)[1]

    def failed_start(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = in_trial(base)
        return old, L.on_exit(old, 1, "exited with 1", NOW)

    def third_failure(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        s = in_trial(base)
        for _ in range(2):
            s = L.on_boot(L.on_exit(s, 1, "exited with 1", NOW), NOW)[0]
        return s, L.on_exit(s, 1, "exited with 1", NOW)

    def exit_rollback(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = L.fail_trial(in_trial(base), "self-test failed", NOW)
        return old, L.on_exit(old, L.EXIT_ROLLBACK, "exited with 101", NOW)

    def commit(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = in_trial(base)
        return old, L.committed(old, V, NOW)

    def commit_of_a_broken_one(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = in_trial(base)
        old = L.Slots(**{**old.__dict__, "broken": {V: {"format": 1, "reason": "earlier"}}})
        return old, L.committed(old, V, NOW)

    def deadline(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = in_trial(base)
        return old, L.deadline_missed(old, V, 30, NOW)

    def interrupted_boot(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = in_trial(base)
        return old, L.on_boot(old, NOW)[0]

    def eleventh_cut(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        s = in_trial(base)
        for _ in range(L.MAX_INTERRUPTED_STARTS):
            s = L.on_boot(s, NOW)[0]
        return s, L.on_boot(s, NOW)[0]

    def request(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        return base, L.request_switch(base, W, 5, 30, None, NOW)

    def activate(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        return base, L.activate(base, W, NOW)

    def fallback(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        old = L.Slots(**{**base.__dict__, "current": V, "previous": U})
        return old, L.on_boot(old, NOW)[0]

    def switch_from_a_committed_one(base: L.Slots) -> tuple[L.Slots, L.Slots]:
        s = L.committed(in_trial(base), V, NOW)
        old = L.request_switch(s, W, 5, 30, None, NOW)
        return old, L.on_boot(old, NOW)[0]

    return {
        f.__name__: f
        for f in (
            on_boot_switch,
            failed_start,
            third_failure,
            exit_rollback,
            commit,
            commit_of_a_broken_one,
            deadline,
            interrupted_boot,
            eleventh_cut,
            request,
            activate,
            fallback,
            switch_from_a_committed_one,
        )
    }


SCENARIOS = _scenarios()
INCOMPLETE = {"fallback": V}  # scenarios run with this release's .installed removed


def _copy_root(src: Path, dst: Path) -> L.Layout:
    shutil.copytree(src, dst, symlinks=True)
    return L.Layout(dst)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_crash_after_every_step_of_apply(name: str, layout: L.Layout, tmp_path: Path) -> None:
    if name in INCOMPLETE:
        (layout.release_dir(INCOMPLETE[name]) / ".installed").unlink()
    base = layout.read()
    old, new = SCENARIOS[name](base)
    write_slots(layout, old)
    count: list[tuple[str, Path]] = []
    probe = _copy_root(layout.root, tmp_path / "probe")
    probe.fs_hook = lambda step, path: count.append((step, path))
    probe.apply(probe.read(), new)
    assert norm(probe.read()) == norm(new)
    assert len(count) >= 3
    outcomes = [old, new]
    if old.trial is None and new.trial is None:
        # no journal: a cut between the two links leaves the new current with the old previous
        outcomes.append(L.Slots(**{**old.__dict__, "current": new.current, "broken": new.broken}))
    expected = {
        json.dumps([norm(s), v], sort_keys=True) for s, v in (L.on_boot(o, NOW)[:2] for o in outcomes)
    }
    for k in range(len(count)):
        lay = _copy_root(layout.root, tmp_path / f"cut{k}")
        done = 0

        def cut(step: str, path: Path, k: int = k) -> None:
            nonlocal done
            done += 1
            if done > k:
                raise Cut(f"power cut after step {k}: {step} {path.name}")

        lay.fs_hook = cut
        with pytest.raises(Cut):
            lay.apply(lay.read(), new)
        # the next boot
        lay.fs_hook = None
        lay.clean_temp()
        assert not [p for d in (lay.root, lay.state) for p in d.iterdir() if p.name.startswith(".tmp-")]
        s = lay.read()
        booted, version, _ = L.on_boot(s, NOW)
        lay.apply(s, booted)
        after = lay.read()
        assert norm(after) == norm(booted), f"{name}, cut after step {k}"
        check_consistent(after, version)
        for link in ("current", "previous"):
            target = getattr(after, link)
            assert target is None or lay.is_installed(target)
        got = json.dumps([norm(after), version], sort_keys=True)
        assert got in expected, (
            f"{name}: a cut after step {k} ({count[k][0]} {count[k][1].name}) led to {got}"
        )
