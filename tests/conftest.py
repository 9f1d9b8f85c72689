"""Fixtures every package's tests may use. Helpers that are not fixtures ship with the packages
(:mod:`base.testing`, :mod:`localcloud.testing`, :mod:`hal.testing`) so benches and other projects can use
them too."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from localcloud.testing import LocalCloud, PahoRobot, tls_refused


def pytest_configure(config: pytest.Config) -> None:
    """No test reaches a developer's real per-user local cloud (the default ``--dir``): state goes to a
    throwaway directory unless a test sets its own."""
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="roomba-test-state-")
    os.environ.pop("ROOMBA_FLEET_DIR", None)


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """CLI ``main()`` calls configure logging onto capsys's stream; put the previous set-up back so later
    tests (any package's) never log to a closed capture."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def local_cloud() -> Iterator[LocalCloud]:
    """A running local cloud shared by the session's tests (use distinct thing names per test)."""
    with LocalCloud.start() as cloud:
        yield cloud


@pytest.fixture
def new_cloud(tmp_path: Path) -> Iterator[Callable[..., LocalCloud]]:
    """Factory for a private cloud in ``tmp_path`` (kept after stop, so it can be started again)."""
    started: list[LocalCloud] = []

    def start(**settings: Any) -> LocalCloud:
        cloud = LocalCloud.start(tmp_path / "cloud", **settings)
        started.append(cloud)
        return cloud

    yield start
    for cloud in started:
        cloud.stop()


@pytest.fixture
def paho_robot() -> Iterator[Callable[..., PahoRobot]]:
    """Factory ``paho_robot(cloud, thing, will=..., client_id=...)``; every client made is closed afterwards."""
    made: list[PahoRobot] = []

    def make(cloud: LocalCloud, thing: str, **kwargs: Any) -> PahoRobot:
        robot = PahoRobot(cloud, thing, **kwargs)
        made.append(robot)
        return robot

    yield make
    for robot in made:
        robot.close()


@pytest.fixture(name="tls_refused")
def tls_refused_fixture() -> Callable[[LocalCloud, Path, Path], str | None]:
    """``tls_refused(cloud, cert, key)``: why an MQTT/TLS connection with this certificate failed, or None."""
    return tls_refused


@pytest.fixture(scope="session")
def release_kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Signed release bundles (:class:`provisioning.release_build.ReleaseKit`): ``.signer_dir``, ``.trust_pem``,
    ``.build(version, source=None, deps=True) -> Path`` and ``.source_copy(tmp_path) -> Path``; the dependency
    wheelhouse is built at most once per session."""
    from provisioning.release_build import ReleaseKit

    return ReleaseKit(tmp_path_factory.mktemp("release-kit"))
