"""Every MQTT topic the project speaks, built and parsed in one place: AWS IoT's reserved
``$aws/things/...`` topics and our own ``roomba/<thing>/...`` topics.

The thing (like a shadow name or a job id) may be a real name, the MQTT wildcard :data:`ANY` for a
subscription filter, or a placeholder such as Mosquitto's ``%u`` or the IoT policy variable
``${iot:Connection.Thing.ThingName}``: builders do not validate it (:mod:`shadow.names` does). Parsers
return None for anything that is not exactly the topic they read, so a peer's odd topic is never an error.
References: AWS IoT Core Developer Guide, "Device Shadow MQTT topics" and "Jobs device MQTT API operations".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AGENT_TOPICS",
    "ANY",
    "JOBS_NEXT",
    "JOBS_NOTIFICATIONS",
    "JOBS_REQUESTS",
    "RETAINED_TOPICS",
    "SHADOW_OPERATIONS",
    "SHADOW_RESPONSES",
    "SHADOW_UPDATE_EVENTS",
    "ShadowTopic",
    "agent_prefix",
    "agent_topic",
    "events_topic",
    "jobs_prefix",
    "jobs_topic",
    "metrics_topic",
    "parse_agent_topic",
    "parse_shadow_request",
    "parse_shadow_topic",
    "presence_topic",
    "shadow_prefix",
    "shadow_topic",
    "telemetry_topic",
    "things_prefix",
]

ANY = "+"
"""MQTT's single-level wildcard: ``shadow_topic(ANY, "update", "documents")`` follows every thing."""
SHADOW_OPERATIONS = ("update", "get", "delete")
SHADOW_RESPONSES = ("accepted", "rejected")
SHADOW_UPDATE_EVENTS = ("delta", "documents")
"""Published after an accepted ``update`` only (``delta`` only when desired and reported differ)."""
JOBS_REQUESTS = ("get", "start-next", "+/get", "+/update")
"""What a device publishes under ``$aws/things/T/jobs/``; ``+`` stands for a job id or ``$next``."""
JOBS_NOTIFICATIONS = ("notify", "notify-next")
JOBS_NEXT = "$next"
"""The job id that means "the next pending execution" in ``jobs/$next/get``."""
AGENT_TOPICS = ("telemetry", "events", "metrics", "presence")
"""What the agent publishes under ``roomba/<thing>/``."""
RETAINED_TOPICS = ("presence",)
"""The only agent topic published retained (the presence message and the MQTT will)."""

_THINGS = "$aws/things/"
_AGENT = "roomba/"


def things_prefix(thing: str) -> str:
    return f"{_THINGS}{thing}"


def shadow_prefix(thing: str, name: str | None = None) -> str:
    """``$aws/things/T/shadow`` for the classic shadow, ``$aws/things/T/shadow/name/N`` for a named one."""
    base = f"{_THINGS}{thing}/shadow"
    return f"{base}/name/{name}" if name else base


def shadow_topic(thing: str, *parts: str, name: str | None = None) -> str:
    """``shadow_topic(T, "update", "accepted")`` → ``$aws/things/T/shadow/update/accepted``."""
    return "/".join((shadow_prefix(thing, name), *parts))


def jobs_prefix(thing: str) -> str:
    return f"{_THINGS}{thing}/jobs"


def jobs_topic(thing: str, *parts: str) -> str:
    """``jobs_topic(T, "start-next", "accepted")`` → ``$aws/things/T/jobs/start-next/accepted``."""
    return "/".join((jobs_prefix(thing), *parts))


def agent_prefix(thing: str) -> str:
    """``roomba/T``; ``agent_prefix("#")`` is the filter for every agent topic of every robot."""
    return f"{_AGENT}{thing}"


def agent_topic(thing: str, kind: str) -> str:
    """``roomba/T/<kind>``: one of :data:`AGENT_TOPICS`."""
    if kind not in AGENT_TOPICS:
        raise ValueError(f"unknown agent topic {kind!r}; one of {', '.join(AGENT_TOPICS)}")
    return f"{agent_prefix(thing)}/{kind}"


def telemetry_topic(thing: str) -> str:
    return agent_topic(thing, "telemetry")


def events_topic(thing: str) -> str:
    return agent_topic(thing, "events")


def metrics_topic(thing: str) -> str:
    return agent_topic(thing, "metrics")


def presence_topic(thing: str) -> str:
    return agent_topic(thing, "presence")


@dataclass(frozen=True)
class ShadowTopic:
    """A shadow topic taken apart: a request (``response == ""``) or what the service publishes back."""

    thing: str
    shadow_name: str  # "" for the classic shadow
    operation: str
    prefix: str  # everything before the operation, e.g. "$aws/things/T/shadow/name/S"
    response: str = ""  # "accepted", "rejected", "delta", "documents"; "" for a request

    def reply(self, response: str) -> str:
        """The topic the service answers this operation on, e.g. ``.../update/accepted``: always under
        the request's own prefix, so even an odd request (``.../name//get``) is answered where it asked."""
        return f"{self.prefix}/{self.operation}/{response}"


def parse_shadow_topic(topic: str) -> ShadowTopic | None:
    """``$aws/things/T/shadow[/name/N]/<operation>[/<response>]``, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "shadow":
        return None
    named = parts[4] == "name"
    rest = parts[6:] if named else parts[4:]
    if not 1 <= len(rest) <= 2:
        return None
    operation, response = rest[0], rest[1] if len(rest) == 2 else ""
    if operation not in SHADOW_OPERATIONS:
        return None
    if response and not (
        response in SHADOW_RESPONSES or (operation == "update" and response in SHADOW_UPDATE_EVENTS)
    ):
        return None
    name = parts[5] if named else ""
    return ShadowTopic(parts[2], name, operation, "/".join(parts[: 6 if named else 4]), response)


def parse_shadow_request(topic: str) -> ShadowTopic | None:
    """A request topic (``.../update``, ``.../get``, ``.../delete``), or None (responses included)."""
    parsed = parse_shadow_topic(topic)
    return parsed if parsed is not None and not parsed.response else None


def parse_agent_topic(topic: str) -> tuple[str, str] | None:
    """``(thing, kind)`` for ``roomba/<thing>/<kind>`` with a kind of :data:`AGENT_TOPICS`, else None."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "roomba" or not parts[1] or parts[2] not in AGENT_TOPICS:
        return None
    return parts[1], parts[2]
