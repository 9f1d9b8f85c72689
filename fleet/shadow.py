"""``roomba-fleet shadow get|update|delete THING [--name SHADOW]``: operator access to shadows.

Speaks the same MQTT shadow protocol a robot does (publish to ``.../get`` etc., wait for the response with
our ``clientToken``), as the privileged operator identity. Prints the response document as JSON on stdout;
exit 0 when accepted, 1 when rejected (the rejection is printed too), 2 for usage errors or when the local
cloud is not running / not answering.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

from base import logs
from localcloud.layout import CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient

EXIT_REJECTED = 1
EXIT_UNAVAILABLE = 2


def shadow_prefix(thing: str, name: str | None) -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")


def request(
    cloud: CloudDir,
    thing: str,
    op: str,
    body: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = 5.0,
) -> tuple[bool, dict[str, Any]]:
    """One shadow request as the operator; returns (accepted, response document)."""
    prefix = shadow_prefix(thing, name)
    token = uuid.uuid4().hex
    payload = dict(body or {})
    payload.setdefault("clientToken", token)
    token = payload["clientToken"]
    with OperatorClient(cloud, timeout=timeout) as client:
        client.subscribe([f"{prefix}/{op}/accepted", f"{prefix}/{op}/rejected"], qos=1)
        client.publish(f"{prefix}/{op}", json.dumps(payload).encode())
        for pkt in client.messages(timeout):
            try:
                doc = json.loads(pkt.payload)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("clientToken") == token:
                return pkt.topic.endswith("/accepted"), doc
    raise CloudNotRunning(
        f"no answer from the shadow service within {timeout:g} s (the broker is up); "
        f"check {cloud.service_log} and the `roomba-fleet up` terminal"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roomba-fleet shadow", description="operator access to shadows (JSON)")
    sub = p.add_subparsers(dest="op", required=True)
    for op, help_ in (
        ("get", "print a shadow"),
        ("update", "update a shadow"),
        ("delete", "delete a shadow"),
    ):
        sp = sub.add_parser(op, help=help_)
        sp.add_argument("thing")
        if op == "update":
            sp.add_argument(
                "document", help='request document, e.g. \'{"state":{"desired":{"power":"on"}}}\''
            )
        sp.add_argument("--name", help="named shadow (default: the classic shadow)")
        sp.add_argument(
            "--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)"
        )
        sp.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv and any(a == "--all" or a.startswith("--prefix") for a in argv):
        from fleet import fleetops

        return fleetops.main(argv)
    args = build_parser().parse_args(argv)
    logs.configure("warning")
    for what, name in (("thing", args.thing), ("shadow", args.name)):
        if name is not None and (not name or any(c in name for c in "/+#\0")):
            print(
                f"roomba-fleet shadow {args.op}: {what} name {name!r} cannot be part of an MQTT topic "
                "(names are 1-128 of [a-zA-Z0-9:_-])",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
    body: dict[str, Any] | None = None
    if args.op == "update":
        try:
            body = json.loads(args.document)
        except ValueError as exc:
            print(f"roomba-fleet shadow update: the document is not valid JSON ({exc})", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if not isinstance(body, dict):
            print("roomba-fleet shadow update: the document must be a JSON object", file=sys.stderr)
            return EXIT_UNAVAILABLE
    try:
        accepted, doc = request(
            CloudDir.at(args.dir), args.thing, args.op, body, name=args.name, timeout=args.timeout
        )
    except (CloudNotRunning, SettingsError) as exc:
        print(f"roomba-fleet shadow {args.op}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(json.dumps(doc, indent=2, sort_keys=False))
    if not accepted:
        print(
            f"roomba-fleet shadow {args.op}: rejected ({doc.get('code')}: {doc.get('message')})",
            file=sys.stderr,
        )
        return EXIT_REJECTED
    return 0
