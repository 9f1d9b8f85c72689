"""Every MQTT topic the project speaks, built in one place: AWS IoT's reserved ``$aws/things/...`` topics
and our own ``roomba/<thing>/...`` topics.

The thing may be a real name, an MQTT wildcard (``+``) for a subscription filter, or a placeholder such as
Mosquitto's ``%u`` or a policy variable; builders do not validate it (:mod:`shadow.names` does).
Reference: AWS IoT Core Developer Guide, "Device Shadow MQTT topics" and "Jobs device MQTT API".
"""

from __future__ import annotations

__all__ = [
    "AGENT_TOPICS",
    "JOBS_REQUESTS",
    "RETAINED_TOPICS",
    "SHADOW_OPERATIONS",
    "SHADOW_RESPONSES",
    "agent_topic",
    "events_topic",
    "jobs_prefix",
    "jobs_topic",
    "metrics_topic",
    "presence_topic",
    "shadow_prefix",
    "shadow_topic",
    "telemetry_topic",
    "things_prefix",
]

SHADOW_OPERATIONS = ("update", "get", "delete")
SHADOW_RESPONSES = ("accepted", "rejected")
JOBS_REQUESTS = ("get", "start-next", "+/get", "+/update")
# what the agent publishes under roomba/<thing>/; presence is the one retained topic
AGENT_TOPICS = ("telemetry", "events", "metrics", "presence")
RETAINED_TOPICS = ("presence",)


def things_prefix(thing: str) -> str:
    return f"$aws/things/{thing}"


def shadow_prefix(thing: str, name: str | None = None) -> str:
    """``$aws/things/T/shadow`` for the classic shadow, ``$aws/things/T/shadow/name/N`` for a named one."""
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{name}" if name else base


def shadow_topic(thing: str, *parts: str, name: str | None = None) -> str:
    """``shadow_topic(T, "update", "accepted")`` → ``$aws/things/T/shadow/update/accepted``."""
    return "/".join((shadow_prefix(thing, name), *parts))


def jobs_prefix(thing: str) -> str:
    return f"$aws/things/{thing}/jobs"


def jobs_topic(thing: str, *parts: str) -> str:
    """``jobs_topic(T, "start-next", "accepted")`` → ``$aws/things/T/jobs/start-next/accepted``."""
    return "/".join((jobs_prefix(thing), *parts))


def agent_topic(thing: str, kind: str) -> str:
    """``roomba/T/<kind>``: one of :data:`AGENT_TOPICS`."""
    if kind not in AGENT_TOPICS:
        raise ValueError(f"unknown agent topic {kind!r}; one of {', '.join(AGENT_TOPICS)}")
    return f"roomba/{thing}/{kind}"


def telemetry_topic(thing: str) -> str:
    return agent_topic(thing, "telemetry")


def events_topic(thing: str) -> str:
    return agent_topic(thing, "events")


def metrics_topic(thing: str) -> str:
    return agent_topic(thing, "metrics")


def presence_topic(thing: str) -> str:
    return agent_topic(thing, "presence")
