"""``doctor``'s jobs check when no agent runs: one connect and a ``jobs/get`` round trip.

It connects with the thing name as client id (as :func:`agent.mqtt.probe`), so it must not run beside a
running agent; beside one, ``doctor`` reads the jobs feature's state from the status file instead.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from agent.config import AgentConfig
from agent.jobs import protocol


def probe_jobs(config: AgentConfig, timeout: float = 15.0) -> tuple[str, str, float | None]:
    """(stage that failed or "ok", detail, rtt_s); stage is ``mqtt`` or ``jobs``."""
    return asyncio.run(_probe(config, timeout))


async def _probe(config: AgentConfig, timeout: float) -> tuple[str, str, float | None]:
    from agent.mqtt import round_trip

    token = f"doctor-{uuid.uuid4().hex[:12]}"
    topic = protocol.get_topic(config.thing_name)
    trip = await round_trip(config, topic, [f"{topic}/+"], protocol.request(token), token, timeout)
    if trip.failed == "mqtt":
        return "mqtt", trip.detail, None
    if trip.failed == "answer":
        return "jobs", f"no answer to a jobs get within {timeout:.0f} s", None
    if trip.failed is not None:
        return "jobs", trip.detail, None
    doc = json.loads(trip.payload)
    if trip.topic.endswith("/rejected"):
        return "jobs", f"jobs get rejected: {doc.get('code')} {doc.get('message')}", trip.rtt_s
    pending = len(doc.get("inProgressJobs") or []) + len(doc.get("queuedJobs") or [])
    return "ok", f"the jobs service answered ({pending} pending)", trip.rtt_s
