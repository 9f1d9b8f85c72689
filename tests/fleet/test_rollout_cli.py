"""``roomba-fleet rollout``: one-line usage errors, the status views (text, JSON, the live view), then the
command as a real process against a real local cloud with robots played by test code: ``start`` in the
foreground until done, and ``start --detach`` aborted by ``rollout abort`` from another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from base.testing import wait_until
from fleet.cli import main
from fleet.rollout import list_text, live_view, status_text
from localcloud.layout import CloudDir
from localcloud.testing import LocalCloud
from rollout.controller import load_state, state_path, write_json_atomic
from rollout.testing import UpdateRobot, make_things, publish_release

OLD = "0.1.0"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--abort", "failed>10 after 5"], "--abort 'failed>10 after 5': 'after N' goes with a percentage"),
        (["--abort", "crashed>1"], "no metric 'crashed'"),
        (["--canary", "x"], "--canary x: use N robots"),
        (["--bake", "soon"], "--bake soon: a duration like 30s"),
        (["--exponential", "10"], "--exponential 10: use BASE,FACTOR"),
    ],
)
def test_bad_specs_are_one_line_usage_errors(
    argv: list[str], why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "rollout", "start", "--release", "0.2.0", "--all", *argv, "--dir", str(tmp_path)
    )
    assert (code, out) == (2, "")
    assert err.startswith("roomba-fleet rollout start: ") and why in err and err.count("\n") == 1, err


def test_status_of_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "rollout", "status", "--dir", str(tmp_path))
    assert code == 0 and out.startswith("no rollouts")
    code, out, err = run_cli(capsys, "rollout", "status", "nope", "--dir", str(tmp_path))
    assert code == 2 and out == "" and "no rollout 'nope'" in err
    code, _, err = run_cli(capsys, "rollout", "abort", "nope", "--dir", str(tmp_path))
    assert code == 2 and "no rollout 'nope'" in err


STATE: dict[str, Any] = {
    "id": "r1",
    "version": "0.2.0",
    "phase": "aborting",
    "reason": "failed>10% after 4: 2 of 5 finished robots (40.0%) failed, rolled back or unhealthy",
    "targets": ["a", "b", "c", "d", "e", "f"],
    "canary": ["a"],
    "plan": {"canary": "1", "rate": 10, "abort": "failed>10% after 4", "bake_s": 60.0, "window": "any"},
    "jobs": {"canary": "r1-canary", "main": "r1-main", "rollback": ["r1-rollback"]},
    "updated_at": time.time(),
    "events": [
        {"at": 1.0, "phase": "canary", "reason": "started"},
        {"at": 2.0, "phase": "aborting", "reason": "x"},
    ],
    "robots": {
        "c": {"state": "rolled_back", "reason": "self-test: no OI stream", "final_at": 5.0},
        "d": {"state": "unhealthy", "reason": "offline for 90 s on 0.2.0", "final_at": 6.0},
        "a": {"state": "healthy", "reason": "baked 60 s", "final_at": 4.0},
    },
    "summary": {
        "targets": 6,
        "touched": 5,
        "on_new_version": 3,
        "states": {"healthy": 2, "rolled_back": 1, "unhealthy": 1, "queued": 1, "canceled": 1},
        "versions": {
            "0.1.0": {"queued": 1, "rolled_back": 1, "canceled": 1},
            "0.2.0": {"healthy": 2, "unhealthy": 1},
        },
        "rollback": {"robots": 3, "states": {"reverting": 2, "reverted": 1}, "jobs": ["r1-rollback"]},
    },
}


def test_the_text_views() -> None:
    text = status_text(STATE)
    lines = text.splitlines()
    assert lines[0] == "rollout r1: aborting (roomba-agent 0.2.0) 5/6 touched, 2 healthy, 3 on 0.2.0"
    assert "why:      failed>10% after 4" in text and "jobs:     r1-canary, r1-main, r1-rollback" in text
    header = next(line for line in lines if "VERSION" in line).split()
    new = next(line for line in lines if line.strip().startswith("0.2.0")).split()
    assert dict(zip(header, new, strict=True))["HEALTHY"] == "2"
    assert dict(zip(header, new, strict=True))["UNHEALTHY"] == "1"
    old = next(line for line in lines if line.strip().startswith("0.1.0")).split()
    assert dict(zip(header, old, strict=True))["ROLLED_BACK"] == "1"
    assert "rollback: 3 robots (1 reverted, 2 reverting) by r1-rollback" in text
    problems = lines.index("  problems:")
    assert lines[problems + 1].split()[:2] == ["d", "unhealthy"]
    assert lines[problems + 2].split()[:2] == ["c", "rolled_back"]
    table = list_text([STATE]).splitlines()
    assert table[0].split() == [
        "ROLLOUT",
        "VERSION",
        "PHASE",
        "TARGETS",
        "TOUCHED",
        "HEALTHY",
        "FAILED",
        "UPDATED",
    ]
    assert table[1].split()[:7] == ["r1", "0.2.0", "aborting", "6", "5", "2", "2"]


def test_the_live_view_draws_every_version_the_rollback_and_the_problems() -> None:
    from rich.console import Console

    console = Console(width=120, record=True, color_system=None)
    console.print(live_view(STATE, "", 120, 40))
    screen = console.export_text()
    assert "rollout r1: aborting" in screen and "aborting: failed>10% after 4" in screen
    assert "0.2.0 (new): 3 robots" in screen and "0.1.0: 3 robots" in screen
    assert "rolled back" in screen and "unhealthy" in screen
    assert "rollback: 3 robots (1 reverted, 2 reverting)" in screen
    assert "offline for 90 s on 0.2.0" in screen
    console = Console(width=80, record=True, color_system=None)
    console.print(live_view(None, "no rollout 'x'", 80, 20))
    assert "no rollout 'x'" in console.export_text()


def test_status_watch_on_a_terminal_redraws_as_the_state_file_changes(tmp_path: Path) -> None:
    """The live view as a person sees it: a real process on a pty, reading a state file another process
    rewrites."""
    from base.ptyterm import PtyProcess

    cloud = CloudDir.at(tmp_path)
    doc = {**STATE, "format": 1, "created_at": 1.0, "pid": None, "heartbeat_at": None}
    write_json_atomic(state_path(cloud, "r1"), doc)
    argv = [sys.executable, "-m", "fleet.cli", "rollout", "status", "r1", "--watch", "--interval", "0.2"]
    repo = str(Path(__file__).resolve().parents[2])
    with PtyProcess([*argv, "--dir", str(tmp_path)], rows=40, cols=120, cwd=repo) as watch:
        lines = watch.wait_screen(
            lambda ls: any("0.2.0 (new): 3 robots" in line for line in ls), 30, "the new version's rows"
        )
        assert lines[0].lstrip().startswith("rollout r1: aborting (roomba-agent 0.2.0) 5/6 touched")
        assert any("no controller is running it" in line for line in lines)
        bars = {
            line.split()[0]: line.split()[-1]
            for line in lines
            if line.strip().startswith(("healthy", "unhealthy"))
        }
        assert bars == {"healthy": "2", "unhealthy": "1"}, lines
        write_json_atomic(
            state_path(cloud, "r1"), {**doc, "phase": "aborted", "reason": "rolled back 3 robots"}
        )
        lines = watch.wait_screen(
            lambda ls: any("aborted: rolled back 3 robots" in line for line in ls), 30, "the new phase"
        )
        assert watch.interrupt() == 0


# against a real local cloud ----------------------------------------------------------------------------------
@pytest.fixture
def robots(local_cloud: LocalCloud) -> Iterator[list[UpdateRobot]]:
    made: list[UpdateRobot] = []
    yield made
    for robot in made:
        robot.close()


def _fleet(
    cloud: LocalCloud, made: list[UpdateRobot], prefix: str, n: int, behaviour: str = "good"
) -> list[UpdateRobot]:
    names = [f"{prefix}-{i}" for i in range(n)]
    make_things(cloud, *names)
    for name in names:
        made.append(UpdateRobot(cloud, name, OLD, behaviour))
    return made[-n:]


def _cli(cloud: LocalCloud, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "rollout", *argv, *cloud.cli_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _tick_until(fleet: list[UpdateRobot], done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        for robot in fleet:
            robot.tick()
        time.sleep(0.2)


@pytest.mark.slow
def test_start_runs_the_rollout_in_the_foreground_until_done(
    local_cloud: LocalCloud, robots: list[UpdateRobot], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = uuid.uuid4().hex[:6]
    new = f"1.{int(u, 16) % 1000}.0"
    publish_release(local_cloud, new, tmp_path)
    fleet = _fleet(local_cloud, robots, f"cli-{u}", 3)
    proc = _cli(
        local_cloud,
        "start",
        "--release",
        new,
        "--prefix",
        f"cli-{u}-",
        "--canary",
        "1",
        "--rate",
        "100",
        "--bake",
        "1s",
        "--abort",
        "failed>50% after 2",
        "--id",
        f"cli-{u}",
        "--interval",
        "0.3",
    )
    try:
        _tick_until(fleet, lambda: proc.poll() is not None, 90, "done")
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["canary:", "main:", "done:"], out
    assert lines[-1].startswith(f"rollout cli-{u} done: 3 healthy")
    code, out, _ = run_cli(capsys, "rollout", "status", f"cli-{u}", *local_cloud.cli_args, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["phase"] == "done" and doc["summary"]["states"]["healthy"] == 3
    assert sorted(doc["robots"]) == [r.thing for r in fleet]
    code, out, _ = run_cli(capsys, "rollout", "status", *local_cloud.cli_args)
    assert code == 0 and any(line.split()[:3] == [f"cli-{u}", new, "done"] for line in out.splitlines())
    code, out, err = run_cli(capsys, "rollout", "abort", f"cli-{u}", *local_cloud.cli_args)
    assert code == 2 and f"rollout cli-{u} is done: nothing to abort" in err


@pytest.mark.slow
def test_a_detached_rollout_is_aborted_from_another_process_and_rolled_back(
    local_cloud: LocalCloud, robots: list[UpdateRobot], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = uuid.uuid4().hex[:6]
    new = f"2.{int(u, 16) % 1000}.0"
    publish_release(local_cloud, new, tmp_path)
    publish_release(local_cloud, OLD, tmp_path)
    fleet = _fleet(local_cloud, robots, f"det-{u}", 2)
    rid = f"det-{u}"
    proc = _cli(
        local_cloud,
        "start",
        "--release",
        new,
        "--targets",
        *[r.thing for r in fleet],
        "--bake",
        "1h",
        "--id",
        rid,
        "--interval",
        "0.3",
        "--detach",
        "--json",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["phase"] == "main" and lines[-1]["detached"] is True
    pid = int(lines[-1]["pid"])
    try:
        _tick_until(
            fleet,
            lambda: (
                (load_state(local_cloud.dir, rid).get("summary") or {}).get("states", {}).get("updated") == 2
            ),
            60,
            "both updated",
        )
        code, out, err = run_cli(
            capsys, "rollout", "abort", rid, "--reason", "test brake", *local_cloud.cli_args
        )
        assert code == 0 and "asked the controller" in out, err
        _tick_until(fleet, lambda: load_state(local_cloud.dir, rid)["phase"] == "aborted", 60, "aborted")
        state = load_state(local_cloud.dir, rid)
        assert state["jobs"]["rollback"] == [f"{rid}-rollback"]
        assert sorted(state["rollback"]) == sorted(r.thing for r in fleet)
        assert state["reason"].startswith("test brake; rolled back 2 robots")
        assert [r.version for r in fleet] == [OLD, OLD]
        wait_until(lambda: not _alive(pid), 20, "the detached controller to exit")
        assert state_path(local_cloud.dir, rid).exists()
        log = (local_cloud.dir.root / "rollouts" / f"{rid}.log").read_text()
        assert "aborting: test brake" in log, log
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_targets_by_name_prefix_and_group_and_the_mistakes(local_cloud: LocalCloud) -> None:
    from fleet.rollout import UsageError, resolve_things
    from localcloud.apiclient import ApiClient

    u = uuid.uuid4().hex[:6]
    names = [f"tg-{u}-{i}" for i in range(3)]
    make_things(local_cloud, *names)
    with ApiClient(local_cloud.dir) as client:
        client.call("CreateThingGroup", {"thingGroupName": f"g-{u}"})
        client.call("CreateThingGroup", {"thingGroupName": f"sub-{u}", "parentGroupName": f"g-{u}"})
        client.call("AddThingToThingGroup", {"thingGroupName": f"g-{u}", "thingName": names[0]})
        client.call("AddThingToThingGroup", {"thingGroupName": f"sub-{u}", "thingName": names[2]})
        assert resolve_things(client, groups=[f"g-{u}"]) == [names[0], names[2]]
        assert resolve_things(client, prefix=f"tg-{u}-") == names
        assert resolve_things(client, things=[names[1], names[1]]) == [names[1]]
        with pytest.raises(UsageError, match=f"no such thing\\(s\\): nobody-{u}"):
            resolve_things(client, things=[f"nobody-{u}"])
        with pytest.raises(UsageError, match=f"--group none-{u}: no such thing group"):
            resolve_things(client, groups=[f"none-{u}"])
        with pytest.raises(UsageError, match=f"--prefix zz-{u}: no thing's name starts with it"):
            resolve_things(client, prefix=f"zz-{u}")
