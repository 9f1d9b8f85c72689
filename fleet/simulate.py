"""``roomba-fleet simulate --robots N``: a fleet of simulated robots, each driven by the real agent.

Provisions N identities in DIR once (reused on the next run), then starts the robots in spawned shard
processes, ``--ramp`` new connections per second, with ``--faults`` for seeded weather; the status is kept
in ``DIR/run/simulate.json`` and Ctrl-C / SIGTERM stop every robot cleanly. This module checks the command
line; :mod:`fleetsim.runner` runs the fleet. Also ``python -m fleet.simulate``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from base import logs
from base.cli import Parser, add_json, entry
from fleetsim.faults import FaultSpecError, parse_faults
from fleetsim.runner import (
    RunOptions,
    connection_override,
    provision,
    robot_names,
    run_fleet,
    status_path,
)
from fleetsim.shard import ConnectionOverride
from localcloud.layout import DIR_HELP, CloudDir, SettingsError

EXIT_USAGE = 2


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet simulate",
        description="A fleet of simulated robots, each driven by the real agent, against the local cloud "
        "(or --config's endpoint). Identities are provisioned in DIR once and reused; Ctrl-C or SIGTERM "
        "stops every robot cleanly. The status is kept in DIR/run/simulate.json.",
        epilog="output: progress lines on stderr; once every robot is connected, one line on stdout: "
        "simulate ready robots=N connected=N seconds=T. With --json, stdout is instead one JSON document "
        "printed when the fleet stops: the final status (robots, started, connected, ready, outbox_depth, "
        "per_robot, elapsed_s, all_connected_s, processes, faults, broker_restarts, final), the same as "
        "DIR/run/simulate.json.\n\n"
        "example: roomba-fleet simulate --robots 100 --faults link_drop=0.01 --duration 60",
        exit_codes={
            0: "stopped cleanly (Ctrl-C, SIGTERM or --duration)",
            1: "provisioning failed or a simulator process died",
            EXIT_USAGE: "usage error, or the local cloud is not running",
        },
    )
    p.add_argument("--robots", type=int, required=True, help="number of simulated robots")
    p.add_argument("--dir", help=DIR_HELP)
    p.add_argument("--seed", type=int, default=0, help="seed for the robots and the faults (default 0)")
    p.add_argument(
        "--faults",
        default=None,
        help="e.g. link_drop=0.01,broker_restart=60,serial_noise=0.001,"
        "stuck=0.05,flat=0.02 (see docs/fleet-sim.md)",
    )
    p.add_argument("--prefix", default="sim-", help="thing name prefix (default sim-: sim-0001, ...)")
    p.add_argument("--config", help="an agent configuration whose [connection] to use instead of DIR's cloud")
    p.add_argument("--per-process", type=int, default=500, help="robots per simulator process (default 500)")
    p.add_argument("--ramp", type=float, default=200.0, help="new connections per second, whole fleet")
    p.add_argument("--stream-ms", type=float, default=None, help="sensor stream period (default: by size)")
    p.add_argument("--report-min-s", type=float, default=1.0, help="agent's min seconds between reports")
    p.add_argument("--telemetry-s", type=float, default=10.0, help="agent's telemetry period")
    p.add_argument("--reconnect-max-ms", type=int, default=10000, help="agent's MQTT reconnect backoff cap")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--durable", action="store_true", help="fsync every ledger/outbox commit (slow at scale)")
    p.add_argument("--log-level", default="warning", help="shard log level (logs in DIR/logs/)")
    p.add_argument(
        "--release-trust",
        metavar="PEM",
        help="release-signing certificates the robots trust for updates (default: DIR's own, "
        "DIR/release-signing/release-signing.pem, when it exists)",
    )
    p.add_argument(
        "--release", metavar="VERSION", help="the release every robot starts on (default: this agent's)"
    )
    p.add_argument(
        "--commit-timeout",
        type=float,
        metavar="S",
        help="the robots' [update] commit_timeout_s: how long a trial may take to commit (default: 300; "
        "a failing self-test gives up 15 s before it)",
    )
    add_json(p, "the final status document when the fleet stops (stdout holds only that)")
    return p


def default_release_trust(cloud: CloudDir) -> str | None:
    """The local cloud's own release-signing certificate (``roomba-fleet release build`` makes it)."""
    from fleet.release import cloud_signer_dir
    from provisioning.release import SIGNING_CERT

    path = cloud_signer_dir(cloud) / SIGNING_CERT
    return str(path) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    prog = "roomba-fleet simulate"

    def say(text: str) -> None:
        print(f"{prog}: {text}", file=sys.stderr, flush=True)

    if args.robots < 1:
        say("--robots must be at least 1")
        return EXIT_USAGE
    if args.commit_timeout is not None and args.commit_timeout < 20:
        say("--commit-timeout must be at least 20 s (the self-test gives up 15 s before it)")
        return EXIT_USAGE
    if args.per_process < 1 or args.ramp <= 0:
        say("--per-process must be at least 1 and --ramp above 0")
        return EXIT_USAGE
    try:
        faults = parse_faults(args.faults)
    except FaultSpecError as exc:
        for problem in exc.problems:
            say(f"--faults: {problem}")
        return EXIT_USAGE
    cloud = CloudDir.at(args.dir)
    override: ConnectionOverride | None = None
    if args.config:
        from agent.config import ConfigError

        try:
            override = connection_override(args.config)
        except ConfigError as exc:
            for problem in exc.problems:
                say(problem)
            return EXIT_USAGE
    else:
        from localcloud.up import run_info

        if run_info(cloud) is None:
            say(
                f"the local cloud in {cloud.root} is not running; start it with `roomba-fleet up --dir "
                f"{cloud.root}` (or pass --config with another endpoint)"
            )
            return EXIT_USAGE
    if faults.broker_restart and override is not None:
        say("--faults broker_restart needs the local cloud (it restarts DIR's broker); drop --config")
        return EXIT_USAGE
    names = robot_names(args.prefix, args.robots)
    try:
        t0 = time.monotonic()
        created, reused = provision(cloud, names, say=say)
    except (SettingsError, OSError, ValueError) as exc:
        say(f"provisioning failed: {exc}")
        return 1
    say(f"{args.robots} identities ready ({created} new, {reused} reused) in {time.monotonic() - t0:.1f} s")
    options = RunOptions(
        seed=args.seed,
        per_process=args.per_process,
        ramp_per_s=args.ramp,
        stream_period_s=args.stream_ms / 1000.0 if args.stream_ms else None,
        report_min_s=args.report_min_s,
        telemetry_s=args.telemetry_s,
        reconnect_max_ms=args.reconnect_max_ms,
        duration_s=args.duration,
        durable=args.durable,
        log_level=args.log_level,
        faults_text=args.faults,
        release_trust=args.release_trust or default_release_trust(cloud),
        version=args.release,
        commit_timeout_s=args.commit_timeout,
    )
    if not args.json:
        return run_fleet(cloud, names, faults, options, override, say)
    with contextlib.redirect_stdout(sys.stderr):  # the ready line too: stdout holds only the document
        code = run_fleet(cloud, names, faults, options, override, say)
    try:
        final = json.loads(status_path(cloud.root).read_text())
    except (OSError, ValueError) as exc:
        say(f"cannot read the final status {status_path(cloud.root)}: {exc}")
        return 1
    print(json.dumps(final, indent=2))
    return code


if __name__ == "__main__":
    entry(main)()
