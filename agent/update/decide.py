"""After a restart, what an update job cut short does next. Pure.

An update job runs across restarts: the one that switches to the new version, and any crash or power cut
on the way. The job's journalled ``phase`` (the last one reached: ``preflight``, ``downloading``,
``verified``, ``installed``, ``switching``, ``self_test``, ``committed``), the installer's slots (what the
launcher did: current, a pending switch, a trial, the last result) and the version running now say where it
is; :func:`after_restart` turns them into one :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

PREFLIGHT = "preflight"
DOWNLOADING = "downloading"
VERIFIED = "verified"
INSTALLED = "installed"
SWITCHING = "switching"
SELF_TEST = "self_test"
COMMITTED = "committed"
PHASES = (PREFLIGHT, DOWNLOADING, VERIFIED, INSTALLED, SWITCHING, SELF_TEST, COMMITTED)

# decisions
START = "start"  # from the beginning (preflight): nothing of the release exists yet
DOWNLOAD = "download"  # go on with the download (the partial file is resumed)
INSTALL = "install"  # the bundle is complete: verify it again, then (re)install the release
SWITCH = "switch"  # the release is installed: ask for the switch (again) and restart
# SELF_TEST (named as the phase): this is the trial of the new version; wait for its self-test
SUCCEEDED = "succeeded"  # the new version committed (perhaps before a crash): report SUCCEEDED
FAILED = "failed"  # report FAILED with ``reason``


class SlotsView(Protocol):
    """What :func:`after_restart` reads of :class:`agent.launcher.Slots`."""

    @property
    def current(self) -> str | None: ...
    @property
    def previous(self) -> str | None: ...
    @property
    def pending(self) -> Mapping[str, Any] | None: ...
    @property
    def trial(self) -> Mapping[str, Any] | None: ...
    @property
    def last(self) -> Mapping[str, Any] | None: ...
    @property
    def installed(self) -> frozenset[str]: ...


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str | None = None


def _same_job(record: Mapping[str, Any] | None, job: Mapping[str, Any] | None) -> bool:
    """A state record (pending, trial, last) is about this job: the same job id (and execution) when the
    record names one, else (written without a job) taken as this job's."""
    if not record:
        return False
    theirs = record.get("job")
    if not isinstance(theirs, Mapping) or not theirs.get("job_id") or not job:
        return True
    if theirs.get("job_id") != job.get("job_id"):
        return False
    number = theirs.get("execution_number")
    return number is None or job.get("execution_number") is None or number == job.get("execution_number")


def after_restart(
    phase: str | None,
    *,
    to: str,
    running: str,
    slots: SlotsView,
    job: Mapping[str, Any] | None = None,
) -> Decision:
    """The next move for the update to ``to`` whose journal says ``phase``, on a robot running ``running``
    whose launcher state is ``slots``."""
    trial, pending, last = slots.trial, slots.pending, slots.last
    failed_last = bool(
        last
        and last.get("to") == to
        and last.get("result") in ("rolled_back", "failed")
        and _same_job(last, job)
    )
    if phase in (None, PREFLIGHT):
        return Decision(START)
    if phase == DOWNLOADING:
        return Decision(DOWNLOAD)
    if phase == VERIFIED:
        return Decision(INSTALL)  # cut short while installing: the partial release is removed first
    if phase == INSTALLED and not pending and not trial:
        return Decision(SWITCH if to in slots.installed else INSTALL)
    # switching, self_test or committed (or installed with a switch on the way): the switch was asked for
    if running == to:
        if trial and trial.get("version") == to:
            return Decision(SELF_TEST)
        if failed_last and last:  # e.g. three failed starts and nothing to go back to: still current
            return Decision(FAILED, f"the update to {to} failed: {last.get('reason') or last.get('result')}")
        if slots.current == to:
            return Decision(SUCCEEDED)  # committed (the commit was read back before any crash after it)
        return Decision(FAILED, f"running {to} but it is neither in its trial nor current")
    if failed_last and last:
        reason = last.get("reason") or "rolled back"
        return Decision(FAILED, f"rolled back to {running}: {reason}")
    if pending and pending.get("to") == to:
        return Decision(
            FAILED,
            f"the launcher did not switch to {to} (still running {running}): is the agent started by "
            "roomba-agent-launcher?",
        )
    if trial and trial.get("version") == to:
        return Decision(FAILED, f"the trial of {to} is on but {running} runs: the launcher is not in charge")
    asked_before = bool(last and last.get("to") == to and _same_job(last, job))
    if phase == SWITCHING and to in slots.installed and not pending and not trial and not asked_before:
        return Decision(SWITCH)  # cut short before the switch was durable: ask for it again
    if last and last.get("to") == to and last.get("result") == "committed" and _same_job(last, job):
        return Decision(FAILED, f"{to} was committed but {running} runs now")
    return Decision(
        FAILED, f"the switch to {to} did not happen: {running} runs, no trial and no rollback recorded"
    )
