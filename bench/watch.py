"""Benchmark of ``roomba-fleet watch`` on a busy fleet; prints ONE JSON line.

A fresh local cloud, ``roomba-fleet simulate --robots N`` (default 200), a fleet-wide clean (so every robot
reports as it moves), then for ``--seconds`` each, on a real pty of 40 x 120:

- ``watch``: the live view (``roomba-fleet watch``);
- ``baseline``: the naive view this replaced, one line printed per shadow document as it arrives (what
  ``watch`` did before issue 10: a 201-line table reprinted on every document comes to the same stream).

For each: ``cpu_pct`` (the viewer process's CPU, percent of one core), ``bytes_per_s`` written to the
terminal (what the terminal emulator has to parse: the cost the user sees as a busy terminal), and
``scrolled`` (lines pushed off the top: a live view that scrolls is unreadable). ``docs_per_s`` is the rate
of shadow documents the fleet published meanwhile, as counted by the baseline.

    .venv/bin/python bench/watch.py [--robots 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base.ptyterm import PtyProcess
from base.testing import wait_until
from localcloud.testing import LocalCloud

TICK = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent

BASELINE = """
import json, sys, time
from localcloud.layout import CloudDir
from localcloud.opclient import OperatorClient
count = 0
with OperatorClient(CloudDir.at(sys.argv[1])) as client:
    client.subscribe(["$aws/things/+/shadow/update/documents"], qos=1)
    for pkt in client.messages(None):
        doc = json.loads(pkt.payload)
        rep = (doc.get("current") or {}).get("state", {}).get("reported", {})
        count += 1
        print(f"{count:>8} {pkt.topic.split('/')[2]:<12} {rep.get('mission')!s:<10} "
              f"{(rep.get('battery') or {}).get('percent')}% {time.strftime('%H:%M:%S')}", flush=True)
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(argv: list[str], seconds: float, env: dict[str, str]) -> dict[str, Any]:
    view = PtyProcess(argv, rows=40, cols=120, env=env)
    try:
        time.sleep(3.0)  # start-up and the initial snapshot are not what is measured
        c0, t0, b0 = cpu_s(view.proc.pid), time.monotonic(), len(view.raw)
        time.sleep(seconds)
        c1, t1, b1 = cpu_s(view.proc.pid), time.monotonic(), len(view.raw)
        lines = [line for line in view.lines() if line.strip()]
        return {
            "cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
            "bytes_per_s": round((b1 - b0) / (t1 - t0)),
            "scrolled": view.scrolled(),
            "last_line": lines[-1][:60] if lines else "",
        }
    finally:
        os.killpg(view.proc.pid, signal.SIGTERM)
        view.proc.wait(20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", type=int, default=200, help="simulated robots (default 200)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per viewer (default 20)")
    args = p.parse_args()
    with LocalCloud.start() as cloud:
        root = str(cloud.dir.root)
        env = dict(os.environ, ROOMBA_FLEET_DIR=root)
        sim = subprocess.Popen(
            [
                str(BIN / "roomba-fleet"),
                "simulate",
                "--robots",
                str(args.robots),
                "--dir",
                root,
                "--seed",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert sim.stdout is not None
            wait_until(lambda: "simulate ready" in (sim.stdout.readline() or ""), 180, what="the fleet")
            subprocess.run(
                [str(BIN / "roomba-fleet"), "command", "--all", "clean", "--dir", root, "--wait"],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=120,
            )
            watch = measure([str(BIN / "roomba-fleet"), "watch", "--dir", root], args.seconds, env)
            base = measure([sys.executable, "-c", BASELINE, root], args.seconds, env)
        finally:
            os.killpg(sim.pid, signal.SIGTERM)
            sim.wait(60)
    counted = base.pop("last_line").split()
    docs = int(counted[0]) if counted and counted[0].isdigit() else 0
    watch.pop("last_line")
    print(
        json.dumps(
            {
                "robots": args.robots,
                "seconds": args.seconds,
                "docs_per_s_approx": round(docs / (args.seconds + 3.0), 1),
                "watch": watch,
                "baseline": base,
                "bytes_ratio": round(base["bytes_per_s"] / max(1, watch["bytes_per_s"]), 1),
                "cpu_ratio": round(base["cpu_pct"] / max(0.1, watch["cpu_pct"]), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
