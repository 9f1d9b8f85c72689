"""The live ``roomba-fleet watch`` views as a person sees them: the real console script on a real pty of a
set size, its screen read back through :class:`base.ptyterm.Screen`, against a real local cloud.

Traps covered: a table taller than the terminal (a random slice, the header scrolled off), one redraw per
shadow document, exiting with rc 2 at a broker restart, and ``| head`` ending in a BrokenPipeError.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from base.ptyterm import PtyProcess
from base.testing import wait_until
from localcloud.layout import OPERATOR_IDENTITY
from localcloud.testing import LocalCloud, PahoRobot
from shadow.topics import presence_topic, shadow_topic

pytestmark = pytest.mark.slow

FLEET = str(Path(sys.executable).with_name("roomba-fleet"))


def _operator(cloud: LocalCloud, paho_robot: Callable[..., PahoRobot]) -> PahoRobot:
    """A paho client with the operator identity: it may publish any robot's presence and shadow."""
    return paho_robot(cloud, OPERATOR_IDENTITY, client_id=f"operator-test-{uuid.uuid4().hex[:8]}")


def _fake_robot(op: PahoRobot, thing: str, presence: str = "online", **reported: Any) -> None:
    op.publish(presence_topic(thing), {"state": presence}, retain=True)
    if reported:
        op.publish(shadow_topic(thing, "update"), {"state": {"reported": reported}})


def _things(lines: list[str], prefix: str) -> list[str]:
    return [line.split()[0] for line in lines if line.startswith(prefix)]


def test_watch_fits_a_small_terminal_problems_first(
    local_cloud: LocalCloud, paho_robot: Callable[..., PahoRobot]
) -> None:
    """60 robots on a 20-row terminal: the title and the column header stay on top, offline, errors,
    rejected commands and low battery come first, the rest is "… N more", and nothing scrolls."""
    p = f"fit{uuid.uuid4().hex[:4]}-"
    op = _operator(local_cloud, paho_robot)
    for i in range(60):
        _fake_robot(op, f"{p}{i:03d}", mission="idle", battery={"percent": 90})
    _fake_robot(op, f"{p}050", "offline")
    _fake_robot(op, f"{p}020", errors={"mode": "mode: unknown setting"})
    _fake_robot(op, f"{p}030", command={"id": "c2", "status": "rejected", "reason": "stale fields"})
    _fake_robot(op, f"{p}040", battery={"percent": 5})
    rows, cols = 20, 120
    with PtyProcess([FLEET, "watch", "--prefix", p, *local_cloud.cli_args], rows=rows, cols=cols) as watch:
        lines = watch.wait_screen(
            lambda ls: (
                _things(ls, p)[:4] == [f"{p}050", f"{p}020", f"{p}030", f"{p}040"]
                and any("battery 5%" in line for line in ls)
            ),
            30,
            "the four robots with problems on top",
        )
        assert lines[0].lstrip().startswith("roomba-fleet watch") and "60 robots" in lines[0]
        assert "data" in lines[0] and "old" in lines[0] and f":{local_cloud.port}" in lines[0]
        assert lines[1].split()[:2] == ["THING", "CONNECTION"]
        shown = _things(lines, p)
        assert len(shown) == rows - 4, lines  # title, header, "… N more", and the free last row
        assert shown[4:] == [f"{p}{i:03d}" for i in range(60) if i not in (20, 30, 40, 50)][: len(shown) - 4]
        more = next(line for line in lines if line.startswith("…"))
        assert more.startswith(f"… {60 - len(shown)} more (no problems)")
        assert "offline" in next(line for line in lines if line.startswith(f"{p}050"))
        assert "command rejected" in next(line for line in lines if line.startswith(f"{p}030"))
        assert watch.scrolled() == 0, "the view outgrew the terminal"
        assert watch.interrupt() == 0


def test_watch_redraws_are_throttled_under_a_flood(
    local_cloud: LocalCloud, paho_robot: Callable[..., PahoRobot]
) -> None:
    """Hundreds of shadow documents in a burst make a handful of redraws, not one per document."""
    p = f"flood{uuid.uuid4().hex[:4]}-"
    op = _operator(local_cloud, paho_robot)
    for i in range(20):
        _fake_robot(op, f"{p}{i:02d}", mission="idle", battery={"percent": 50})
    with PtyProcess([FLEET, "watch", "--prefix", p, *local_cloud.cli_args], rows=30, cols=120) as watch:
        watch.wait_screen(lambda ls: len(_things(ls, p)) == 20, 30, "the 20 robots")
        documents = 400
        for n in range(documents):
            _fake_robot(op, f"{p}{n % 20:02d}", battery={"percent": 51 + n // 20})
        last = f"{51 + (documents - 1) // 20}%"
        watch.wait_screen(lambda ls: any(last in line for line in ls), 60, f"the last battery value {last}")
        frames = bytes(watch.raw).count(b"THING")  # the column header: drawn once per frame
        assert frames < documents / 4, f"{frames} redraws for {documents} shadow documents"
        watch.proc.terminate()  # `kill` leaves like Ctrl-C: exit 0, the cursor shown again
        assert watch.proc.wait(10) == 0
        wait_until(lambda: b"\x1b[?25h" in bytes(watch.raw)[-200:], 10, "the cursor shown again")


@pytest.mark.parametrize("fleet", [False, True], ids=["rows", "fleet"])
def test_watch_survives_a_broker_restart(
    fleet: bool, new_cloud: Callable[..., LocalCloud], paho_robot: Callable[..., PahoRobot]
) -> None:
    """Stop the whole cloud under a live view, start it again (on a new port): the view says it is
    reconnecting, keeps running, and shows the robots again, with what changed meanwhile."""
    cloud = new_cloud()
    op = _operator(cloud, paho_robot)
    _fake_robot(op, "rs-1", mission="cleaning", battery={"percent": 80})
    _fake_robot(op, "rs-2", mission="idle", battery={"percent": 70})
    argv = [FLEET, "watch", *(["--fleet"] if fleet else []), *cloud.cli_args]
    seen = "cleaning 1" if fleet else "rs-1"
    with PtyProcess(argv, rows=24, cols=120) as watch:
        watch.wait_screen(lambda ls: any(seen in line for line in ls), 30, "the robots")
        old_port = cloud.port
        op.close()
        cloud.stop()
        lines = watch.wait_screen(
            lambda ls: any(f"reconnecting to 127.0.0.1:{old_port} (attempt" in line for line in ls),
            30,
            "the view saying it reconnects",
        )
        assert "not connected" in lines[0]
        again = new_cloud()
        assert again.port != old_port
        op = _operator(again, paho_robot)
        _fake_robot(op, "rs-2", mission="docked", battery={"percent": 70})
        want = "docked 1" if fleet else "docked"

        def back(ls: list[str]) -> bool:
            return (
                f"127.0.0.1:{again.port}" in ls[0]
                and not any("reconnecting" in line for line in ls)
                and any(want in line for line in ls)
            )

        lines = watch.wait_screen(back, 60, "the view connected again with rs-2 docked")
        assert "2 robots" in lines[0]
        assert watch.proc.poll() is None
        assert watch.interrupt() == 0


def test_watch_through_a_pipe_reconnects_and_says_so(
    new_cloud: Callable[..., LocalCloud], paho_robot: Callable[..., PahoRobot], tmp_path: Path
) -> None:
    """Not on a terminal (JSON lines): a restart is a line on stderr, and the rows are printed again."""
    cloud = new_cloud()
    op = _operator(cloud, paho_robot)
    _fake_robot(op, "pipe-1", mission="idle")
    err = (tmp_path / "stderr").open("w+")
    proc = subprocess.Popen(
        [FLEET, "watch", "--json", *cloud.cli_args], stdout=subprocess.PIPE, stderr=err, text=True
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["thing"] == "pipe-1"
        op.close()
        cloud.stop()
        wait_until(
            lambda: "reconnecting to 127.0.0.1" in Path(err.name).read_text(), 30, "the reconnect line"
        )
        new_cloud()
        row = json.loads(proc.stdout.readline())  # the snapshot again, after the reconnect
        assert row["thing"] == "pipe-1" and row["connection"] == "online"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        err.close()
    text = Path(err.name).read_text()
    assert "(attempt 1," in text and "Traceback" not in text


def test_watch_piped_into_head_ends_quietly(
    local_cloud: LocalCloud, paho_robot: Callable[..., PahoRobot]
) -> None:
    """``roomba-fleet watch --json | head -1``: watch ends at its next line, without a traceback."""
    p = f"head{uuid.uuid4().hex[:4]}-"
    op = _operator(local_cloud, paho_robot)
    _fake_robot(op, f"{p}1", mission="idle")
    shell = subprocess.Popen(
        [
            "bash",
            "-c",
            f'"{FLEET}" watch --json --prefix {p} --dir "$1" | head -1',
            "sh",
            str(local_cloud.dir.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    n = 0

    def ended() -> bool:
        nonlocal n
        n += 1
        _fake_robot(op, f"{p}1", mission="idle", n=n)  # a change: watch writes again, into the closed pipe
        return shell.poll() is not None

    wait_until(ended, 30, "watch to end after head exits", interval=0.2)
    out, err = shell.communicate()
    assert json.loads(out)["thing"] == f"{p}1"
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    once = subprocess.run(
        ["bash", "-c", f'"{FLEET}" watch --once --dir "$1" | head -1', "sh", str(local_cloud.dir.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert once.stdout.startswith("THING") and "Traceback" not in once.stderr, once.stderr
