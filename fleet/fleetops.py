"""``roomba-fleet shadow get|update --all | --prefix P``: one shadow operation over many robots at once.

Speaks the same MQTT shadow protocol as ``roomba-fleet shadow`` (operator identity, one ``clientToken``
per request), but pipelines the requests: all of them are published first, then the answers are collected
by token, so a thousand robots take one round trip, not a thousand. The robots are those added to DIR
(``robot add`` or ``simulate``), selected by ``--all`` or a name ``--prefix``.

``get`` prints one JSON object keyed by thing name (the ``get/accepted`` document, or ``{"error": ...}``
with the rejection). ``update`` sends the same document to each robot; the string ``{thing}`` anywhere in
it is replaced by the thing name, e.g. a command id per robot: ``{"id": "m1-{thing}", "action": "clean"}``.
Exit 0 when every robot accepted, 1 when any rejected or did not answer, 2 for usage errors or when the
local cloud is not running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from base import logs
from localcloud.layout import CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient

EXIT_PARTIAL = 1
EXIT_USAGE = 2
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


def shadow_prefix(thing: str, name: str | None) -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    document: dict[str, Any]


def fleet_request(
    cloud: CloudDir,
    things: Sequence[str],
    op: str,
    body: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = 10.0,
    client: OperatorClient | None = None,
) -> dict[str, Outcome | None]:
    """One shadow ``get``/``update``/``delete`` per thing, pipelined; None for a thing that did not answer.

    Pass ``client`` to reuse a connection (e.g. a benchmark measuring many rounds).
    """
    run = f"{uuid.uuid4().hex[:10]}-"
    tokens: dict[str, str] = {}
    own = client is None
    conn = client or OperatorClient(cloud, timeout=timeout)
    try:
        if name:
            filters = [
                f"$aws/things/+/shadow/name/{name}/{op}/accepted",
                f"$aws/things/+/shadow/name/{name}/{op}/rejected",
            ]
        else:
            filters = [f"$aws/things/+/shadow/{op}/accepted", f"$aws/things/+/shadow/{op}/rejected"]
        conn.subscribe(filters, qos=1)
        for i, thing in enumerate(things):
            token = f"{run}{i}"
            tokens[token] = thing
            payload = dict(personalise(body, thing)) if body else {}
            payload["clientToken"] = token
            conn.publish(f"{shadow_prefix(thing, name)}/{op}", json.dumps(payload).encode(), qos=1)
        results: dict[str, Outcome | None] = {t: None for t in things}
        waiting = len(tokens)
        deadline = time.monotonic() + timeout
        for pkt in conn.messages(max(0.0, deadline - time.monotonic())):
            try:
                doc = json.loads(pkt.payload)
            except ValueError:
                continue
            got = doc.get("clientToken") if isinstance(doc, dict) else None
            answered = tokens.pop(got) if isinstance(got, str) and got in tokens else None
            if answered is None:
                continue
            results[answered] = Outcome(pkt.topic.endswith("/accepted"), doc)
            waiting -= 1
            if waiting == 0 or time.monotonic() > deadline:
                break
        return results
    finally:
        if own:
            conn.close()


def render(results: Mapping[str, Outcome | None]) -> dict[str, Any]:
    """The JSON printed: accepted documents as they are, rejections and silence under ``error``."""
    out: dict[str, Any] = {}
    for thing, outcome in sorted(results.items()):
        if outcome is None:
            out[thing] = {"error": {"code": None, "message": "no answer from the shadow service in time"}}
        elif outcome.accepted:
            doc = dict(outcome.document)
            doc.pop("clientToken", None)
            out[thing] = doc
        else:
            doc = outcome.document
            out[thing] = {"error": {"code": doc.get("code"), "message": doc.get("message")}}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roomba-fleet shadow", description="shadow get/update over many robots")
    sub = p.add_subparsers(dest="op", required=True)
    for op in ("get", "update"):
        sp = sub.add_parser(op)
        group = sp.add_mutually_exclusive_group(required=True)
        group.add_argument("--all", action="store_true", help="every robot of DIR")
        group.add_argument("--prefix", help="robots whose thing name starts with this")
        if op == "update":
            sp.add_argument(
                "document",
                help='request document, e.g. \'{"state":{"desired":{"command":{"id":"m1-{thing}",'
                '"action":"clean"}}}}\' ({thing} becomes each thing name)',
            )
        sp.add_argument("--name", help="named shadow (default: the classic shadow)")
        sp.add_argument(
            "--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)"
        )
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for all answers")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("warning")
    prog = f"roomba-fleet shadow {args.op}"
    body: dict[str, Any] | None = None
    if args.op == "update":
        try:
            body = json.loads(args.document)
        except ValueError as exc:
            print(f"{prog}: the document is not valid JSON ({exc})", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(body, dict):
            print(f"{prog}: the document must be a JSON object", file=sys.stderr)
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
        results = fleet_request(cloud, things, args.op, body, name=args.name, timeout=args.timeout)
    except (CloudNotRunning, SettingsError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(render(results), indent=2))
    bad = [t for t, o in results.items() if o is None or not o.accepted]
    if bad:
        print(f"{prog}: {len(bad)} of {len(things)} not accepted (first: {bad[0]})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0
