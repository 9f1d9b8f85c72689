"""``roomba-fleet command THING|--all|--prefix P ACTION [options] [--wait [--timeout S]] [--json]``: send one
command to robots the way the command contract needs it, and optionally wait for each robot's answer.

Why a command of its own: ``desired.command`` must be *replaced*, and shadow updates deep-merge, so a
``clean`` written over an earlier ``drive`` keeps ``velocity_mm_s`` and the robot rejects it. This command
reads each robot's current ``desired.command`` (one pipelined ``get``), sets every field the new command
lacks to null (:func:`agent.commands.desired_command_patch`), checks the arguments against the schema the
robot itself uses (``agent/schemas/desired.schema.json``) before anything is sent, generates the id
(``cli-<UTC time>-<random>``, or ``--id``), and sends one update per robot as the operator (pipelined: a
thousand robots take one round trip). It works whether or not the robot clears ``desired.command`` after
answering: nulling fields that are already gone is harmless.

With ``--wait`` it follows each robot's ``update/documents`` (subscribed before anything is sent, so no
answer goes unseen; no polling) until ``reported.command`` carries the id with a final status: ``done``,
``failed`` or ``rejected`` (a ``drive`` reports ``accepted`` when the wheels start, then ``done`` when the
dead-man stops them). Robots still silent at ``--timeout`` get one last ``get`` before they are reported
``timeout``, with what their retained presence says. One line per robot is printed as it finishes;
``--json`` prints one document instead. A request throttled by the per-thing limit (429) is sent again
after a short jittered wait, so a script sending commands back to back does not fail on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from base import logs
from base.cli import Parser
from localcloud.layout import DIR_HELP, CloudDir, SettingsError
from localcloud.mqtt_lite import Packet
from localcloud.opclient import CloudNotRunning, OperatorClient, ShadowMessage
from shadow.topics import parse_agent_topic

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CODES = {
    EXIT_FAILED: "a robot answered failed or rejected, or the shadow service did not take an update",
    EXIT_USAGE: "usage error (bad option, argument out of range, no such robots) or the cloud is not running",
    EXIT_TIMEOUT: "with --wait: a robot did not answer within --timeout (and none failed)",
}
FINAL = ("done", "failed", "rejected")
DEFAULT_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 10.0
"""How long the shadow service may take to answer the ``get`` and the ``update`` (it answers in ms)."""
THROTTLED = 429  # AWS's per-thing limit (20 requests/s): asked again after a short jittered wait
MAX_ATTEMPTS = 6
RETRY_BASE_S, RETRY_CAP_S = 0.1, 1.0
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # the OI's day numbers: 0 is Sunday

ACTION_HELP = {
    "clean": "start a cleaning mission",
    "spot": "start a spot-cleaning mission",
    "max": "start a max mission (cleans until the battery is low)",
    "dock": "send the robot back to its dock",
    "stop": "stop any mission or drive and leave the robot idle (Passive, so it can charge)",
    "locate": "play the locate song so the robot can be found",
    "drive": "drive for a bounded time: --velocity, --duration and optionally --radius",
    "set_clock": "set the robot's clock: --day --hour --minute, or none for the agent's own clock",
}


@dataclass(frozen=True)
class Arg:
    """A command-line option for one field of ``desired.command``: its unit and how the value is mapped."""

    flag: str
    field: str
    unit: str
    metavar: str
    help: str
    scale: float = 1.0  # field value = option value * scale (seconds -> milliseconds)


ARGS: dict[str, tuple[Arg, ...]] = {
    "drive": (
        Arg("--velocity", "velocity_mm_s", "mm/s", "MM_S", "wheel speed in mm/s (negative: backwards)"),
        Arg(
            "--radius", "radius_mm", "mm", "MM", "turn radius in mm (default: straight; positive turns left)"
        ),
        Arg("--duration", "duration_ms", "s", "S", "seconds before the dead-man stops the wheels", 1000.0),
    ),
    "set_clock": (
        Arg("--day", "day", "", "DAY", "day of the week: sun..sat or 0..6 (0 is Sunday)"),
        Arg("--hour", "hour", "", "H", "hour, 0..23"),
        Arg("--minute", "minute", "", "M", "minute, 0..59"),
    ),
}
REQUIRED = {"--velocity", "--duration"}


class UsageError(Exception):
    """A command that must not be sent; the message is one line for the operator."""


# the command ---------------------------------------------------------------------------------------------
def new_command_id(now: dt.datetime | None = None) -> str:
    """``cli-20261207T143512.123Z-3fa9c2``: sortable, says who sent it and when, unique per invocation."""
    at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"cli-{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def _day(text: str) -> int:
    name = text.strip().lower()[:3]
    if name in DAYS:
        return DAYS.index(name)
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--day {text}: not a day (use sun..sat or 0..6, 0 is Sunday)") from None


def _number(arg: Arg, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{arg.flag} {text}: not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{arg.flag} {text}: not a finite number")
    scaled = value * arg.scale
    if arg.scale == 1.0 and not value.is_integer():
        raise UsageError(f"{arg.flag} {text}: must be a whole number")
    return round(scaled)


def _range_problem(arg: Arg, text: str, value: int) -> str | None:
    """The schema's minimum/maximum for the field, said in the option's own unit."""
    from agent.commands import load_schema

    rule = load_schema("desired")["$defs"]["command"]["properties"].get(arg.field, {})
    low, high = rule.get("minimum"), rule.get("maximum")
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    unit = f" {arg.unit}" if arg.unit else ""
    low_text = "" if low is None else f"{low / arg.scale:g}"
    high_text = "" if high is None else f"{high / arg.scale:g}"
    return (
        f"{arg.flag} {text}: out of range, must be {low_text}..{high_text}{unit} "
        f"(command.{arg.field} in agent/schemas/desired.schema.json)"
    )


def build_command(action: str, options: Mapping[str, str | None], command_id: str) -> dict[str, Any]:
    """The ``desired.command`` for ``action`` from the option texts given (``{"--velocity": "200"}``),
    validated with the robot's own schema; :class:`UsageError` says what is wrong, in the options' terms."""
    from agent.commands import validate_sections

    doc: dict[str, Any] = {"id": command_id, "action": action}
    for arg in ARGS.get(action, ()):
        text = options.get(arg.flag)
        if text is None:
            continue
        value = _day(text) if arg.field == "day" else _number(arg, text)
        problem = _range_problem(arg, text, value)
        if problem:
            raise UsageError(problem)
        doc[arg.field] = value
    if action == "set_clock" and 0 < len(doc) - 2 < 3:
        raise UsageError("set_clock: give --day, --hour and --minute together, or none (the agent's clock)")
    problems = validate_sections("desired", {"command": doc})
    if problems:
        flags = {a.field: a.flag for a in ARGS.get(action, ())}
        reason = problems["command"]
        for name, flag in flags.items():
            reason = reason.replace(f"'{name}'", f"{flag} ({name})")
        raise UsageError(f"{action}: {reason}")
    return doc


# sending and waiting -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What became of the command on one robot. ``status``: ``sent`` (no --wait), one of :data:`FINAL`,
    ``timeout``, or ``not-sent`` (the shadow service refused or did not take the update)."""

    thing: str
    status: str = "pending"
    reason: str | None = None
    seconds: float | None = None
    reported: dict[str, Any] | None = None
    sent_at: float | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.status != "pending"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "reason": self.reason}
        out["seconds"] = None if self.seconds is None else round(self.seconds, 3)
        out["reported"] = self.reported
        return out


def _command_of(state_doc: Mapping[str, Any], section: str) -> Mapping[str, Any] | None:
    state = state_doc.get("state")
    value = (state.get(section) if isinstance(state, Mapping) else None) or None
    command = value.get("command") if isinstance(value, Mapping) else None
    return command if isinstance(command, Mapping) else None


def _answer(outcome: Outcome, reported: Mapping[str, Any] | None, command_id: str, now: float) -> bool:
    """Record ``reported.command`` if it is the final answer to ``command_id``; True when it was."""
    if reported is None or reported.get("id") != command_id or reported.get("status") not in FINAL:
        return False
    outcome.status = str(reported["status"])
    reason = reported.get("reason")
    outcome.reason = reason if isinstance(reason, str) else None
    outcome.reported = dict(reported)
    outcome.seconds = None if outcome.sent_at is None else now - outcome.sent_at
    return True


def _rejection(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('code')}: {doc.get('message')}"


def previous_commands(
    cloud: CloudDir, conn: OperatorClient, things: Sequence[str]
) -> tuple[dict[str, Mapping[str, Any] | None], dict[str, str]]:
    """Each thing's current ``desired.command`` (None: none, or no shadow yet), and why for those whose
    shadow could not be read. A throttled get (429) is asked again after a short jittered wait."""
    from base.backoff import Backoff
    from fleet.shadow import fleet_request

    found: dict[str, Mapping[str, Any] | None] = {}
    failed: dict[str, str] = {}
    backoff = Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S)
    todo = list(things)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        answers = fleet_request(cloud, todo, "get", timeout=ANSWER_TIMEOUT_S, client=conn)
        throttled = []
        for thing, answer in answers.items():
            if answer is None:
                failed[thing] = f"the shadow service did not answer the get within {ANSWER_TIMEOUT_S:g} s"
            elif answer.accepted:
                found[thing] = _command_of(answer.document, "desired")
            elif answer.document.get("code") == 404:
                found[thing] = None
            elif answer.document.get("code") == THROTTLED and attempt < MAX_ATTEMPTS:
                throttled.append(thing)
            else:
                failed[thing] = f"shadow get rejected ({_rejection(answer.document)})"
        if not throttled:
            break
        time.sleep(RETRY_BASE_S + backoff.next_delay())
        todo = throttled
    return found, failed


def send_command(
    cloud: CloudDir,
    things: Sequence[str],
    command: Mapping[str, Any],
    *,
    wait: bool,
    timeout: float,
    on_outcome: Callable[[Outcome], None] = lambda _o: None,
    client: OperatorClient | None = None,
) -> dict[str, Outcome]:
    """Replace ``desired.command`` with ``command`` on every thing; with ``wait``, follow each one until its
    answer is final or ``timeout`` passes. ``on_outcome`` is called as each robot finishes. Pass ``client``
    to reuse a connection. ``CloudNotRunning`` when the cloud cannot be reached."""
    conn = client or OperatorClient(cloud, timeout=ANSWER_TIMEOUT_S)
    try:
        return _Round(cloud, conn, things, command, wait=wait, timeout=timeout, on_outcome=on_outcome).run()
    finally:
        if client is None:
            conn.close()


class _Round:
    """One invocation: read the previous commands, send the replacements, follow the answers."""

    def __init__(
        self,
        cloud: CloudDir,
        conn: OperatorClient,
        things: Sequence[str],
        command: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float,
        on_outcome: Callable[[Outcome], None],
    ) -> None:
        from base.backoff import Backoff

        self.cloud, self.conn, self.command = cloud, conn, command
        self.wait, self.timeout, self.on_outcome = wait, timeout, on_outcome
        self.command_id = str(command["id"])
        self.outcomes = {t: Outcome(t) for t in things}
        self.patches: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}  # clientToken -> thing
        self.attempts: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.acknowledged: set[str] = set()
        self.backoff = {t: Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S) for t in things}
        self.run_token = uuid.uuid4().hex[:10]
        self.sent = 0
        self.presence: dict[str, dict[str, Any] | None] = {}

    def finish(self, outcome: Outcome, status: str, reason: str | None = None) -> None:
        outcome.status, outcome.reason = status, reason
        self.on_outcome(outcome)

    @property
    def pending(self) -> list[str]:
        return [t for t, o in self.outcomes.items() if not o.final]

    def publish(self, things: Sequence[str]) -> None:
        from localcloud.opclient import publish_shadow_requests

        payloads = {}
        for thing in things:
            self.attempts[thing] = self.attempts.get(thing, 0) + 1
            self.sent += 1
            token = f"cmd-{self.run_token}-{self.sent}"
            payloads[thing] = {"state": {"desired": {"command": self.patches[thing]}}, "clientToken": token}
        self.tokens.update(publish_shadow_requests(self.conn, "update", payloads))

    def run(self) -> dict[str, Outcome]:
        from agent.commands import desired_command_patch
        from localcloud.opclient import WILDCARD_ABOVE, shadow_filters, shadow_message
        from shadow.topics import ANY, presence_topic

        previous, unreadable = previous_commands(self.cloud, self.conn, list(self.outcomes))
        for thing, why in unreadable.items():
            self.finish(self.outcomes[thing], "not-sent", why)
        self.patches = {t: desired_command_patch(p, self.command) for t, p in previous.items()}
        responses = ("accepted", "rejected", "documents") if self.wait else ("accepted", "rejected")
        filters = shadow_filters(list(self.patches), responses)
        if self.wait:
            # and the retained presence, to say why a robot that stays silent does
            many = len(self.patches) > WILDCARD_ABOVE
            filters += [presence_topic(t) for t in ([ANY] if many else self.patches)]
        if filters:
            self.conn.subscribe(filters, qos=1)  # before sending: no answer can arrive unseen
        started = time.monotonic()
        for thing in self.patches:
            self.outcomes[thing].sent_at = started
        self.publish(list(self.patches))
        deadline = started + (self.timeout if self.wait else ANSWER_TIMEOUT_S)
        while self.pending and time.monotonic() < deadline:
            now = time.monotonic()
            due = [t for t, at in self.retry_at.items() if at <= now]
            for thing in due:
                del self.retry_at[thing]
            if due:
                self.publish(due)
            wake = min([deadline, *self.retry_at.values()])
            for pkt in self.conn.messages(max(0.0, wake - now)):
                msg = shadow_message(pkt)
                if msg is not None:
                    self.on_message(msg)
                else:
                    self.on_presence(pkt)
                if not self.pending or self.retry_at:
                    break  # done, or a retry to schedule: wait again until the earliest one
        self.last_look()
        for thing in self.pending:
            outcome = self.outcomes[thing]
            outcome.seconds = time.monotonic() - started
            if thing not in self.acknowledged:
                why = f"the shadow service did not answer the update within {deadline - started:g} s"
                self.finish(outcome, "not-sent", why)
            else:
                why = f"no final answer within {self.timeout:g} s; {self.connection(thing)}"
                self.finish(outcome, "timeout", why)
        return self.outcomes

    def on_presence(self, pkt: Packet) -> None:
        agent = parse_agent_topic(pkt.topic)
        if agent is None or agent[1] != "presence" or agent[0] not in self.outcomes:
            return
        try:
            doc = json.loads(pkt.payload) if pkt.payload else None
        except ValueError:
            return
        self.presence[agent[0]] = doc if isinstance(doc, dict) else None

    def connection(self, thing: str) -> str:
        """What the robot's retained presence says, for a robot that did not answer."""
        doc = self.presence.get(thing)
        if doc is None:
            return "the robot has never connected (no presence): is its agent running?"
        state = doc.get("state")
        at = doc.get("at")
        since = ""
        if isinstance(at, int | float) and not isinstance(at, bool):
            since = f" since {dt.datetime.fromtimestamp(at, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        if state == "offline":
            why = doc.get("reason")
            return f"the robot is offline{since}" + (f" ({why})" if isinstance(why, str) and why else "")
        if state == "online":
            return f"the robot is online{since}: see `roomba-agent status` on it"
        return f"the robot's presence says {state!r}"

    def on_message(self, msg: ShadowMessage) -> None:
        outcome = self.outcomes.get(msg.thing)
        if outcome is None or outcome.final:
            return
        now = time.monotonic()
        if msg.response == "documents":
            current = msg.document.get("current")
            reported = _command_of(current, "reported") if isinstance(current, Mapping) else None
            if _answer(outcome, reported, self.command_id, now):
                self.on_outcome(outcome)
            return
        if self.tokens.get(str(msg.document.get("clientToken"))) != msg.thing:
            return  # the robot's own updates, or another operator's
        if msg.response == "accepted":
            self.acknowledged.add(msg.thing)
            if not self.wait:
                outcome.seconds = now - (outcome.sent_at or now)
                self.finish(outcome, "sent")
        elif msg.response == "rejected":
            if msg.document.get("code") == THROTTLED and self.attempts.get(msg.thing, 0) < MAX_ATTEMPTS:
                self.retry_at[msg.thing] = now + RETRY_BASE_S + self.backoff[msg.thing].next_delay()
            else:
                self.finish(outcome, "not-sent", f"shadow update rejected ({_rejection(msg.document)})")

    def last_look(self) -> None:
        """One ``get`` for the robots still silent, in case their answer came while we could not see it
        (e.g. across a broker restart)."""
        from fleet.shadow import fleet_request

        silent = [t for t in self.pending if t in self.acknowledged]
        if not (self.wait and silent):
            return
        late = fleet_request(self.cloud, silent, "get", timeout=ANSWER_TIMEOUT_S, client=self.conn)
        now = time.monotonic()
        for thing, answer in late.items():
            reported = _command_of(answer.document, "reported") if answer and answer.accepted else None
            if _answer(self.outcomes[thing], reported, self.command_id, now):
                self.on_outcome(self.outcomes[thing])


def exit_code(outcomes: Mapping[str, Outcome]) -> int:
    statuses = {o.status for o in outcomes.values()}
    if statuses & {"failed", "rejected", "not-sent"}:
        return EXIT_FAILED
    if "timeout" in statuses:
        return EXIT_TIMEOUT
    return EXIT_OK


def render(command: Mapping[str, Any], outcomes: Mapping[str, Outcome], *, wait: bool) -> dict[str, Any]:
    """The ``--json`` document: the command sent, per-robot results keyed by thing, counts by status."""
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.status] = counts.get(o.status, 0) + 1
    return {
        "id": command["id"],
        "action": command["action"],
        "command": dict(command),
        "wait": wait,
        "robots": {t: outcomes[t].to_json() for t in sorted(outcomes)},
        "counts": dict(sorted(counts.items())),
        "exit_code": exit_code(outcomes),
    }


def line(outcome: Outcome, command: Mapping[str, Any], width: int) -> str:
    """``robot-001  cli-…  clean  done      0.214 s``, then the reason when there is one."""
    parts = [f"{outcome.thing:<{width}}", str(command["id"]), str(command["action"]), f"{outcome.status:<8}"]
    if outcome.seconds is not None and outcome.status != "sent":
        parts.append(f"{outcome.seconds:.3f} s")
    if outcome.reason:
        parts.append(outcome.reason)
    return "  ".join(parts).rstrip()


# command line --------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    """The options every action takes, accepted before or after ACTION (``SUPPRESS``: given or absent)."""
    s = argparse.SUPPRESS
    parser.add_argument("--wait", action="store_true", default=s, help="wait for each robot's answer")
    parser.add_argument(
        "--timeout",
        type=float,
        default=s,
        metavar="S",
        help=f"with --wait: seconds to wait for the answers (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--id", default=s, help="the command id (default: cli-<UTC time>-<random>)")
    parser.add_argument(
        "--json", action="store_true", default=s, help="print the results as one JSON document"
    )
    parser.add_argument("--dir", default=s, help=DIR_HELP)
    parser.add_argument(
        "--via",
        choices=("shadow", "commands"),
        default=s,
        help="the channel: the shadow's desired.command (default), or AWS IoT Commands (a command "
        "execution per robot through the local cloud's API, docs/commands.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    from agent.commands import ACTIONS

    p = Parser(
        prog="roomba-fleet command",
        description="Send a command to one robot, every robot (--all) or those whose name starts with P "
        "(--prefix P), replacing the previous command; --wait for the answers.",
        epilog="examples:\n"
        "  roomba-fleet command robot-001 clean --wait\n"
        "  roomba-fleet command robot-001 drive --velocity 200 --duration 1.5 --wait\n"
        "  roomba-fleet command --prefix sim- dock --wait --timeout 60 --json\n"
        "  roomba-fleet command robot-001 set_clock --day mon --hour 9 --minute 0\n"
        "  roomba-fleet command robot-001 dock --via commands --wait",
        exit_codes=EXIT_CODES,
    )
    p.add_argument("thing", nargs="?", metavar="THING", help="the robot's thing name (or --all / --prefix P)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--all", action="store_true", help="every robot of DIR")
    target.add_argument("--prefix", metavar="P", help="the robots of DIR whose thing name starts with P")
    _common(p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    for action in ACTIONS:
        sp = sub.add_parser(
            action,
            prog=f"roomba-fleet command {action}",
            help=ACTION_HELP[action],
            description=ACTION_HELP[action],
            exit_codes=EXIT_CODES,
        )
        for arg in ARGS.get(action, ()):
            sp.add_argument(
                arg.flag,
                dest=arg.flag,
                metavar=arg.metavar,
                required=arg.flag in REQUIRED,
                help=arg.help,
            )
        _common(sp)
    return p


def _targets(args: argparse.Namespace, cloud: CloudDir) -> list[str]:
    from fleet.shadow import select
    from shadow.names import thing_name_problem

    given = sum((args.thing is not None, bool(args.all), args.prefix is not None))
    if given != 1:
        raise UsageError("give exactly one of THING, --all or --prefix P")
    if args.thing is not None:
        problem = thing_name_problem(args.thing)
        if problem:
            raise UsageError(problem)
        return [args.thing]
    things = select(cloud.known_robots(), all_robots=bool(args.all), prefix=args.prefix)
    if not things:
        which = "no robots" if args.all else f"no robot name starts with {args.prefix!r}"
        raise UsageError(
            f"{which} in {cloud.root} (add some with `roomba-fleet robot add` or `roomba-fleet simulate`)"
        )
    return things


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """argparse, except that a leading THING is taken first: argparse would read ``r1`` in ``r1 --wait
    clean`` as the ACTION (an optional positional before sub-commands only works when they are adjacent)."""
    from agent.commands import ACTIONS

    parser = build_parser()
    words = list(argv)
    if words and not words[0].startswith("-") and words[0] not in ACTIONS:
        args = parser.parse_args(words[1:])
        if args.thing is not None:
            parser.error(f"one THING only (got {words[0]!r} and {args.thing!r}; use --prefix P for several)")
        args.thing = words[0]
        return args
    return parser.parse_args(words)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    prog = "roomba-fleet command"
    wait = bool(getattr(args, "wait", False))
    timeout = float(getattr(args, "timeout", DEFAULT_TIMEOUT_S))
    as_json = bool(getattr(args, "json", False))
    cloud = CloudDir.at(getattr(args, "dir", None))
    try:
        if timeout <= 0:
            raise UsageError(f"--timeout {timeout:g}: must be above 0 seconds")
        if hasattr(args, "timeout") and not wait:
            raise UsageError("--timeout is for --wait (add --wait to wait for the answers)")
        command_id = getattr(args, "id", None) or new_command_id()
        from agent.commands import validate_sections

        id_problem = validate_sections("desired", {"command": {"id": command_id, "action": "stop"}})
        if id_problem:
            raise UsageError(f"--id {command_id}: 1-64 characters of A-Z a-z 0-9 _ . : - only")
        options = {a.flag: getattr(args, a.flag, None) for a in ARGS.get(args.action, ())}
        command = build_command(args.action, options, command_id)
        things = _targets(args, cloud)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    width = max(len(t) for t in things)

    def show(outcome: Outcome) -> None:
        if not as_json:
            print(line(outcome, command, width), flush=True)

    try:
        if getattr(args, "via", "shadow") == "commands":
            sent = _send_via_commands(cloud, things, command, wait=wait, timeout=timeout, on_outcome=show)
            if isinstance(sent, int):
                return sent
            outcomes = sent
        else:
            outcomes = send_command(cloud, things, command, wait=wait, timeout=timeout, on_outcome=show)
    except (CloudNotRunning, SettingsError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = exit_code(outcomes)
    if as_json:
        print(json.dumps(render(command, outcomes, wait=wait), indent=2))
    elif code != EXIT_OK:
        bad = [o for o in outcomes.values() if o.status not in ("done", "sent")]
        print(
            f"{prog}: {len(bad)} of {len(things)} robots not done (first: {bad[0].thing}: {bad[0].status})",
            file=sys.stderr,
        )
    return code


def _send_via_commands(
    cloud: CloudDir,
    things: Sequence[str],
    command: Mapping[str, Any],
    *,
    wait: bool,
    timeout: float,
    on_outcome: Callable[[Outcome], None],
) -> dict[str, Outcome] | int:
    """``--via commands``: :func:`fleet.aws_commands.send` through the cloud's control plane (imported
    here: the shadow path need not load an HTTP client); an exit code when the API cannot be used."""
    from fleet import aws_commands
    from localcloud.apiclient import ApiClient, ApiNotRunning
    from localcloud.awsapi.errors import ApiError

    try:
        with ApiClient(cloud) as api:
            return aws_commands.send(
                api, things, command, wait=wait, timeout=timeout, outcome=Outcome, on_outcome=on_outcome
            )
    except ApiNotRunning as exc:
        print(f"roomba-fleet command: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"roomba-fleet command: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
