"""``doctor``'s jobs check when no agent runs: one connect and a ``jobs/get`` round trip.

It connects with the thing name as client id (as :func:`agent.mqtt.probe`), so it must not run beside a
running agent; beside one, ``doctor`` reads the jobs feature's state from the status file instead.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from agent.config import AgentConfig
from agent.jobs import protocol


def probe_jobs(config: AgentConfig, timeout: float = 15.0) -> tuple[str, str, float | None]:
    """(stage that failed or "ok", detail, rtt_s); stage is ``mqtt`` or ``jobs``."""
    return asyncio.run(_probe(config, timeout))


async def _probe(config: AgentConfig, timeout: float) -> tuple[str, str, float | None]:
    from agent.mqtt import Connected, ConnectFailed, Message, MqttClient, MqttEvent

    connected = asyncio.Event()
    answered = asyncio.Event()
    outcome: dict[str, Any] = {}
    token = f"doctor-{uuid.uuid4().hex[:12]}"
    topic = protocol.get_topic(config.thing_name)

    def on_event(event: MqttEvent) -> None:
        if isinstance(event, Connected):
            connected.set()
        elif isinstance(event, ConnectFailed):
            outcome.setdefault("connect_error", event.reason)
            if event.fatal:
                connected.set()
        elif isinstance(event, Message) and token.encode() in event.payload:
            outcome["topic"], outcome["payload"], outcome["t"] = event.topic, event.payload, time.monotonic()
            answered.set()

    async def wait(event: asyncio.Event) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    client = MqttClient(config, asyncio.get_running_loop(), on_event, reconnect_max_ms=5000)
    client.start()
    try:
        if not await wait(connected) or ("connect_error" in outcome and not client.connected):
            return "mqtt", outcome.get("connect_error", f"no CONNACK within {timeout:.0f} s"), None
        (subscribed,) = client.subscribe([f"{topic}/+"], 1)
        try:
            await asyncio.wait_for(subscribed, timeout)
        except Exception as exc:
            return "jobs", f"subscribing to {topic}/+ failed: {exc}", None
        sent = time.monotonic()
        client.publish(topic, protocol.request(token), 1)
        if not await wait(answered):
            return "jobs", f"no answer to a jobs get within {timeout:.0f} s", None
        rtt = float(outcome["t"]) - sent
        if str(outcome["topic"]).endswith("/rejected"):
            doc = json.loads(outcome["payload"])
            return "jobs", f"jobs get rejected: {doc.get('code')} {doc.get('message')}", rtt
        doc = json.loads(outcome["payload"])
        pending = len(doc.get("inProgressJobs") or []) + len(doc.get("queuedJobs") or [])
        return "ok", f"the jobs service answered ({pending} pending)", rtt
    finally:
        client.drop()
        await asyncio.sleep(0.1)
