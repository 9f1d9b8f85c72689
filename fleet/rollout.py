"""``roomba-fleet rollout start|status|abort|pause|resume|run``: staged rollouts of a release, with a brake.

``start`` resolves the targets (things, groups, a prefix or every thing), checks the release is published,
creates the canary job and then runs the controller (:mod:`rollout.controller`) in the foreground, one line
per stage change, until the rollout is done (exit 0) or aborted (exit 1); ``--detach`` leaves it to a
background ``rollout run ID`` (its log in ``DIR/rollouts/ID.log``). ``status`` reads the state file a
controller keeps (any time, from any process): every rollout, one, or ``--watch`` live per version.
``abort``, ``pause`` and ``resume`` ask the running controller; with none running, ``abort`` and ``resume``
act here (``resume`` then controls the rollout in the foreground, as ``run`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from base import logs
from base.cli import Parser, add_json
from fleet.jobs import list_things
from localcloud.apiclient import ApiClient, ApiNotRunning
from localcloud.awsapi.errors import ApiError
from localcloud.layout import DIR_HELP, CloudDir, SettingsError
from rollout import policy
from rollout.controller import (
    Rollout,
    RolloutError,
    controller_alive,
    list_states,
    load_state,
    request,
    rollouts_dir,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

EXIT_OK = 0
EXIT_ABORTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_CODES = {
    EXIT_ABORTED: "the rollout was aborted (its robots on the new version rolled back), or the control plane "
    "refused a request",
    EXIT_USAGE: "usage error (bad option, no such thing, group, release or rollout), or the local cloud is "
    "not running",
    EXIT_INTERRUPTED: "interrupted: the rollout is left as it is, `rollout run ID` takes it over again",
}
PAGE = 250
POLL_S = 2.0
REDRAWS_PER_S = 4
PROBLEMS_SHOWN = 8
STYLES = {
    "queued": "dim",
    "updating": "cyan",
    "in_trial": "bright_cyan",
    "updated": "blue",
    "healthy": "green",
    "rolled_back": "yellow",
    "failed": "red",
    "rejected": "magenta",
    "unhealthy": "bold red",
    "canceled": "bright_black",
}
COLUMNS = ("updating", "in_trial", "updated", "healthy", "rolled_back", "failed", "rejected", "unhealthy")
EXAMPLES = {
    "start": [
        "--release 0.2.0 --all --canary 2% --exponential 10,2 --abort 'failed>10% after 20' --bake 10m",
        "--release 0.2.0 --group kitchen --canary 3 --rate 50 --window docked --detach",
    ],
    "status": ["", "v0_2_0-20261207T230000 --watch", "v0_2_0-20261207T230000 --json"],
    "abort": ["v0_2_0-20261207T230000 --reason 'battery drain'"],
    "pause": ["v0_2_0-20261207T230000"],
    "resume": ["v0_2_0-20261207T230000"],
    "run": ["v0_2_0-20261207T230000"],
}


class UsageError(Exception):
    """What is wrong with the command line, in its options' terms (one line)."""


# targets ------------------------------------------------------------------------------------------------------
def resolve_things(
    client: ApiClient,
    *,
    things: Sequence[str] = (),
    groups: Sequence[str] = (),
    prefix: str | None = None,
    every: bool = False,
) -> list[str]:
    """Thing names: named things (each must exist), the members of groups, a prefix, or every thing."""
    registry = list_things(client)
    names: list[str] = []
    missing = [t for t in things if t not in registry]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UsageError(f"no such thing(s): {', '.join(missing[:5])}{more}")
    names += list(things)
    if prefix is not None or every:
        found = sorted(n for n in registry if every or n.startswith(prefix or ""))
        if not found:
            raise UsageError(
                "no things in the registry" if every else f"--prefix {prefix}: no thing's name starts with it"
            )
        names += found
    for group in groups:
        try:
            members = [
                str(n)
                for n in client.pages(
                    "ListThingsInThingGroup",
                    {"thingGroupName": group, "recursive": True, "maxResults": PAGE},
                    "things",
                )
            ]
        except ApiError as exc:
            if exc.code == "ResourceNotFoundException":
                raise UsageError(f"--group {group}: no such thing group") from None
            raise
        if not members:
            raise UsageError(f"--group {group}: the group has no things")
        names += members
    return list(dict.fromkeys(names))


# views ------------------------------------------------------------------------------------------------------
def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at))


def headline(state: Mapping[str, Any]) -> str:
    s = state.get("summary") or {}
    c = s.get("states") or {}
    return (
        f"rollout {state['id']}: {state['phase']} (roomba-agent {state['version']}) "
        f"{s.get('touched', 0)}/{s.get('targets', len(state.get('targets') or []))} touched, "
        f"{c.get('healthy', 0)} healthy, {s.get('on_new_version', 0)} on {state['version']}"
    )


def version_rows(state: Mapping[str, Any]) -> list[tuple[str, dict[str, int]]]:
    """(version, counts by state) for every version the robots run, the new one first."""
    versions: dict[str, dict[str, int]] = dict((state.get("summary") or {}).get("versions") or {})
    new = str(state["version"])
    return sorted(versions.items(), key=lambda kv: (kv[0] != new, kv[0]))


def problems(state: Mapping[str, Any], limit: int = PROBLEMS_SHOWN) -> list[tuple[str, str, str]]:
    """(thing, state, reason) of robots with a bad verdict, the most recent first."""
    rows = [
        (t, str(r.get("state")), str(r.get("reason") or ""), float(r.get("final_at") or 0.0))
        for t, r in (state.get("robots") or {}).items()
        if r.get("state") in policy.FAILURES | {policy.REJECTED}
    ]
    rows.sort(key=lambda r: (-r[3], r[0]))
    return [(t, s, why) for t, s, why, _ in rows[:limit]]


def status_text(state: Mapping[str, Any]) -> str:
    """One rollout for a person: headline, why, per version, rollback, problems, recent stage changes."""
    s = state.get("summary") or {}
    lines = [headline(state)]
    if state.get("reason"):
        lines.append(f"  why:      {state['reason']}")
    jobs = state.get("jobs") or {}
    names = [j for j in (jobs.get("canary"), jobs.get("main"), *(jobs.get("rollback") or [])) if j]
    lines.append(f"  jobs:     {', '.join(names) or '-'}")
    lines.append(
        f"  canary:   {len(state.get('canary') or [])} robots; plan {json.dumps(_plan_brief(state))}"
    )
    header = ["VERSION", *[c.upper() for c in ("queued", *COLUMNS, "canceled")]]
    cells = [
        [v, *[str(counts.get(c, 0)) for c in ("queued", *COLUMNS, "canceled")]]
        for v, counts in version_rows(state)
    ]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    for row in [header, *cells]:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    rollback = s.get("rollback") or {}
    if rollback.get("robots"):
        counts = ", ".join(f"{n} {k}" for k, n in sorted((rollback.get("states") or {}).items()))
        lines.append(
            f"  rollback: {rollback['robots']} robots ({counts}) by {', '.join(rollback.get('jobs') or [])}"
        )
    bad = problems(state)
    if bad:
        lines.append("  problems:")
        lines += [f"    {t}  {st}  {why}" for t, st, why in bad]
    for event in (state.get("events") or [])[-5:]:
        lines.append(f"  {_when(event.get('at'))}  {event.get('phase')}: {event.get('reason')}")
    return "\n".join(lines)


def _plan_brief(state: Mapping[str, Any]) -> dict[str, Any]:
    plan = state.get("plan") or {}
    keys = ("canary", "rate", "exponential", "abort", "bake_s", "window")
    return {k: plan.get(k) for k in keys if plan.get(k) not in (None, "")}


def list_text(states: Sequence[Mapping[str, Any]]) -> str:
    if not states:
        return "no rollouts (start one with `roomba-fleet rollout start --release VERSION --all`)"
    header = ("ROLLOUT", "VERSION", "PHASE", "TARGETS", "TOUCHED", "HEALTHY", "FAILED", "UPDATED")
    rows = []
    for st in states:
        s = st.get("summary") or {}
        c = s.get("states") or {}
        bad = sum(int(c.get(k, 0)) for k in policy.FAILURES)
        rows.append(
            (
                str(st["id"]),
                str(st["version"]),
                str(st["phase"]),
                str(s.get("targets", "-")),
                str(s.get("touched", "-")),
                str(c.get("healthy", 0)),
                str(bad),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(st.get("updated_at") or 0))),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def live_view(state: Mapping[str, Any] | None, error: str, width: int, height: int) -> RenderableType:
    """Title, why, one bar per state of every version, the rollback, problems and stage changes."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    if state is None:
        return Text(f"roomba-fleet rollout status: {error or 'no data yet'}", style="bold yellow")
    title = Text(
        f" {headline(state)}  {time.strftime('%H:%M:%S')}  "
        f"state {time.time() - float(state.get('updated_at') or 0):.0f} s old ",
        style="bold reverse",
        no_wrap=True,
        overflow="ellipsis",
    )
    parts: list[RenderableType] = [title]
    if error:
        parts.append(Text(error, style="bold yellow", no_wrap=True, overflow="ellipsis"))
    if state.get("reason"):
        style = {
            "aborting": "bold red",
            "aborted": "bold red",
            "paused": "bold yellow",
            "done": "bold green",
        }.get(str(state["phase"]), "")
        parts.append(
            Text(f"{state['phase']}: {state['reason']}", style=style, no_wrap=True, overflow="ellipsis")
        )
    total = max(1, len(state.get("targets") or []))
    bar_width = max(10, min(50, width - 40))
    for version, counts in version_rows(state):
        running = sum(counts.values())
        marker = " (new)" if version == state["version"] else ""
        parts.append(Text(f"{version}{marker}: {running} robots", style="bold"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=12)
        grid.add_column(width=bar_width)
        grid.add_column(justify="right")
        for name in ("queued", *COLUMNS):
            if counts.get(name):
                grid.add_row(
                    Text(name.replace("_", " "), style=STYLES[name]),
                    ProgressBar(
                        total=total, completed=counts[name], complete_style=STYLES[name], width=bar_width
                    ),
                    str(counts[name]),
                )
        parts.append(grid)
    s = state.get("summary") or {}
    rollback = s.get("rollback") or {}
    if rollback.get("robots"):
        counts_line = ", ".join(f"{n} {k}" for k, n in sorted((rollback.get("states") or {}).items()))
        parts.append(Text(f"rollback: {rollback['robots']} robots ({counts_line})", style="yellow"))
    room = max(0, height - len(parts) - 12)
    bad = problems(state, min(PROBLEMS_SHOWN, room))
    if bad:
        parts.append(Text("problems", style="bold"))
        parts += [
            Text(f"  {t}  {st}  {why}", style=STYLES.get(st, ""), no_wrap=True, overflow="ellipsis")
            for t, st, why in bad
        ]
    for event in (state.get("events") or [])[-3:]:
        parts.append(
            Text(
                f"{_when(event.get('at'))}  {event.get('phase')}: {event.get('reason')}",
                style="dim",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    return Group(*parts)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


# the command line ---------------------------------------------------------------------------------------------
def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet rollout",
        description="Staged rollouts of a published release: a canary, then the rest at a rate, watched robot by "
        "robot (job statuses, trials, commits, and health after the update: disconnects, restarts, errors, "
        "failing commands, battery drain) with a brake that pauses or aborts and rolls back.",
        exit_codes=EXIT_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")

    def add(name: str, help_: str, description: str) -> Parser:
        sp: Parser = sub.add_parser(
            name,
            help=help_,
            description=description,
            epilog="examples:\n"
            + "\n".join(f"  roomba-fleet rollout {name} {e}".rstrip() for e in EXAMPLES[name]),
            exit_codes=EXIT_CODES,
        )
        sp.add_argument("--dir", help=DIR_HELP)
        return sp

    s = add(
        "start",
        "start a rollout of a release and control it until it is done or aborted",
        "Create the canary job for the release, wait until every canary robot is healthy (the bake time after it "
        "got the new version, without a problem), then the main job for the rest with the rate and AWS's abort and "
        "timeout configurations. Stops (pause or abort) on the --abort thresholds; an abort cancels what is queued "
        "and rolls back the robots on the new version. One line per stage change.",
    )
    s.add_argument("--release", required=True, metavar="VERSION", help="the version to roll out (published)")
    targets = s.add_mutually_exclusive_group(required=True)
    targets.add_argument("--targets", nargs="+", metavar="THING", help="these things (names)")
    targets.add_argument("--group", nargs="+", metavar="G", help="the things of these thing groups")
    targets.add_argument("--prefix", metavar="P", help="every thing whose name starts with P")
    targets.add_argument("--all", action="store_true", help="every thing of the registry")
    s.add_argument(
        "--id",
        metavar="ID",
        help="the rollout's id (default v<version>-<UTC time>); jobs are ID-canary, ID-main, ID-rollback",
    )
    s.add_argument(
        "--canary",
        metavar="N|P%",
        default="0",
        help="canary robots: N, or P%% of the targets (default 0: none)",
    )
    rate = s.add_mutually_exclusive_group()
    rate.add_argument("--rate", metavar="N", help="main stage: at most N robots a minute (1-1000)")
    rate.add_argument(
        "--exponential",
        metavar="BASE,FACTOR[,N]",
        help="main stage: BASE robots a minute, times FACTOR each time another N (default BASE) succeeded "
        "(or SUCCEEDED:N / NOTIFIED:N)",
    )
    s.add_argument(
        "--abort",
        metavar="RULES",
        help="abort thresholds, joined by commas: failed>10%% after 20, rolled_back>5%%, unhealthy>3, rejected>50%% "
        "(failed counts failed, rolled back and unhealthy robots; a percentage is of the finished robots, once "
        "at least N finished; default none: only the canary gate holds)",
    )
    s.add_argument(
        "--bake",
        metavar="DURATION",
        default="10m",
        help="how long a robot must run the new version without a problem to be healthy (default 10m)",
    )
    s.add_argument(
        "--self-test",
        metavar="DURATION",
        help="the robot's own self-test hold before it commits, at most the bake; the fleet keeps watching "
        "for the whole bake (default 60s, or the bake if shorter)",
    )
    s.add_argument(
        "--window",
        choices=tuple(policy.WINDOWS),
        default="any",
        help="the robot updates only when docked / idle (default any)",
    )
    s.add_argument(
        "--allow-downgrade", action="store_true", help="let robots on a newer version go to this one"
    )
    s.add_argument(
        "--timeout-minutes",
        type=int,
        metavar="N",
        help="an execution in progress this long times out (default: derived from the self-test)",
    )
    s.add_argument(
        "--stage-timeout",
        metavar="DURATION",
        help="pause when the canary is not finished after this long (default: derived)",
    )
    s.add_argument(
        "--offline",
        metavar="DURATION",
        default="60s",
        help="a robot on the new version offline longer than this is unhealthy (default 60s)",
    )
    s.add_argument(
        "--presign-role", metavar="ARN", help="with AWS: the IAM role IoT presigns the bundle URL with"
    )
    s.add_argument(
        "--interval",
        type=float,
        default=POLL_S,
        metavar="S",
        help=f"seconds between looks (default {POLL_S:g})",
    )
    s.add_argument(
        "--detach",
        action="store_true",
        help="start it, leave the control to a background `rollout run ID`, and return",
    )
    add_json(s, "one JSON line per stage change, then the final summary")

    st = add(
        "status",
        "show rollouts (their state files), one rollout, or --watch one live",
        "Without ID: every rollout, newest first. With ID: its phase, why, robots per running version and state, "
        "the rollback, problems and stage changes; --watch redraws it live on a terminal (lines when it changes "
        "through a pipe).",
    )
    st.add_argument("rollout_id", metavar="ID", nargs="?", help="the rollout's id")
    st.add_argument("--watch", action="store_true", help="follow it live (Ctrl-C leaves)")
    st.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between looks (default 1)"
    )
    add_json(st, "the state (with ID: the summary and the robots; without: the summaries)")

    for name, help_, description in (
        (
            "abort",
            "abort a rollout: cancel what is queued, roll back the robots on the new version",
            "Ask the rollout's controller to abort; with no controller running, abort here: CancelJob on its jobs "
            "and a rollback job for the robots on the new version.",
        ),
        (
            "pause",
            "pause a rollout: start no next stage",
            "Ask the rollout's controller to start no next stage until resume (a job AWS already rolls out is not held).",
        ),
        (
            "resume",
            "resume a paused rollout (a paused canary is promoted)",
            "Ask the rollout's controller to leave the pause; with no controller running, resume here and control "
            "the rollout in the foreground (or --detach).",
        ),
        (
            "run",
            "control an existing rollout in the foreground (after a crash, or for --detach)",
            "Become the rollout's controller and run it until it is done or aborted.",
        ),
    ):
        a = add(name, help_, description)
        a.add_argument("rollout_id", metavar="ID", help="the rollout's id")
        if name in ("abort", "pause"):
            a.add_argument("--reason", help="why (kept in the rollout's state)")
        if name in ("resume", "run"):
            a.add_argument(
                "--interval",
                type=float,
                default=POLL_S,
                metavar="S",
                help=f"seconds between looks (default {POLL_S:g})",
            )
            a.add_argument("--detach", action="store_true", help="leave the control to a background process")
        add_json(a, "the rollout's summary (run/resume: one JSON line per stage change, then the summary)")
    return p


def _say(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    prog = f"roomba-fleet rollout {args.op}"
    cloud = CloudDir.at(args.dir)
    try:
        return RUN[args.op](args, cloud, prog)
    except (UsageError, policy.SpecError, RolloutError) as exc:
        _say(prog, str(exc))
        return EXIT_USAGE
    except (ApiNotRunning, SettingsError) as exc:
        _say(prog, str(exc))
        return EXIT_USAGE
    except ApiError as exc:
        _say(prog, f"{exc.code}: {exc.message}")
        return EXIT_ABORTED


def _plan(args: argparse.Namespace) -> policy.Plan:
    limits = policy.HealthLimits(offline_s=policy.parse_duration(args.offline, "--offline"))
    return policy.make_plan(
        canary=args.canary,
        rate=args.rate,
        exponential=args.exponential,
        abort=args.abort,
        bake=args.bake,
        window=args.window,
        allow_downgrade=args.allow_downgrade,
        self_test=args.self_test,
        timeout_minutes=args.timeout_minutes,
        stage_timeout=args.stage_timeout,
        limits=limits,
        presign_role_arn=args.presign_role,
    )


def _printer(args: argparse.Namespace, rollout_id: str) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"rollout": rollout_id, **event}), flush=True)
        else:
            print(f"{_when(event['at'])} {rollout_id} {event['phase']}: {event['reason']}", flush=True)

    return show


def _start(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: must be above 0 seconds")
    plan = _plan(args)
    with ApiClient(cloud) as client:
        things = resolve_things(
            client, things=args.targets or (), groups=args.group or (), prefix=args.prefix, every=args.all
        )
    r = Rollout.start(
        cloud, release=args.release, targets=things, plan=plan, rollout_id=args.id, on_event=None
    )
    show = _printer(args, r.id)
    for event in r.state["events"]:
        show(event)
    if args.detach:
        r.close()
        return _detach(cloud, r.id, args, prog)
    r.on_event = show
    return _control(r, args)


def _detach(cloud: CloudDir, rollout_id: str, args: argparse.Namespace, prog: str) -> int:
    log = rollouts_dir(cloud) / f"{rollout_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.cli",
                "rollout",
                "run",
                rollout_id,
                "--dir",
                str(cloud.root),
                "--interval",
                str(args.interval),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    doc = {"rollout": rollout_id, "detached": True, "pid": proc.pid, "log": str(log)}
    if args.json:
        print(json.dumps(doc), flush=True)
    else:
        print(
            f"{prog}: rollout {rollout_id} runs in the background (pid {proc.pid}, log {log}); "
            f"`roomba-fleet rollout status {rollout_id} --watch` follows it",
            flush=True,
        )
    return EXIT_OK


def _control(r: Rollout, args: argparse.Namespace) -> int:
    """Run the controller here until the rollout is over; 0 done, 1 aborted, 3 interrupted."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        phase = r.run(interval=args.interval)
    except KeyboardInterrupt:
        r.save(time.time())
        _say(
            f"roomba-fleet rollout {args.op}",
            f"interrupted: rollout {r.id} stays {r.phase}; `roomba-fleet rollout run {r.id}` takes it over",
        )
        r.close()
        return EXIT_INTERRUPTED
    summary = r.summary()
    r.close()
    if args.json:
        print(json.dumps({"rollout": r.id, "summary": summary}), flush=True)
    else:
        print(_summary_line(summary), flush=True)
    return EXIT_OK if phase == "done" else EXIT_ABORTED


def _summary_line(summary: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in (summary.get("states") or {}).items() if n)
    line = f"rollout {summary['id']} {summary['phase']}: {counts}"
    rb = summary.get("rollback") or {}
    if rb.get("robots"):
        line += f"; rollback: {', '.join(f'{n} {k}' for k, n in sorted((rb.get('states') or {}).items()))}"
    return line


def _status(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: must be above 0 seconds")
    if args.rollout_id is None:
        if args.watch:
            raise UsageError("--watch follows one rollout: give its ID")
        states = list_states(cloud)
        if args.json:
            print(
                json.dumps(
                    {"rollouts": [s.get("summary") or {"id": s["id"], "phase": s["phase"]} for s in states]},
                    indent=2,
                )
            )
        else:
            print(list_text(states))
        return EXIT_OK
    state = load_state(cloud, args.rollout_id)
    if not args.watch:
        if args.json:
            print(
                json.dumps(
                    {
                        "summary": state.get("summary"),
                        "robots": state.get("robots"),
                        "events": state.get("events"),
                    },
                    indent=2,
                )
            )
        else:
            print(status_text(state))
        return EXIT_OK
    terminal = not args.json and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    try:
        if terminal:
            _watch_live(cloud, args.rollout_id, args.interval)
        else:
            _watch_lines(cloud, args.rollout_id, args.interval, as_json=args.json)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _read(cloud: CloudDir, rollout_id: str) -> tuple[dict[str, Any] | None, str]:
    try:
        return load_state(cloud, rollout_id), ""
    except RolloutError as exc:
        return None, str(exc)


def _watch_lines(cloud: CloudDir, rollout_id: str, interval: float, *, as_json: bool) -> None:
    shown = ""
    while True:
        state, _error = _read(cloud, rollout_id)
        if state is not None:
            s = state.get("summary") or {}
            line = (
                json.dumps(
                    {
                        "rollout": rollout_id,
                        "phase": state["phase"],
                        "states": s.get("states"),
                        "versions": s.get("versions"),
                    }
                )
                if as_json
                else headline(state)
            )
            if line != shown:
                shown = line
                print(line, flush=True)
            if state["phase"] in ("done", "aborted"):
                return
        time.sleep(interval)


def _watch_live(cloud: CloudDir, rollout_id: str, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    latest: list[Any] = [None, ""]

    def frame() -> RenderableType:
        from rich.text import Text

        try:
            size = console.size
            return live_view(latest[0], latest[1], size.width, size.height)
        except Exception as exc:  # a bad frame must not stop the redraw thread; say what broke
            return Text(f"roomba-fleet rollout status: cannot draw the view: {exc!r}", style="bold red")

    with Live(get_renderable=frame, console=console, auto_refresh=True, refresh_per_second=REDRAWS_PER_S):
        while True:
            state, error = _read(cloud, rollout_id)
            if state is not None:
                latest[0] = state
                alive = controller_alive(state) or state["phase"] in ("done", "aborted")
                latest[1] = (
                    ""
                    if alive
                    else "no controller is running it: `roomba-fleet rollout run ID` takes it over"
                )
            else:
                latest[1] = error
            time.sleep(interval)


def _ask(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    state = load_state(cloud, args.rollout_id)
    reason = getattr(args, "reason", None) or ""
    if state["phase"] in ("done", "aborted"):
        raise UsageError(f"rollout {args.rollout_id} is {state['phase']}: nothing to {args.op}")
    if controller_alive(state):
        request(cloud, args.rollout_id, args.op, reason)
        doc = {"rollout": args.rollout_id, "requested": args.op, "controller": state.get("pid")}
        print(
            json.dumps(doc)
            if args.json
            else f"{prog}: asked the controller (pid {state.get('pid')}) to {args.op} rollout {args.rollout_id}"
        )
        return EXIT_OK
    if args.op == "pause":
        request(cloud, args.rollout_id, "pause", reason)
        print(
            json.dumps({"rollout": args.rollout_id, "requested": "pause", "controller": None})
            if args.json
            else f"{prog}: no controller runs {args.rollout_id}; it pauses when one takes it over"
        )
        return EXIT_OK
    r = Rollout.load(cloud, args.rollout_id)
    if args.op == "abort":
        r.abort(reason or "aborted by the operator")
        r.save(time.time())
        summary = r.summary()
        r.close()
        if args.json:
            print(json.dumps({"rollout": r.id, "summary": summary}))
        else:
            print(
                f"{prog}: {r.id} {r.phase}: {r.state.get('reason')}; rollback jobs: {', '.join(r.state['jobs']['rollback']) or 'none'}"
            )
            print(f"  `roomba-fleet rollout run {r.id}` follows the rollback until it is over")
        return EXIT_OK
    r.resume()
    r.save(time.time())
    if args.detach:
        r.close()
        return _detach(cloud, r.id, args, prog)
    r.on_event = _printer(args, r.id)
    return _control(r, args)


def _run(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    state = load_state(cloud, args.rollout_id)
    if controller_alive(state) and state.get("pid") != os.getpid():
        raise UsageError(f"rollout {args.rollout_id} has a controller already (pid {state.get('pid')})")
    if args.detach:
        return _detach(cloud, args.rollout_id, args, prog)
    r = Rollout.load(cloud, args.rollout_id, on_event=_printer(args, args.rollout_id))
    return _control(r, args)


RUN: dict[str, Callable[[argparse.Namespace, CloudDir, str], int]] = {
    "start": _start,
    "status": _status,
    "abort": _ask,
    "pause": _ask,
    "resume": _ask,
    "run": _run,
}


if __name__ == "__main__":
    sys.exit(main())
