"""The agent's features: each capability is a module with a name, ``start()`` and ``stop()``.

Like the AWS IoT Device Client's ``Feature`` and ``FeatureRegistry``: features are registered in one place
(:class:`agent.daemon.Agent`), started in that order once the robot link is open and the credentials are
checked, and stopped in the reverse order before the MQTT connection says goodbye. A feature is given the
shared parts it uses (the sync engine, the pump, the robot side, the MQTT connection, metrics, the ledger
or outbox) in its constructor; it never reaches for another's state.

A new feature (AWS IoT Jobs, updates, the identity lifecycle) is a module here and one ``add`` in the
agent's wiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol, TypeVar

from agent.parts import AgentLog


class Feature(Protocol):
    """``start``/``stop`` may be plain or ``async`` (a feature that must wait, e.g. for its tasks)."""

    @property
    def name(self) -> str: ...

    def start(self) -> Awaitable[None] | None: ...

    def stop(self) -> Awaitable[None] | None: ...


F = TypeVar("F", bound=Feature)


class FeatureStartError(Exception):
    """A feature's ``start`` failed; the features started before it have been stopped again."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"feature {name!r} failed to start: {cause}")
        self.name = name
        self.cause = cause


MessageHandler = Callable[[str, bytes], None]
ConnectionHandler = Callable[[bool], None]


class FeatureRegistry:
    """Also the agent's message routes: a feature that owns topics of its own (Jobs, Commands) calls
    :meth:`listen` with their prefix and :meth:`on_connection` for (re)connects; every other message goes
    to the shadow sync engine."""

    def __init__(self, log: AgentLog) -> None:
        self.log = log
        self._features: list[Feature] = []
        self._started: list[Feature] = []
        self._routes: list[tuple[str, MessageHandler]] = []
        self._connection: list[ConnectionHandler] = []

    def listen(self, prefix: str, handler: MessageHandler) -> None:
        """Messages whose topic starts with ``prefix`` go to ``handler(topic, payload)``."""
        if any(prefix == p for p, _ in self._routes):
            raise ValueError(f"topics under {prefix!r} are already routed")
        self._routes.append((prefix, handler))

    def route(self, topic: str) -> MessageHandler | None:
        return next((h for p, h in self._routes if topic.startswith(p)), None)

    def on_connection(self, handler: ConnectionHandler) -> None:
        """``handler(session_present)`` after every successful (re)connect, once the shadow sync's own
        subscriptions have been asked for."""
        self._connection.append(handler)

    def connected(self, session_present: bool) -> None:
        for handler in self._connection:
            try:
                handler(session_present)
            except Exception:
                self.log.exception("agent.feature.on_connection_failed")

    def add(self, feature: F) -> F:
        if self.get(feature.name) is not None:
            raise ValueError(f"a feature named {feature.name!r} is already registered")
        self._features.append(feature)
        return feature

    def get(self, name: str) -> Feature | None:
        return next((f for f in self._features if f.name == name), None)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self._features]

    @property
    def started(self) -> list[str]:
        return [f.name for f in self._started]

    def __iter__(self) -> Iterator[Feature]:
        return iter(list(self._features))

    async def start_all(self) -> None:
        """Start each feature in registration order; on the first failure stop those already started (in
        reverse order) and raise :class:`FeatureStartError` naming the feature that failed."""
        for feature in self._features:
            try:
                pending = feature.start()
                if pending is not None:
                    await pending
            except Exception as exc:
                self.log.error("agent.feature.start_failed", feature=feature.name, error=str(exc))
                await self.stop_all()
                raise FeatureStartError(feature.name, exc) from exc
            self._started.append(feature)

    async def stop_all(self) -> list[tuple[str, Exception]]:
        """Stop the started features in reverse order. One that fails to stop is logged by name and the
        others still stop; the failures are returned."""
        failures: list[tuple[str, Exception]] = []
        while self._started:
            feature = self._started.pop()
            try:
                pending = feature.stop()
                if pending is not None:
                    await pending
            except Exception as exc:
                self.log.error("agent.feature.stop_failed", feature=feature.name, error=str(exc))
                failures.append((feature.name, exc))
        return failures


async def every(name: str, interval: Callable[[], float], fn: Callable[[], None], log: AgentLog) -> None:
    """Call ``fn`` every ``interval()`` seconds (read each time: a setting may change it) until cancelled.
    A failing call is logged and the next one still runs."""
    while True:
        await asyncio.sleep(float(interval()))
        try:
            fn()
        except Exception:
            log.exception("agent.periodic.failed", task=name)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()
