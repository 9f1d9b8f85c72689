"""Running a Device Client schema 1.0 action: a command or a handler, as a child process with a timeout.

As the AWS IoT Device Client runs them: ``runCommand``'s argv is the comma-separated ``command`` (run
through ``sudo -u USER -n`` when ``runAsUser`` names another user); ``runHandler`` runs
``handler_dir/handler`` with ``runAsUser`` as its first argument, then ``args``. The handler directory must
be mode 0700 and owned by the agent's user, the handler a file owned by it that nobody else may write.
Only the last 1,024 characters of stdout and stderr are kept (a bounded buffer while it runs). A non-zero
exit is ``Exited with status: N``; a step over its timeout is killed with its process group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.jobs.document import Action
from agent.jobs.protocol import MAX_VALUE

KEEP_BYTES = 8 * MAX_VALUE  # while reading: enough for 1,024 characters of any UTF-8
KILL_GRACE_S = 2.0  # after the kill: how long the output may still take to close


@dataclass(frozen=True)
class StepResult:
    ok: bool
    reason: str | None
    stdout: str = ""
    stderr: str = ""


def check_handler_dir(path: str, uid: int | None = None) -> str | None:
    """Why handlers may not run from ``path`` (None: they may): it must be a directory, mode 0700, owned
    by the agent's user, as the Device Client requires."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"the handler directory {path} does not exist"
    except OSError as exc:
        return f"the handler directory {path} cannot be read: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"the handler directory {path} is not a directory"
    if st.st_uid != uid:
        return (
            f"the handler directory {path} must be owned by the agent's user (uid {uid}), not uid {st.st_uid}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        return f"the handler directory {path} must be mode 0700, not {mode:04o} (chmod 700 {path})"
    return None


def handler_path(directory: str, action: Action, uid: int | None = None) -> tuple[str | None, str | None]:
    """(path of the handler, None) or (None, why it may not run)."""
    uid = os.getuid() if uid is None else uid
    where = str(action.input.get("path") or "default")
    base = directory if where in ("default", "") else where
    problem = check_handler_dir(base, uid)
    if problem:
        return None, problem
    name = str(action.input["handler"])
    path = Path(base) / name
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, f"handler {name!r} is not in {base}"
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022 or not st.st_mode & 0o100:
        return None, f"handler {path} must be an executable file of the agent's user, writable by it alone"
    return str(path), None


def argv_of(action: Action, handler_dir: str | None) -> tuple[list[str] | None, str | None]:
    import getpass  # here: it imports pwd and more, only for a command or handler job

    me = getpass.getuser()
    user = action.run_as_user
    if action.type == "runCommand":
        argv = action.argv
        if user and user != me:
            argv = ["sudo", "-u", user, "-n", *argv]
        return argv, None
    if not handler_dir:
        return None, "no handler directory is configured ([jobs] handler_dir)"
    path, problem = handler_path(handler_dir, action)
    if path is None:
        return None, problem
    return [path, user or "", *[str(a) for a in action.input.get("args", [])]], None


async def _drain(stream: asyncio.StreamReader | None, keep: bytearray) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        keep += chunk
        if len(keep) > KEEP_BYTES:
            del keep[: len(keep) - KEEP_BYTES]


def _text(data: bytes | bytearray) -> str:
    return data.decode("utf-8", errors="replace")[-MAX_VALUE:]


async def run_action(action: Action, handler_dir: str | None, timeout_s: float) -> StepResult:
    argv, problem = argv_of(action, handler_dir)
    if argv is None:
        return StepResult(False, problem)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        return StepResult(False, f"command not found: {argv[0]}")
    except PermissionError:
        return StepResult(False, f"permission denied: {argv[0]}")
    except OSError as exc:
        return StepResult(False, f"cannot run {argv[0]}: {exc.strerror}")
    out, err = bytearray(), bytearray()

    async def finish() -> int:
        await asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
        return await proc.wait()

    # one deadline for the output and the exit: a step that closes its output and runs on is stopped too
    done = asyncio.ensure_future(finish())
    try:
        code = await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        _kill(proc.pid)
        # the process group is dead; a child that left it may still hold the pipes: do not wait for it
        await asyncio.wait({done}, timeout=KILL_GRACE_S)
        if not done.done():
            done.cancel()
        await asyncio.gather(done, return_exceptions=True)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return StepResult(False, f"Timed out after {timeout_s:g} s", _text(out), _text(err))
    if code != 0:
        return StepResult(False, f"Exited with status: {code}", _text(out), _text(err))
    return StepResult(True, None, _text(out), _text(err))


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
