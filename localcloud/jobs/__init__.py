"""AWS IoT Jobs for the local cloud: the pure engine (``engine.JobsEngine``) and its SQLite store."""

from localcloud.jobs.engine import JobsEngine
from localcloud.jobs.store import IotStore

__all__ = ["IotStore", "JobsEngine"]
