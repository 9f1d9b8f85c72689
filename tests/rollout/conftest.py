"""Fixtures for the rollout tests: a published release and robots played by test code
(:mod:`rollout.testing`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.testing import LocalCloud
from rollout.testing import UpdateRobot, make_things, publish_release


@pytest.fixture
def release(local_cloud: LocalCloud, tmp_path: Path) -> Callable[[str], dict[str, Any]]:
    """``release(version)`` publishes a stand-in release in the shared cloud; its record."""
    return lambda version: publish_release(local_cloud, version, tmp_path)


@pytest.fixture
def robots(local_cloud: LocalCloud) -> Iterator[Callable[..., UpdateRobot]]:
    """``robots(thing, version, behaviour)``: a robot made a thing and connected; all closed afterwards."""
    made: list[UpdateRobot] = []

    def make(thing: str, version: str, behaviour: str = "good") -> UpdateRobot:
        make_things(local_cloud, thing)
        robot = UpdateRobot(local_cloud, thing, version, behaviour)
        made.append(robot)
        return robot

    yield make
    for robot in made:
        robot.close()
