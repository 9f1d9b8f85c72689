"""``roomba-agent update install|status``: put a signed release under the release root by hand, and show
what the launcher and the update feature see there.

``install`` is for an image's first release and for tests: the bundle is verified against the trusted
release certificates (signature, then every wheel's hash) before anything is unpacked, then installed into
``releases/<version>/venv`` exactly as an update job installs it; ``--activate`` makes it ``current`` (the
first install on a robot; on a robot that runs, an update job switches instead). ``status`` reads the
root's links and state files only (it works while the agent is down).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import config as cfg
from base import logs
from base.cli import Parser, add_json

EXIT_FAILED = 1
EXIT_REJECTED = 4
EXIT_NO_ROOT = 3
EXIT_CODES = {
    EXIT_FAILED: "install: the release could not be installed (the reason is printed; nothing is left of it)",
    EXIT_NO_ROOT: "status: the release root does not exist",
    EXIT_REJECTED: "install: the bundle does not verify (signature, hash or format) or does not fit this robot",
}


def _defaults(args: argparse.Namespace) -> cfg.UpdateConfig:
    """``[update]`` of the config file when one is given (or found), else the defaults."""
    if args.config:
        try:
            return cfg.load(args.config).update
        except cfg.ConfigError as exc:
            print(f"roomba-agent update: config problem, using the defaults: {exc}", file=sys.stderr)
    return cfg.UpdateConfig()


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-agent update",
        description="Install a signed release under the release root, or show its state (current, previous, "
        "a pending switch or trial, the last update's result).",
        exit_codes=EXIT_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")
    install = sub.add_parser(
        "install",
        help="verify a release bundle and install it into ROOT/releases/VERSION (--activate: make it current)",
        description="Verify BUNDLE against the trusted release-signing certificates (nothing is unpacked "
        "before the signature and every hash check), build its virtualenv at its final path from the "
        "bundle's wheelhouse (offline), smoke-check it, mark it installed. --activate points current at it.",
        epilog="example:\n  roomba-agent update install roomba-agent-0.2.0.bundle --root /opt/roomba-agent "
        "--trust /etc/roomba-agent/release-trust.pem --activate",
        exit_codes=EXIT_CODES,
    )
    install.add_argument("bundle", metavar="BUNDLE", help="a roomba-agent-VERSION.bundle")
    status = sub.add_parser(
        "status",
        help="current, previous, installed releases, a pending switch or trial, the last result",
        description="What the launcher will start and why: read from ROOT's links and state files.",
        exit_codes=EXIT_CODES,
    )
    for q in (install, status):
        q.add_argument(
            "--root", metavar="DIR", help="the release root (default: [update] root, /opt/roomba-agent)"
        )
        q.add_argument(
            "--config", "-c", metavar="FILE", help="agent TOML file whose [update] gives the defaults"
        )
    install.add_argument(
        "--trust",
        metavar="PEM",
        help="trusted release-signing certificates (default: [update] trust, /etc/roomba-agent/release-trust.pem)",
    )
    install.add_argument("--activate", action="store_true", help="make the release current once installed")
    add_json(status, "the state")
    add_json(install, "the result")
    return p


def run_install(args: argparse.Namespace) -> int:
    from agent.launcher import Layout, LayoutError
    from agent.update.installer import InstallError, LauncherInstaller
    from agent.update.preflight import check_abi, check_platform
    from provisioning.release import ReleaseError, current_platform, load_trust, verify_bundle

    uc = _defaults(args)
    root = Path(args.root or uc.root)
    trust_path = args.trust or uc.trust
    try:
        trust = load_trust(trust_path)
        manifest = verify_bundle(args.bundle, trust)
    except ReleaseError as exc:
        print(f"roomba-agent update: {exc}", file=sys.stderr)
        return EXIT_FAILED if exc.kind == "io" else EXIT_REJECTED
    abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
    refusal = check_abi(manifest.python_abi, abi) or check_platform(manifest.platform, current_platform())
    if refusal is not None:
        print(f"roomba-agent update: {refusal.reason}", file=sys.stderr)
        return EXIT_REJECTED
    layout = Layout(root)
    layout.ensure()
    installer = LauncherInstaller(root, version=manifest.version, restart=lambda code: None)
    try:
        asyncio.run(installer.install(Path(args.bundle), manifest, trust))
        if args.activate:
            layout.activate(manifest.version)
    except (InstallError, LayoutError, OSError) as exc:
        print(f"roomba-agent update: {exc}", file=sys.stderr)
        return EXIT_FAILED
    s = layout.read()
    result = {
        "installed": manifest.version,
        "release_dir": str(layout.release_dir(manifest.version)),
        "current": s.current,
        "previous": s.previous,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"installed {manifest.version} in {result['release_dir']}")
        print(f"current -> {s.current}" + (f", previous -> {s.previous}" if s.previous else ""))
    return 0


def state_lines(s: Any) -> list[str]:
    """Pure: the lines of ``update status`` for :class:`agent.launcher.Slots`."""
    lines = [
        f"current     {s.current or '(none)'}",
        f"previous    {s.previous or '(none)'}",
        f"installed   {', '.join(sorted(s.installed)) or '(none)'}",
    ]
    if s.pending:
        lines.append(
            f"pending     switch to {s.pending.get('to')} at the next start (from {s.pending.get('from')})"
        )
    if s.trial:
        t = s.trial
        failure = f"; failure: {t['failure']}" if t.get("failure") else ""
        lines.append(
            f"trial       {t.get('version')} (from {t.get('from')}): {t.get('failed_starts', 0)} failed start(s), "
            f"bake {t.get('bake_s')} s, commit within {t.get('commit_timeout_s')} s{failure}"
        )
    if s.last:
        last = s.last
        reason = f": {last['reason']}" if last.get("reason") else ""
        lines.append(
            f"last        {last.get('result')} {last.get('from')} -> {last.get('to')} at {last.get('at')}{reason}"
        )
    for version, why in sorted((s.broken or {}).items()):
        lines.append(f"broken      {version}: {why.get('reason') if isinstance(why, dict) else why}")
    return lines


def run_status(args: argparse.Namespace) -> int:
    from agent.launcher import Layout

    root = Path(args.root or _defaults(args).root)
    if not root.is_dir():
        print(
            f"roomba-agent update status: no release root at {root} (install a first release: roomba-agent "
            "update install BUNDLE --root DIR --activate)",
            file=sys.stderr,
        )
        return EXIT_NO_ROOT
    s = Layout(root).read()
    if args.json:
        print(json.dumps({"root": str(root), **s.to_json()}, indent=2, default=str))
    else:
        print(f"release root {root}")
        print("\n".join("  " + line for line in state_lines(s)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    # logs go to stderr: stdout carries only the result (one JSON document with --json)
    logs.configure("warning")
    if args.op == "install":
        return run_install(args)
    return run_status(args)
