"""The small stable launcher that systemd starts: it performs a pending A/B switch, counts trial starts and
rolls back on its own. Standard library only, one file: it is installed as ``/usr/lib/roomba-agent/launcher.py``
and run by the system ``python3``, so that no release can break the thing that chooses the release.

The on-robot layout under ROOT (``/opt/roomba-agent``)::

    releases/<version>/venv/          the release's own virtualenv, built at its final path
    releases/<version>/manifest.json  the signed bundle's manifest
    releases/<version>/.installed     written last: a release without it (or without its agent) is incomplete
    current, previous                 relative symlinks to releases/<version>
    state/pending.json                a switch the agent asked for (it then exits EXIT_SWITCH)
    state/trial.json                  the version on trial, its counters, and the journal of its end
    state/last.json                   the last update's result: committed, rolled_back or failed
    state/broken/<version>            why that version was rolled back (JSON)
    state/launcher.lock               flock: one launcher at a time (a second one exits 75)
    state/state.lock                  flock around every read-modify-write of the state (launcher and agent)
    downloads/                        the agent's partial and complete bundles

Pure core (also what the fleet simulator runs in memory): :class:`Slots` is everything the launcher decides
from; :func:`on_boot`, :func:`on_exit`, :func:`committed`, :func:`request_switch`, :func:`fail_trial`,
:func:`deadline_missed`, :func:`revert` and :func:`activate` map slots to slots. :class:`Layout` is the file
shell: :meth:`Layout.read` builds slots from the files, :meth:`Layout.apply` writes the difference between two
slots as a list of file operations in a crash-safe order.

Rules (the launcher's):

- A pending switch to an installed version becomes a trial: ``previous`` := the running version,
  ``current`` := the new one. A pending switch to a version that is not installed is dropped (last: failed).
- Each start of a trial version is marked ``in_flight`` before the agent is spawned. An attempt that ends
  while the launcher watches is settled by its exit status: 0 (a clean stop) and EXIT_SWITCH with a switch
  pending count nothing (EXIT_SWITCH with none pending is a failed start: during a trial no switch can be
  asked for, and a version exiting 100 on every start would otherwise never be judged); EXIT_ROLLBACK rolls back at once with the agent's reason (``trial.failure``); anything else, a death by a
  signal included, is a failed start, and MAX_FAILED_STARTS (3) of them roll back. An attempt still
  ``in_flight`` at the next boot never ended in front of a launcher: a power cut (or the launcher killed).
  It is counted as *interrupted*, not failed; only more than MAX_INTERRUPTED_STARTS (10) in a row roll back.
- A trial start that does not commit within ``commit_timeout_s`` of its start is stopped (SIGTERM, then SIGKILL
  after ``--stop-timeout``) and rolled back at once (the issue's "missed commit deadline"): a version that ran
  for the whole window without proving itself gets no second window.
- Rolling back: ``current`` := the trial's ``from``, ``previous`` := what it was before the switch;
  ``state/broken/<version>`` and ``last.json`` say why. If ``from`` is gone too, ``previous_before`` is used;
  if neither is installed the trial version stays (last: failed, "no installed version to roll back to").
- Outside a trial: ``current`` if installed; else ``previous`` if installed (``current`` is relinked to it
  and the missing one recorded as broken: launcher.fallback); else the launcher exits 78 (EX_CONFIG) with a
  message saying how to install a release. An agent's exit 0 stops the launcher with 0 (during a trial, an
  exit 0 the launcher did not ask for is a failed start: a daemon that ends on its own proved nothing);
  EXIT_SWITCH / EXIT_ROLLBACK restart the agent after ``--pause``; any other exit status ends the launcher with
  the same status (128 + N for a death by signal N), and systemd's ``Restart=on-failure`` decides.

- When the state cannot be written (a full or read-only disk: ``OSError`` from an apply or the locks), nothing
  changes and the known-good version runs outside any trial (:func:`safe_version`; launcher.state_unwritable).

Exit codes of the launcher: 0 stopped cleanly; 75 another launcher holds the lock; 78 no runnable release;
134 stopped by systemd's watchdog (SIGABRT: the running agent is killed, and in a trial it counts as a failed
start); otherwise the agent's own exit status (outside a trial).

Crash-safe order of :meth:`Layout.apply`. Every JSON file is written to ``.tmp-*`` beside it, fsynced,
``os.replace``'d, then its directory is fsynced; every link is a new symlink under a temp name, then
``os.replace``'d over the old one (rename(2), never ``ln -sfn``), then ROOT is fsynced. Operations, in order:

1. ``trial.json``: a new trial (a switch), new counters, or, when a trial ends, the same trial plus
   ``"ending": {"current", "previous", "last", "broken", "unbroken"}``: the journal of the end;
2. ``state/broken/<version>`` written (or removed after a commit);
3. ``last.json``;
4. the ``current`` link, then the ``previous`` link (current first: the new current is always an installed
   release, so a cut between the two still boots it; a trial's journal then fixes ``previous``, and for the
   changes without a trial, an activation or a fallback, ``previous`` just stays what it was);
5. ``trial.json`` removed (a trial that ended);
6. ``pending.json`` written or removed.

What the next boot makes of a crash after any single operation (:func:`recover`, run first by
:func:`on_boot`): a trial whose ``current`` is not its version is a switch cut short, finished from the trial
(``previous`` := from, ``current`` := version; a pending switch to the same version is dropped, and
``previous`` is also fixed when it alone was not switched yet); a trial with
``ending`` is finished from the journal. Leftover ``.tmp-*`` files are removed at the launcher's start.
An unreadable ``trial.json`` rolls back to ``previous``; an unreadable ``pending.json`` is dropped.

Process details: the agent runs as ``releases/<v>/venv/bin/roomba-agent ARGS`` with ``ROOMBA_RELEASE_ROOT`` and
``ROOMBA_RELEASE`` set; SIGTERM, SIGINT and SIGHUP are forwarded to it; on Linux it gets SIGTERM if the
launcher dies (PR_SET_PDEATHSIG), so a killed launcher never leaves a second agent behind. Under systemd
(``$NOTIFY_SOCKET``) the agent talks to a notify proxy of the launcher's (an abstract socket): its messages
are forwarded from the launcher's pid (so ``NotifyAccess=main`` suffices), only those the running agent's
own process sent (SO_PASSCRED; others: ``launcher.notify_dropped``), except ``STOPPING=1`` (an agent
exiting for a switch is not the service stopping) and ``MAINPID=``; ``WATCHDOG_PID`` is removed from its
environment so the agent pings the watchdog itself; between two agents the launcher pings it. Logs: one JSON
object per line on stderr (``timestamp``, ``level``, ``event``: ``launcher.start``, ``launcher.switch``,
``launcher.trial_start``, ``launcher.trial_interrupted``, ``launcher.trial_failed``, ``launcher.rollback``,
``launcher.committed``, ``launcher.commit_timeout``, ``launcher.fallback``, ``launcher.spawn``,
``launcher.exit``, ``launcher.no_release``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_SWITCH = 100
EXIT_ROLLBACK = 101
EX_TEMPFAIL = 75
EX_CONFIG = 78
EXIT_WATCHDOG = 128 + signal.SIGABRT
MAX_FAILED_STARTS = 3
MAX_INTERRUPTED_STARTS = 10
FORMAT = 1
DEFAULT_ROOT = "/opt/roomba-agent"
DEFAULT_COMMIT_TIMEOUT_S = 300.0
DEFAULT_BAKE_S = 60.0
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+!-]{0,63}$")
TMP_PREFIX = ".tmp-"

Json = dict[str, Any]


class LayoutError(Exception):
    """The layout cannot do what was asked (not installed, no trial, not committed, a bad version name)."""


def iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version) or ".." in version:
        raise LayoutError(f"not a usable release version: {version!r}")
    return version


# --- the pure core -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slots:
    """Everything the launcher decides from. ``pending``, ``trial`` and ``last`` are the JSON documents of
    ``state/``; ``installed`` the complete releases; ``broken`` the versions rolled back, with why."""

    current: str | None = None
    previous: str | None = None
    pending: Json | None = None
    trial: Json | None = None
    last: Json | None = None
    installed: frozenset[str] = frozenset()
    broken: Mapping[str, Json] = field(default_factory=dict)

    @property
    def running(self) -> str | None:
        """The version a boot launches (the trial's, else current's), before fallbacks."""
        return str(self.trial["version"]) if self.trial else self.current

    @property
    def trial_version(self) -> str | None:
        return str(self.trial["version"]) if self.trial else None

    def protected(self) -> frozenset[str]:
        """Versions that must never be removed: current, previous, the trial's versions, a pending target."""
        keep = {self.current, self.previous}
        if self.trial:
            keep |= {self.trial.get("version"), self.trial.get("from"), self.trial.get("previous_before")}
        if self.pending:
            keep |= {self.pending.get("to"), self.pending.get("from")}
        return frozenset(v for v in keep if isinstance(v, str))

    def to_json(self) -> Json:
        return {
            "current": self.current,
            "previous": self.previous,
            "pending": self.pending,
            "trial": self.trial,
            "last": self.last,
            "installed": sorted(self.installed),
            "broken": dict(self.broken),
        }


def fresh(version: str) -> Slots:
    """The slots of a robot with one release installed and active (what a simulated robot starts with)."""
    return Slots(current=version, installed=frozenset({version}))


Notes = list[Json]


def _note(notes: Notes, event: str, **fields: Any) -> None:
    notes.append({"event": event, **fields})


def _ending(s: Slots, last: Json, current: str | None, previous: str | None, broken: Json | None) -> Slots:
    """The end of the trial in ``s``: the new links, last, broken; and the trial gone."""
    assert s.trial is not None
    version = str(s.trial["version"])
    new_broken = {k: v for k, v in s.broken.items() if k != version}
    if broken is not None:
        new_broken[version] = broken
    return replace(
        s, current=current, previous=previous, trial=None, pending=None, last=last, broken=new_broken
    )


def revert(s: Slots, reason: str, now: float) -> Slots:
    """Roll the trial back: ``current`` := its ``from`` (else ``previous_before``), ``previous`` := what it was
    before the switch; last = rolled_back, the trial version recorded as broken. With nothing installed to go
    back to, the trial version stays current (last = failed)."""
    t = s.trial
    if t is None:
        raise LayoutError("no trial to roll back")
    version, origin, before = str(t["version"]), t.get("from"), t.get("previous_before")
    job = t.get("job") or {}
    broken = {
        "format": FORMAT,
        "version": version,
        "reason": reason,
        "at": iso(now),
        "from": origin,
        "job": job,
    }
    target = next(
        (v for v in (origin, before) if isinstance(v, str) and v in s.installed and v != version), None
    )
    if target is None:
        last = {
            "format": FORMAT,
            "result": "failed",
            "from": origin,
            "to": version,
            "reason": f"{reason}; no installed version to roll back to, staying on {version}",
            "at": iso(now),
            "job": job,
        }
        return _ending(s, last, version, s.previous if s.previous != version else None, broken)
    previous = (
        before
        if isinstance(before, str) and before in s.installed and before not in (target, version)
        else None
    )
    last = {
        "format": FORMAT,
        "result": "rolled_back",
        "from": origin,
        "to": version,
        "reason": reason,
        "at": iso(now),
        "job": job,
    }
    return _ending(s, last, target, previous, broken)


def recover(s: Slots, now: float, notes: Notes | None = None) -> Slots:
    """Finish what a crash in the middle of :meth:`Layout.apply` left half done (see the module docstring)."""
    notes = [] if notes is None else notes
    t = s.trial
    if t is None:
        return s
    if t.get("corrupt"):
        _note(notes, "launcher.trial_unreadable", problem=t["corrupt"])
        return revert(s, f"state/trial.json was unreadable ({t['corrupt']})", now)
    ending = t.get("ending")
    if isinstance(ending, dict):
        _note(notes, "launcher.recovered", what="the end of a trial", version=t.get("version"))
        unbroken = set(ending.get("unbroken") or [])
        broken = {k: v for k, v in s.broken.items() if k not in unbroken}
        broken.update(ending.get("broken") or {})
        return replace(
            s,
            current=ending.get("current"),
            previous=ending.get("previous"),
            last=ending.get("last"),
            broken=broken,
            trial=None,
            pending=None,
        )
    version = str(t["version"])
    if s.current != version or s.previous != t.get("from"):
        _note(notes, "launcher.recovered", what="a switch cut short", version=version)
        if version not in s.installed:
            return revert(replace(s, current=version), f"{version} is not installed", now)
        s = replace(s, previous=t.get("from"), current=version)
    if s.pending is not None and s.pending.get("to") == version:
        s = replace(s, pending=None)
    return s


def _switch(s: Slots, pending: Json, now: float, notes: Notes) -> Slots:
    to = pending.get("to")
    if not isinstance(to, str) or pending.get("corrupt"):
        _note(notes, "launcher.pending_dropped", reason=pending.get("corrupt") or "no target version")
        return replace(s, pending=None)
    job = pending.get("job") or {}
    if s.trial is not None:
        _note(
            notes, "launcher.pending_dropped", to=to, reason=f"a trial of {s.trial['version']} is in progress"
        )
        return replace(s, pending=None)
    if to == s.current:
        _note(notes, "launcher.pending_dropped", to=to, reason=f"{to} is already current")
        return replace(s, pending=None)
    if to not in s.installed:
        _note(notes, "launcher.pending_dropped", to=to, reason=f"{to} is not installed")
        last = {
            "format": FORMAT,
            "result": "failed",
            "from": s.current,
            "to": to,
            "reason": f"switch to {to} refused: it is not installed",
            "at": iso(now),
            "job": job,
        }
        return replace(s, pending=None, last=last)
    trial = {
        "format": FORMAT,
        "version": to,
        "from": s.current,
        "previous_before": s.previous,
        "failed_starts": 0,
        "interrupted_starts": 0,
        "starts": 0,
        "in_flight": False,
        "failures": [],
        "bake_s": pending.get("bake_s", DEFAULT_BAKE_S),
        "commit_timeout_s": pending.get("commit_timeout_s"),
        "job": job,
        "failure": None,
        "switched_at": iso(now),
    }
    _note(notes, "launcher.switch", to=to, **{"from": s.current})
    return replace(s, trial=trial, previous=s.current, current=to, pending=None)


def on_boot(s: Slots, now: float) -> tuple[Slots, str | None, Notes]:
    """One launcher boot: recover, perform a pending switch, settle an attempt that never ended (interrupted),
    roll back when the trial is used up; returns (new slots, the version to launch or None, notes)."""
    notes: Notes = []
    s = recover(s, now, notes)
    if s.pending is not None:
        s = _switch(s, s.pending, now, notes)
    t = s.trial
    if t is not None:
        t = dict(t)
        version = str(t["version"])
        if t.get("in_flight"):
            t["in_flight"] = False
            t["interrupted_starts"] = int(t.get("interrupted_starts", 0)) + 1
            _note(notes, "launcher.trial_interrupted", version=version, interrupted=t["interrupted_starts"])
        s = replace(s, trial=t)
        reason = None
        if int(t.get("interrupted_starts", 0)) > MAX_INTERRUPTED_STARTS:
            reason = f"{t['interrupted_starts']} starts in a row never ended (power cuts?)"
        elif int(t.get("failed_starts", 0)) >= MAX_FAILED_STARTS:
            reason = f"{t['failed_starts']} failed starts"
        elif version not in s.installed:
            reason = f"{version} is not installed (incomplete release)"
        if reason is not None:
            s = revert(s, reason, now)
            _note(notes, "launcher.rollback", version=version, to=s.current, reason=reason)
        else:
            t["in_flight"] = True
            t["starts"] = int(t.get("starts", 0)) + 1
            t["started_at"] = iso(now)
            _note(
                notes,
                "launcher.trial_start",
                version=version,
                start=t["starts"],
                failed_starts=t.get("failed_starts", 0),
                interrupted_starts=t.get("interrupted_starts", 0),
            )
            return replace(s, trial=t), version, notes
    if s.current is not None and s.current in s.installed:
        return s, s.current, notes
    if s.previous is not None and s.previous in s.installed:
        missing = s.current
        broken = dict(s.broken)
        if missing is not None:
            broken[missing] = {
                "format": FORMAT,
                "version": missing,
                "reason": "current pointed at an incomplete release",
                "at": iso(now),
                "from": None,
                "job": {},
            }
        _note(notes, "launcher.fallback", missing=missing, to=s.previous)
        return replace(s, current=s.previous, previous=None, broken=broken), s.previous, notes
    _note(notes, "launcher.no_release", current=s.current, previous=s.previous)
    return s, None, notes


def safe_version(s: Slots) -> str | None:
    """What to run when the state cannot be written (a full or read-only disk): nothing changes, and no
    trial can be counted, so the known-good side: a trial's ``from``, else current, else previous."""
    candidates = [s.trial.get("from") if s.trial else None, s.current, s.previous]
    return next((v for v in candidates if isinstance(v, str) and v in s.installed), None)


def on_exit(s: Slots, code: int | None, reason: str, now: float) -> Slots:
    """Settle the attempt that just ended (``s`` read fresh: the agent may have committed meanwhile). ``code``
    None means killed by a signal or by the launcher."""
    t = s.trial
    if t is None or not t.get("in_flight"):
        return s
    t = dict(t, in_flight=False, interrupted_starts=0)
    if code == 0 or (code == EXIT_SWITCH and s.pending is not None):
        return replace(s, trial=t)
    if code == EXIT_SWITCH:  # no switch can be asked for in a trial: else a 100 restarts it, never judged
        reason = "exited 100 (switch) with no switch pending"
    if code == EXIT_ROLLBACK:
        return revert(replace(s, trial=t), str(t.get("failure") or "the agent asked for a rollback"), now)
    t["failed_starts"] = int(t.get("failed_starts", 0)) + 1
    t["failures"] = [*list(t.get("failures") or []), reason][-MAX_FAILED_STARTS * 3 :]
    s = replace(s, trial=t)
    if t["failed_starts"] >= MAX_FAILED_STARTS:
        return revert(s, f"{t['failed_starts']} failed starts; last: {reason}", now)
    return s


def deadline_missed(s: Slots, version: str, commit_timeout_s: float, now: float) -> Slots:
    """The trial start of ``version`` did not commit in time: roll back (nothing, if it committed after all)."""
    if s.trial is None or s.trial.get("version") != version:
        return s
    return revert(s, f"not committed within {commit_timeout_s:g} s of its start", now)


def committed(s: Slots, version: str, now: float) -> Slots:
    """The agent's commit of its trial: the trial ends, last = committed, the version is no longer broken.
    Committing a version that is already current outside a trial is a no-op (the read-back decides)."""
    t = s.trial
    if t is None:
        if s.current == version:
            return s
        raise LayoutError(f"no trial of {version} to commit (current is {s.current}; last: {_last_text(s)})")
    if t.get("version") != version:
        raise LayoutError(f"the trial is of {t.get('version')}, not {version}")
    last = {
        "format": FORMAT,
        "result": "committed",
        "from": t.get("from"),
        "to": version,
        "reason": None,
        "at": iso(now),
        "job": t.get("job") or {},
    }
    return _ending(s, last, s.current, s.previous, None)


def fail_trial(s: Slots, reason: str, now: float) -> Slots:
    """The running trial version records why it failed (then exits EXIT_ROLLBACK)."""
    if s.trial is None:
        raise LayoutError("no trial in progress to fail")
    return replace(s, trial=dict(s.trial, failure=reason, failed_at=iso(now)))


def request_switch(
    s: Slots, to: str, bake_s: float, commit_timeout_s: float | None, job: Json | None, now: float
) -> Slots:
    """Ask the launcher for a switch to ``to`` at its next boot (the agent then exits EXIT_SWITCH)."""
    check_version(to)
    if to not in s.installed:
        raise LayoutError(f"cannot switch to {to}: it is not installed")
    if s.trial is not None:
        raise LayoutError(f"cannot switch to {to}: a trial of {s.trial['version']} is in progress")
    if to == s.current:
        raise LayoutError(f"cannot switch to {to}: it is already current")
    pending = {
        "format": FORMAT,
        "to": to,
        "from": s.current,
        "bake_s": bake_s,
        "commit_timeout_s": commit_timeout_s,
        "job": job or {},
        "at": iso(now),
    }
    return replace(s, pending=pending)


def activate(s: Slots, version: str, now: float) -> Slots:
    """First install (an image, a test): ``current`` := version at once, without a trial."""
    check_version(version)
    if version not in s.installed:
        raise LayoutError(f"cannot activate {version}: it is not installed")
    if s.trial is not None:
        raise LayoutError(f"cannot activate {version}: a trial of {s.trial['version']} is in progress")
    previous = s.current if s.current not in (None, version) else s.previous
    return replace(s, current=version, previous=previous if previous != version else None, pending=None)


def _last_text(s: Slots) -> str:
    if not s.last:
        return "none"
    return f"{s.last.get('result')} {s.last.get('from')} -> {s.last.get('to')}: {s.last.get('reason')}"


# --- the file shell ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One step of :meth:`Layout.apply`: write a JSON file, remove a file, or point a link at a version."""

    kind: str  # "write" | "remove" | "link"
    path: Path
    data: Json | None = None
    version: str | None = None

    def __str__(self) -> str:
        what = (self.version or "(removed)") if self.kind == "link" else ""
        return f"{self.kind} {self.path.name} {what}".rstrip()


FsHook = Callable[[str, Path], None]


class Layout:
    """The files under ROOT. ``fs_hook(step, path)`` is called after every single file system step of
    :meth:`apply` (``write``, ``fsync``, ``symlink``, ``rename``, ``unlink``, ``fsync_dir``): tests raise in
    it to cut the power after step k."""

    def __init__(self, root: str | os.PathLike[str], *, fs_hook: FsHook | None = None) -> None:
        self.root = Path(root)
        self.fs_hook = fs_hook
        self.releases = self.root / "releases"
        self.state = self.root / "state"
        self.broken_dir = self.state / "broken"
        self.pending_path = self.state / "pending.json"
        self.trial_path = self.state / "trial.json"
        self.last_path = self.state / "last.json"
        self._seq = 0

    # paths
    def release_dir(self, version: str) -> Path:
        return self.releases / check_version(version)

    def agent_exe(self, version: str) -> Path:
        return self.release_dir(version) / "venv" / "bin" / "roomba-agent"

    def downloads_dir(self) -> Path:
        path = self.root / "downloads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def link_path(self, name: str) -> Path:
        return self.root / name

    def is_installed(self, version: str) -> bool:
        return (self.release_dir(version) / ".installed").is_file() and self.agent_exe(version).is_file()

    def free_bytes(self) -> int:
        path = self.root if self.root.exists() else self.root.parent
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def ensure(self) -> None:
        for d in (self.releases, self.state, self.broken_dir):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                self._fsync_dir(d.parent)

    # reading
    def read(self) -> Slots:
        installed: set[str] = set()
        if self.releases.is_dir():
            for entry in self.releases.iterdir():
                if (
                    not entry.name.startswith(".")
                    and VERSION_RE.match(entry.name)
                    and self.is_installed(entry.name)
                ):
                    installed.add(entry.name)
        broken: dict[str, Json] = {}
        if self.broken_dir.is_dir():
            for entry in self.broken_dir.iterdir():
                if entry.name.startswith(".") or not VERSION_RE.match(entry.name):
                    continue
                doc, problem = _read_json(entry)
                broken[entry.name] = doc if doc is not None else {"version": entry.name, "reason": problem}
        current, previous = self._read_link("current"), self._read_link("previous")
        pending, problem = _read_json(self.pending_path)
        if problem is not None:
            pending = {"corrupt": problem}
        trial, problem = _read_json(self.trial_path)
        if problem is not None:
            trial = {"corrupt": problem, "version": current, "from": previous, "previous_before": None}
        elif trial is not None and not isinstance(trial.get("version"), str):
            trial = {"corrupt": "no version", "version": current, "from": previous, "previous_before": None}
        last, problem = _read_json(self.last_path)
        return Slots(
            current=current,
            previous=previous,
            pending=pending,
            trial=trial,
            last=last if problem is None else None,
            installed=frozenset(installed),
            broken=broken,
        )

    def _read_link(self, name: str) -> str | None:
        try:
            target = os.readlink(self.root / name)
        except (FileNotFoundError, OSError):
            return None
        head, _, version = target.rstrip("/").rpartition("/")
        if head.rstrip("/").split("/")[-1] != "releases" or not VERSION_RE.match(version):
            return None
        return version

    # writing
    def plan(self, old: Slots, new: Slots) -> list[Op]:
        """The file operations that turn ``old`` into ``new``, in the crash-safe order of the module docstring."""
        ops: list[Op] = []
        ended = old.trial is not None and new.trial is None
        if ended:
            assert old.trial is not None
            unbroken = sorted(set(old.broken) - set(new.broken))
            added = {k: v for k, v in new.broken.items() if old.broken.get(k) != v}
            ending = {
                "current": new.current,
                "previous": new.previous,
                "last": new.last,
                "broken": added,
                "unbroken": unbroken,
            }
            journal = {k: v for k, v in old.trial.items() if k != "corrupt"}
            ops.append(Op("write", self.trial_path, dict(journal, ending=ending)))
        elif new.trial is not None and new.trial != old.trial:
            ops.append(Op("write", self.trial_path, new.trial))
        for version in sorted(set(new.broken) | set(old.broken)):
            if version not in new.broken:
                ops.append(Op("remove", self.broken_dir / version))
            elif old.broken.get(version) != new.broken[version]:
                ops.append(Op("write", self.broken_dir / version, dict(new.broken[version])))
        if new.last != old.last and new.last is not None:
            ops.append(Op("write", self.last_path, new.last))
        if new.current != old.current:
            ops.append(Op("link", self.root / "current", version=new.current))
        if new.previous != old.previous:
            ops.append(Op("link", self.root / "previous", version=new.previous))
        if ended:
            ops.append(Op("remove", self.trial_path))
        if new.pending != old.pending:
            ops.append(
                Op("write", self.pending_path, new.pending)
                if new.pending is not None
                else Op("remove", self.pending_path)
            )
        return ops

    def apply(self, old: Slots, new: Slots) -> list[Op]:
        """Write what changed from ``old`` to ``new``; every step durable before the next one starts."""
        self.ensure()
        ops = self.plan(old, new)
        for op in ops:
            if op.kind == "write":
                assert op.data is not None
                self._write_json(op.path, op.data)
            elif op.kind == "remove":
                self._remove(op.path)
            else:
                self._link(op.path, op.version)
        return ops

    def _step(self, step: str, path: Path) -> None:
        if self.fs_hook is not None:
            self.fs_hook(step, path)

    def _tmp(self, path: Path) -> Path:
        self._seq += 1
        return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{self._seq}")

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._step("fsync_dir", path)

    def _write_bytes(self, path: Path, data: bytes) -> None:
        tmp = self._tmp(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            self._step("write", tmp)
            os.fsync(fd)
            self._step("fsync", tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._step("rename", path)
        self._fsync_dir(path.parent)

    def _write_json(self, path: Path, data: Json) -> None:
        self._write_bytes(path, (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode())

    def _remove(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        self._step("unlink", path)
        self._fsync_dir(path.parent)

    def _link(self, path: Path, version: str | None) -> None:
        if version is None:
            self._remove(path)
            return
        tmp = self._tmp(path)
        os.symlink(f"releases/{check_version(version)}", tmp)
        self._step("symlink", tmp)
        os.replace(tmp, path)
        self._step("rename", path)
        self._fsync_dir(path.parent)

    def clean_temp(self) -> list[Path]:
        """Remove the ``.tmp-*`` leftovers of an apply cut short."""
        removed = []
        for d in (self.root, self.state, self.broken_dir):
            if d.is_dir():
                for entry in d.iterdir():
                    if entry.name.startswith(TMP_PREFIX):
                        entry.unlink()
                        removed.append(entry)
        return removed

    # locks
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``state/state.lock`` around a read-modify-write (the launcher and the agent both write)."""
        self.ensure()
        fd = os.open(self.state / "state.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def launcher_lock(self) -> int:
        """Take ``state/launcher.lock`` for the life of this process (fd returned); LayoutError if held."""
        self.ensure()
        fd = os.open(self.state / "launcher.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LayoutError(f"another launcher (pid {holder}) runs on {self.root}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def update(self, change: Callable[[Slots], Slots]) -> Slots:
        """read → change → apply under the state lock; returns the slots read back."""
        with self.locked():
            old = self.read()
            self.apply(old, change(old))
            return self.read()

    # the agent's calls
    def request_switch(
        self,
        to: str,
        bake_s: float = DEFAULT_BAKE_S,
        commit_timeout_s: float | None = None,
        job: Json | None = None,
        *,
        now: float | None = None,
    ) -> Slots:
        t = time.time() if now is None else now
        back = self.update(lambda s: request_switch(s, to, bake_s, commit_timeout_s, job, t))
        if not back.pending or back.pending.get("to") != to:
            raise LayoutError(f"the switch to {to} was not recorded in {self.pending_path}")
        return back

    def commit(self, version: str, *, now: float | None = None) -> Slots:
        """Commit the trial of ``version``; reads the state back and raises LayoutError unless ``version`` is
        current with no trial left (e.g. the launcher rolled it back first)."""
        t = time.time() if now is None else now
        back = self.update(lambda s: committed(s, version, t))
        if back.trial is not None or back.current != version:
            raise LayoutError(
                f"{version} is not committed: current is {back.current}, trial "
                f"{back.trial_version}; last: {_last_text(back)}"
            )
        return back

    def fail_trial(self, reason: str, *, now: float | None = None) -> Slots:
        t = time.time() if now is None else now
        back = self.update(lambda s: fail_trial(s, reason, t))
        if back.trial is None or back.trial.get("failure") != reason:
            raise LayoutError("the trial's failure was not recorded")
        return back

    def activate(self, version: str, *, now: float | None = None) -> Slots:
        t = time.time() if now is None else now
        back = self.update(lambda s: activate(s, version, t))
        if back.current != version:
            raise LayoutError(f"{version} was not activated")
        return back

    # releases
    def mark_installed(self, version: str, manifest_bytes: bytes | None = None) -> None:
        """The release at ``release_dir(version)`` is complete: write its manifest (unless ``manifest_bytes`` is
        None: then it is already there), fsync all of it, then write ``.installed`` last (a crash before that
        leaves an incomplete release, never a half one)."""
        rdir = self.release_dir(version)
        if not self.agent_exe(version).is_file():
            raise LayoutError(f"{self.agent_exe(version)} does not exist: the release's venv is not built")
        if manifest_bytes is not None:
            self._write_bytes(rdir / "manifest.json", manifest_bytes)
        for dirpath, _dirs, filenames in os.walk(rdir):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._fsync_dir(Path(dirpath))
        marker = {"format": FORMAT, "version": version, "at": iso(time.time())}
        self._write_json(rdir / ".installed", marker)
        self._fsync_dir(self.releases)

    def remove_release(self, version: str) -> None:
        """Delete a release (refused for current, previous, the trial's and a pending switch's versions):
        ``.installed`` goes first, so a crash half-way leaves an incomplete release, not a broken one."""
        with self.locked():
            s = self.read()
            if version in s.protected():
                raise LayoutError(
                    f"refusing to remove {version}: it is current, previous, on trial or pending"
                )
            rdir = self.release_dir(version)
            if not rdir.exists():
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(rdir / ".installed")
            self._fsync_dir(rdir)
            shutil.rmtree(rdir)
            self._fsync_dir(self.releases)

    def prune(self, keep: int = 3, *, incomplete: bool = True) -> list[str]:
        """Remove installed releases beyond the ``keep`` most recently installed, never a protected one; with
        ``incomplete``, also releases without ``.installed`` (call it when no install is in progress)."""
        with self.locked():
            s = self.read()
        protected = s.protected()
        removed: list[str] = []
        if not self.releases.is_dir():
            return removed
        dirs = [d for d in self.releases.iterdir() if VERSION_RE.match(d.name) and d.is_dir()]
        done = sorted(
            (d for d in dirs if d.name in s.installed),
            key=lambda d: (d / ".installed").stat().st_mtime,
            reverse=True,
        )
        for d in done[keep:]:
            if d.name not in protected:
                removed.append(d.name)
        if incomplete:
            removed += [d.name for d in dirs if d.name not in s.installed and d.name not in protected]
        for version in removed:
            self.remove_release(version)
        return removed


def _read_json(path: Path) -> tuple[Json | None, str | None]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path.name}: {exc.strerror}"
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return None, f"{path.name}: not JSON ({exc})"
    if not isinstance(doc, dict):
        return None, f"{path.name}: not a JSON object"
    return doc, None


# --- the process -------------------------------------------------------------------------------------------
def log(event: str, level: str = "info", **fields: Any) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    line = json.dumps({"timestamp": stamp, "level": level, "event": event, **fields}, default=str)
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def exit_status(returncode: int) -> int:
    """A child's status as a shell (and systemd) sees it: 128 + N for a death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def describe(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


class NotifyProxy:
    """The agent's ``$NOTIFY_SOCKET``: forwards its messages to systemd from the launcher's pid, minus
    ``STOPPING=1`` (unless the launcher is stopping) and ``MAINPID=``. An abstract socket is open to every
    local process: only datagrams whose SCM_CREDENTIALS pid is the running agent's are forwarded, others are
    dropped (``launcher.notify_dropped``, at most one warning per DROP_LOG_S)."""

    DROP_LOG_S = 60.0

    def __init__(self, target: str) -> None:
        passcred = getattr(socket, "SO_PASSCRED", None)
        if passcred is None or not hasattr(socket, "SCM_CREDENTIALS"):
            raise OSError("no SO_PASSCRED on this platform: cannot tell who sends a notification")
        self.target: str | bytes = b"\0" + target[1:].encode() if target.startswith("@") else target
        self.name = f"roomba-launcher-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, passcred, 1)
        self.sock.bind(b"\0" + self.name.encode())
        self.dropped = 0
        self._drop_logged: float | None = None
        self.sock.setblocking(False)
        self.out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.address = "@" + self.name

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, **fields: str | int) -> None:
        self._send("\n".join(f"{k}={v}" for k, v in fields.items()))

    def _send(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self.out.sendto(text.encode(), self.target)

    def pump(self, stopping: bool, pid: int | None) -> None:
        """Forward what the agent ``pid`` sent (its main process only); drop every other sender's."""
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sender = next(
                (
                    int.from_bytes(cdata[:4], sys.byteorder, signed=True)
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cdata) >= 12
                ),
                None,
            )
            if pid is None or sender != pid:
                self._drop(sender, pid)
                continue
            lines = [
                line
                for line in data.decode(errors="replace").splitlines()
                if line
                and not line.startswith("MAINPID=")
                and not line.startswith("FDSTORE")
                and (stopping or line != "STOPPING=1")
            ]
            if lines:
                self._send("\n".join(lines))

    def _drop(self, sender: int | None, agent: int | None) -> None:
        self.dropped += 1
        now = time.monotonic()
        if self._drop_logged is None or now - self._drop_logged >= self.DROP_LOG_S:
            self._drop_logged = now
            log("launcher.notify_dropped", "warning", sender=sender, agent=agent, dropped=self.dropped)


def _pdeathsig() -> Callable[[], None] | None:
    """A function for the forked child, resolved in the parent: PR_SET_PDEATHSIG = SIGTERM (Linux), so that a
    killed launcher never leaves its agent running beside the next one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:  # runs in the child between fork and exec
        prctl(1, int(signal.SIGTERM), 0, 0, 0)

    return setup


class Launcher:
    """The main loop: read → on_boot → apply → spawn → wait (forward signals, watch the commit deadline) →
    on_exit → apply → again or exit."""

    def __init__(
        self,
        layout: Layout,
        agent_args: Sequence[str],
        *,
        commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S,
        pause_s: float = 1.0,
        stop_timeout_s: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.agent_args = list(agent_args)
        self.commit_timeout_s = commit_timeout_s
        self.pause_s = pause_s
        self.stop_timeout_s = stop_timeout_s
        self.env = dict(os.environ if env is None else env)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.watchdog = False
        self.proxy: NotifyProxy | None = None
        self.child_setup = _pdeathsig()
        notify = self.env.get("NOTIFY_SOCKET", "")
        if notify.startswith(("@", "/")):
            try:
                self.proxy = NotifyProxy(notify)
            except OSError as exc:
                log("launcher.notify_proxy_failed", "warning", error=str(exc))

    # signals
    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGABRT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        elif signum == signal.SIGABRT:
            self.watchdog = True
        child = self.child
        if child is not None and child.returncode is None:
            sig = signal.SIGKILL if signum == signal.SIGABRT else signum
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)

    def _notify(self, **fields: str | int) -> None:
        if self.proxy is not None:
            self.proxy.send(**fields)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not (self.stopping or self.watchdog) and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    # the loop
    def run(self) -> int:
        while True:
            if self.watchdog:
                log("launcher.exit", "error", code=EXIT_WATCHDOG, reason="stopped by the watchdog (SIGABRT)")
                return EXIT_WATCHDOG
            if self.stopping:
                self._notify(STOPPING=1)
                log("launcher.exit", code=0, reason="stopped")
                return 0
            version, new = self.boot()
            if version is None:
                message = (
                    f"no runnable release under {self.layout.root}: current -> {new.current or 'nothing'}, "
                    f"previous -> {new.previous or 'nothing'} (installed: {sorted(new.installed) or 'none'}); "
                    f"install one with: roomba-agent update install BUNDLE --root {self.layout.root} --activate"
                )
                log("launcher.exit", "error", code=EX_CONFIG, reason=message)
                print(f"roomba-agent-launcher: {message}", file=sys.stderr, flush=True)
                self._notify(STATUS=message[:200])
                return EX_CONFIG
            in_trial = new.trial is not None
            timeout = self.commit_timeout_s
            if new.trial is not None and isinstance(new.trial.get("commit_timeout_s"), (int, float)):
                timeout = float(new.trial["commit_timeout_s"])
            returncode, killed_for_deadline = self._run_child(version, in_trial, timeout)
            reason = describe(returncode)
            if not self.stopping and returncode == 0:
                reason = "exited with 0 on its own"
            s, after = self.settle(
                version, returncode, reason, killed_for_deadline, timeout, in_trial=in_trial
            )
            self._report_exit(version, returncode, reason, s, after)
            if self.stopping or self.watchdog:
                continue
            if killed_for_deadline or s.trial is not None or returncode in (EXIT_SWITCH, EXIT_ROLLBACK):
                self._notify(WATCHDOG=1, STATUS=f"restarting the agent ({reason})")
                self._sleep(self.pause_s)
                continue
            log(
                "launcher.exit",
                "info" if returncode == 0 else "warning",
                code=exit_status(returncode),
                reason=reason,
            )
            return exit_status(returncode)

    def boot(self) -> tuple[str | None, Slots]:
        """read → on_boot → apply under the state lock; the version to run and the slots it runs in. If the
        state cannot be written (a full or read-only disk), nothing changes and the known-good version runs
        outside any trial (:func:`safe_version`)."""
        try:
            with self.layout.locked():
                old = self.layout.read()
                new, version, notes = on_boot(old, time.time())
                self.layout.apply(old, new)
        except OSError as exc:
            s = self.layout.read()
            version = safe_version(s)
            log(
                "launcher.state_unwritable",
                "error",
                error=str(exc),
                version=version,
                root=str(self.layout.root),
            )
            return version, replace(s, trial=None, pending=None)
        for note in notes:
            event = note.pop("event")
            log(event, "warning" if event in _WARNINGS else "info", **note)
        return version, new

    def settle(
        self,
        version: str,
        returncode: int,
        reason: str,
        killed_for_deadline: bool,
        timeout: float,
        *,
        in_trial: bool = True,
    ) -> tuple[Slots, Slots]:
        """Record how the attempt ended; (the slots read fresh, the slots written). An attempt that did not
        run in the trial (``in_trial`` false, or another version: :func:`safe_version` after a failed boot)
        leaves the trial alone, and is decided as outside a trial."""
        s = Slots()
        try:
            with self.layout.locked():
                s = self.layout.read()
                now = time.time()
                if s.trial is not None and (not in_trial or s.trial.get("version") != version):
                    s = replace(s, trial=None)
                    return s, s
                if killed_for_deadline:
                    after = deadline_missed(s, version, timeout, now)
                elif self.stopping:
                    after = on_exit(s, 0, "stopped", now)
                elif returncode == 0:  # a daemon that ends on its own during its trial proved nothing
                    after = on_exit(s, None if s.trial is not None else 0, reason, now)
                else:
                    after = on_exit(s, returncode if returncode >= 0 else None, reason, now)
                self.layout.apply(s, after)
        except OSError as exc:
            log("launcher.state_unwritable", "error", error=str(exc), root=str(self.layout.root))
            s = replace(s, trial=None)  # nothing could be counted: decide as outside a trial
            return s, s
        return s, after

    def _report_exit(self, version: str, returncode: int, reason: str, s: Slots, after: Slots) -> None:
        log("launcher.agent_exit", version=version, code=exit_status(returncode), reason=reason)
        if s.trial is not None and after.trial is None and after.last:
            if after.last.get("result") == "committed":
                log("launcher.committed", version=after.last.get("to"))
            else:
                log(
                    "launcher.rollback",
                    "warning",
                    version=after.last.get("to"),
                    to=after.current,
                    result=after.last.get("result"),
                    reason=after.last.get("reason"),
                )
        elif (
            after.trial is not None
            and s.trial is not None
            and int(after.trial.get("failed_starts", 0)) > int(s.trial.get("failed_starts", 0))
        ):
            log(
                "launcher.trial_failed",
                "warning",
                version=version,
                failed_starts=after.trial["failed_starts"],
                reason=reason,
            )

    def _run_child(self, version: str, in_trial: bool, timeout: float) -> tuple[int, bool]:
        """Run one agent to its end; returns (its returncode, whether the commit deadline stopped it)."""
        exe = self.layout.agent_exe(version)
        env = dict(self.env, ROOMBA_RELEASE_ROOT=str(self.layout.root), ROOMBA_RELEASE=version)
        env.pop("WATCHDOG_PID", None)
        if self.proxy is not None:
            env["NOTIFY_SOCKET"] = self.proxy.address
        try:
            self.child = subprocess.Popen([str(exe), *self.agent_args], env=env, preexec_fn=self.child_setup)
        except OSError as exc:
            log("launcher.spawn_failed", "error", version=version, exe=str(exe), error=str(exc))
            return (126 if isinstance(exc, PermissionError) else 127), False
        child = self.child
        log("launcher.spawn", version=version, pid=child.pid, trial=in_trial)
        self._notify(STATUS=f"running {version}" + (" (on trial)" if in_trial else ""))
        started = time.monotonic()
        deadline: float | None = started + timeout if in_trial else None
        next_check = started + 0.5
        kill_at: float | None = None
        killed_for_deadline = False
        stop_sent = False
        while True:
            if self.proxy is not None:
                with contextlib.suppress(InterruptedError):
                    select.select([self.proxy], [], [], 0.2)
                self.proxy.pump(self.stopping, child.pid)
            else:
                time.sleep(0.1)
            returncode = child.poll()
            if returncode is not None:
                self.child = None
                if self.proxy is not None:  # what it said last (a STATUS= on its way out)
                    self.proxy.pump(self.stopping, child.pid)
                return returncode, killed_for_deadline
            now = time.monotonic()
            if self.watchdog:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            if self.stopping and not stop_sent:  # (again: the signal may have come before the spawn)
                stop_sent = True
                self._notify(STOPPING=1)
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
                kill_at = now + self.stop_timeout_s
            if deadline is not None and (now >= next_check or now >= deadline):
                # the agent commits by writing the state: watch it, and stop a trial start that never does
                next_check = now + 0.5
                with self.layout.locked():
                    s = self.layout.read()
                if s.trial is None or s.trial.get("version") != version:
                    if s.current == version:
                        log("launcher.committed", version=version)
                    deadline = None
                elif now >= deadline:
                    log("launcher.commit_timeout", "warning", version=version, timeout_s=timeout)
                    killed_for_deadline = True
                    deadline = None
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGTERM)
                    kill_at = now + self.stop_timeout_s
            if kill_at is not None and now >= kill_at:
                log("launcher.kill", "warning", version=version, pid=child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                kill_at = None


_WARNINGS = frozenset(
    {
        "launcher.rollback",
        "launcher.trial_interrupted",
        "launcher.fallback",
        "launcher.pending_dropped",
        "launcher.trial_unreadable",
        "launcher.no_release",
        "launcher.recovered",
    }
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomba-agent-launcher",
        description="Start the current roomba-agent release; perform a pending A/B switch, count trial starts, "
        "roll back on its own. Arguments after -- go to the agent.",
        epilog="exit codes: 0 stopped; 75 another launcher runs; 78 no runnable release; 134 watchdog; "
        "otherwise the agent's exit status",
    )
    parser.add_argument("--root", default=DEFAULT_ROOT, help="the release root (default %(default)s)")
    parser.add_argument(
        "--commit-timeout",
        type=float,
        default=DEFAULT_COMMIT_TIMEOUT_S,
        help="seconds a trial start may run without committing, unless the switch says (default %(default)s)",
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds between two agents (default %(default)s)"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        help="seconds between SIGTERM and SIGKILL when stopping the agent (default %(default)s)",
    )
    parser.add_argument("--status", action="store_true", help="print the layout's state as JSON and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    agent_args: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, agent_args = args[:cut], args[cut + 1 :]
    opts = build_parser().parse_args(args)
    layout = Layout(opts.root)
    if opts.status:
        print(json.dumps(layout.read().to_json(), indent=2, sort_keys=True))
        return 0
    log("launcher.start", root=str(layout.root), pid=os.getpid(), python=sys.version.split()[0])
    lock: int | None = None
    try:
        lock = layout.launcher_lock()
    except LayoutError as exc:
        log("launcher.exit", "error", code=EX_TEMPFAIL, reason=str(exc))
        print(f"roomba-agent-launcher: {exc}", file=sys.stderr, flush=True)
        return EX_TEMPFAIL
    except OSError as exc:  # a read-only or full disk: still run the known-good version (Launcher.boot)
        log("launcher.lock_failed", "error", error=str(exc))
    try:
        with contextlib.suppress(OSError):
            for leftover in layout.clean_temp():
                log("launcher.cleaned", path=str(leftover))
        launcher = Launcher(
            layout,
            agent_args,
            commit_timeout_s=opts.commit_timeout,
            pause_s=opts.pause,
            stop_timeout_s=opts.stop_timeout,
        )
        launcher.install_signals()
        return launcher.run()
    finally:
        if lock is not None:
            os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
