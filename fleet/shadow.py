"""``roomba-fleet shadow get|update|delete THING [--name SHADOW]``: operator access to shadows, and
``roomba-fleet shadow get|update --all | --prefix P``: one operation over many robots at once.

Both speak the MQTT shadow protocol a robot does, as the privileged operator identity
(:mod:`localcloud.opclient`).

For one thing, the response document is printed as JSON on stdout; exit 0 when accepted, 1 when rejected
(the rejection is printed too), 2 for usage errors or when the local cloud is not running / not answering.

For many, the requests are pipelined (all published first, then the answers collected by token), so a
thousand robots take one round trip, not a thousand. The robots are those added to DIR (``robot add`` or
``simulate``), selected by ``--all`` or a name ``--prefix``. ``get`` prints one JSON object keyed by thing
name (the ``get/accepted`` document, or ``{"error": ...}`` with the rejection). ``update`` sends the same
document to each robot; the string ``{thing}`` anywhere in it is replaced by the thing name, e.g. a command
id per robot: ``{"id": "m1-{thing}", "action": "clean"}``. Exit 0 when every robot accepted, 1 when any
rejected or did not answer, 2 for usage errors or when the local cloud is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from base import logs
from base.cli import Parser, entry, subcommands
from localcloud.layout import DIR_HELP, CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient, ShadowAnswer, shadow_request

EXIT_REJECTED = 1
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 2
THING_PLACEHOLDER = "{thing}"


def select(known: Sequence[str], *, all_robots: bool, prefix: str | None) -> list[str]:
    """The robots an operation applies to (sorted, no duplicates)."""
    if all_robots:
        return sorted(set(known))
    return sorted({t for t in known if prefix is not None and t.startswith(prefix)})


def personalise(doc: Any, thing: str) -> Any:
    """Replace ``{thing}`` in every string of ``doc`` (keys stay as they are)."""
    if isinstance(doc, str):
        return doc.replace(THING_PLACEHOLDER, thing)
    if isinstance(doc, Mapping):
        return {k: personalise(v, thing) for k, v in doc.items()}
    if isinstance(doc, list):
        return [personalise(v, thing) for v in doc]
    return doc


def fleet_request(
    cloud: CloudDir,
    things: Sequence[str],
    op: str,
    body: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = 10.0,
    client: OperatorClient | None = None,
) -> dict[str, ShadowAnswer | None]:
    """One shadow ``get``/``update``/``delete`` per thing with ``body`` personalised, pipelined; None for a
    thing that did not answer. Pass ``client`` to reuse a connection (e.g. a benchmark measuring rounds)."""
    run = f"{uuid.uuid4().hex[:10]}-"
    payloads: dict[str, dict[str, Any]] = {}
    for i, thing in enumerate(things):
        payload = dict(personalise(body, thing)) if body else {}
        payload["clientToken"] = f"{run}{i}"  # one per robot, whatever the document says
        payloads[thing] = payload
    conn = client or OperatorClient(cloud, timeout=timeout)
    try:
        return conn.shadow_requests(op, payloads, name=name, timeout=timeout)
    finally:
        if client is None:
            conn.close()


def render(results: Mapping[str, ShadowAnswer | None]) -> dict[str, Any]:
    """The JSON printed: accepted documents as they are, rejections and silence under ``error``."""
    out: dict[str, Any] = {}
    for thing, answer in sorted(results.items()):
        if answer is None:
            out[thing] = {"error": {"code": None, "message": "no answer from the shadow service in time"}}
        elif answer.accepted:
            doc = dict(answer.document)
            doc.pop("clientToken", None)
            out[thing] = doc
        else:
            doc = answer.document
            out[thing] = {"error": {"code": doc.get("code"), "message": doc.get("message")}}
    return out


UPDATE_EXAMPLE = '{"state":{"desired":{"power":"on"}}}'
EXAMPLES = {
    "get": ["get r1", "get r1 --name config", "get --prefix sim-"],
    "update": [
        f"update r1 '{UPDATE_EXAMPLE}'",
        """update --all '{"state":{"desired":{"command":{"id":"m1-{thing}","action":"clean"}}}}'""",
    ],
    "delete": ["delete r1"],
}
SINGLE_CODES = {
    1: "the shadow service rejected the request (the rejection is printed)",
    2: "usage error, or the local cloud is not running / not answering",
}
MANY_CODES = {
    1: "rejected (the rejection is printed); with --all/--prefix: some robot rejected or did not answer",
    2: "usage error (or no robot selected), or the local cloud is not running / not answering",
}


def build_parser() -> Parser:
    """One parser for one robot (THING) and for many (--all, --prefix P)."""
    p = Parser(
        prog="roomba-fleet shadow",
        description="Operator access to shadows over MQTT, as the privileged operator identity. The answer "
        "is printed as JSON: the response document for one THING; for --all/--prefix one JSON object keyed "
        "by thing name (the accepted document, or an error object).",
        exit_codes=MANY_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")
    for op, help_, codes in (
        ("get", "print a shadow (one THING, or many robots with --all/--prefix)", MANY_CODES),
        ("update", "update a shadow (one THING, or the same document to many robots)", MANY_CODES),
        ("delete", "delete one THING's shadow", SINGLE_CODES),
    ):
        many = op != "delete"
        sp = sub.add_parser(
            op,
            help=help_,
            description=f"{help_[0].upper()}{help_[1:]}.",
            epilog="examples:\n" + "\n".join(f"  roomba-fleet shadow {e}" for e in EXAMPLES[op]),
            exit_codes=codes,
        )
        if many:
            sp.add_argument(
                "thing", nargs="?", metavar="THING", help="the robot's thing name (or use --all / --prefix)"
            )
            group = sp.add_mutually_exclusive_group()
            group.add_argument("--all", action="store_true", help="every robot of DIR (instead of THING)")
            group.add_argument(
                "--prefix",
                metavar="P",
                help="robots of DIR whose thing name starts with P (instead of THING)",
            )
        else:
            sp.add_argument("thing", metavar="THING", help="the robot's thing name")
        if op == "update":
            sp.add_argument(
                "document",
                metavar="DOCUMENT",
                help=f"request document, e.g. '{UPDATE_EXAMPLE}'; with --all/--prefix the text {{thing}} "
                "anywhere in it becomes each thing name",
            )
        sp.add_argument("--name", help="named shadow (default: the classic shadow)")
        sp.add_argument("--dir", help=DIR_HELP)
        sp.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="seconds to wait for the answer(s) (default 5 for one THING, 10 for many)",
        )
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Options and the positionals (THING, DOCUMENT) in any order, e.g. ``update r1 --dir D DOC``."""
    parser = build_parser()
    words = list(argv)
    ops = subcommands(parser)
    if not words or words[0] not in ops:
        return parser.parse_args(words)  # help, version, or a usage error
    op_parser = ops[words[0]]
    args = op_parser.parse_intermixed_args(words[1:])
    args.op = words[0]
    many = bool(getattr(args, "all", False) or getattr(args, "prefix", None) is not None)
    if many and args.thing is not None:
        op_parser.error("give THING or --all/--prefix, not both")
    if not many and args.thing is None:
        op_parser.error("give THING, --all or --prefix P")
    args.many = many
    return args


def _request_document(prog: str, text: str) -> dict[str, Any] | None:
    """The ``update`` document as a JSON object, or None after saying what is wrong with it."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        print(f"{prog}: the document is not valid JSON ({exc})", file=sys.stderr)
        return None
    if not isinstance(body, dict):
        print(f"{prog}: the document must be a JSON object", file=sys.stderr)
        return None
    return body


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    if args.many:
        return _many(args)
    prog = f"roomba-fleet shadow {args.op}"
    timeout = 5.0 if args.timeout is None else args.timeout
    for what, name in (("thing", args.thing), ("shadow", args.name)):
        if name is not None and (not name or any(c in name for c in "/+#\0")):
            print(
                f"{prog}: {what} name {name!r} cannot be part of an MQTT topic "
                "(names are 1-128 of [a-zA-Z0-9:_-])",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
    body: dict[str, Any] | None = None
    if args.op == "update":
        body = _request_document(prog, args.document)
        if body is None:
            return EXIT_UNAVAILABLE
    try:
        accepted, doc = shadow_request(
            CloudDir.at(args.dir), args.thing, args.op, body, name=args.name, timeout=timeout
        )
    except (CloudNotRunning, SettingsError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(doc, indent=2, sort_keys=False))
    if not accepted:
        print(f"{prog}: rejected ({doc.get('code')}: {doc.get('message')})", file=sys.stderr)
        return EXIT_REJECTED
    return 0


def _many(args: argparse.Namespace) -> int:
    """``shadow get|update --all|--prefix P``."""
    prog = f"roomba-fleet shadow {args.op}"
    timeout = 10.0 if args.timeout is None else args.timeout
    body: dict[str, Any] | None = None
    if args.op == "update":
        body = _request_document(prog, args.document)
        if body is None:
            return EXIT_USAGE
    cloud = CloudDir.at(args.dir)
    things = select(cloud.known_robots(), all_robots=args.all, prefix=args.prefix)
    if not things:
        which = "no robots" if args.all else f"no robot name starts with {args.prefix!r}"
        print(
            f"{prog}: {which} in {cloud.root} (add some with `roomba-fleet robot add` or "
            "`roomba-fleet simulate`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        results = fleet_request(cloud, things, args.op, body, name=args.name, timeout=timeout)
    except (CloudNotRunning, SettingsError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(render(results), indent=2))
    bad = [t for t, o in results.items() if o is None or not o.accepted]
    if bad:
        print(f"{prog}: {len(bad)} of {len(things)} not accepted (first: {bad[0]})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


if __name__ == "__main__":
    entry(main)()
