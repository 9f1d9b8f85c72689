"""Docs that run: every shell block of the README and docs/, run as a reader would type it.

Conventions for whoever writes docs:

- Every ```sh / ```bash / ```shell / ```console fence in README.md and docs/*.md is run by this module as
  written (one test per block, id ``FILE:LINE``), unless a marker right above it (HTML comments, one per
  line, blank lines allowed) says what the test machine lacks: ``<!-- doc: needs-aws -->`` (a real AWS
  account), ``<!-- doc: needs-robot -->`` (a real robot, or a step run on the robot itself),
  ``<!-- doc: needs-systemd -->`` (systemd as PID 1 on a robot image) or ``<!-- doc: skip REASON -->``.
  Such a block is still checked: valid shell, and every ``roomba-*`` sub-command it names exists.
- Blocks that are run can also be marked:
  ``<!-- doc: after "REGEX" -->``: the reader waits for this output of the earlier blocks (a ready line)
  before typing the block; ``<!-- doc: ctrl-c after "REGEX" -->``: the block ends in a live view; once its
  output matches, the test presses Ctrl-C (SIGINT to the block's processes) and the block has passed;
  ``<!-- doc: with-local-cloud -->``: a local cloud is running in ``$ROOMBA_FLEET_DIR`` before the block.
- Each block starts like a new terminal: ``bash -euo pipefail``, PATH without the venv (so the block says
  ``. .venv/bin/activate`` or ``.venv/bin/...``), nothing exported by an earlier block.
- The blocks of one file run in document order, in one scratch directory standing in for the repository
  root (the checkout's top-level entries linked into it, except ``var/``), with a scratch ``$HOME`` and
  ``$ROOMBA_FLEET_DIR``. A block sees the files the earlier blocks of its file wrote and the programs they
  started with ``&`` (what runs "in another terminal"); those run until the file's last block is done, then
  their process groups get SIGTERM (SIGKILL 20 s later).
- Every fence names its language, so a shell block cannot slip past untagged.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = frozenset({"sh", "bash", "shell", "console"})
NOT_RUN = {
    "needs-aws": "needs a real AWS account",
    "needs-robot": "needs a real robot (or runs on the robot itself)",
    "needs-systemd": "needs systemd as PID 1 (a robot image)",
}
MARKER = re.compile(r"^\s*<!--\s*doc:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<info>.*)$")
QUOTED = re.compile(r'^(?P<kind>ctrl-c after|after) "(?P<text>.+)"$')
BLOCK_TIMEOUT_S = 90.0
# The docs use the project's default ports, as on a reader's machine. Run as root, each doc gets a network
# namespace of its own; otherwise these ports must be free when a doc starts.
DOC_PORTS = (8883, 7000)


def _rel(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Fence:
    """Any fenced block of a Markdown file; ``line`` is the opening fence's (1-based)."""

    path: Path
    line: int
    lang: str
    text: str
    markers: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


@dataclass(frozen=True)
class Block:
    """A shell block and what its marker says about running it."""

    fence: Fence
    skip_reason: str | None = None
    ctrl_c_after: str | None = None
    after: str | None = None
    with_local_cloud: bool = False

    @property
    def id(self) -> str:
        return self.fence.id

    @property
    def runnable(self) -> bool:
        return self.skip_reason is None

    def script(self) -> str:
        """The commands, as typed: a console block's ``$ `` prompts are removed and its output lines dropped."""
        if self.fence.lang != "console":
            return self.fence.text
        lines: list[str] = []
        for line in self.fence.text.splitlines():
            if line.startswith("$ ") or (line.startswith("> ") and lines):
                lines.append(line[2:])
        return "\n".join(lines) + "\n"


def fences(path: Path) -> list[Fence]:
    found: list[Fence] = []
    lines = path.read_text().splitlines()
    i = 0
    markers: list[str] = []  # the marker lines right above the next fence
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                marker = MARKER.match(lines[i])
                markers = [*markers, marker["body"]] if marker else []
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""
        ):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        found.append(
            Fence(
                path=path,
                line=start + 1,
                lang=info.split()[0] if info else "",
                text="\n".join(body) + "\n",
                markers=tuple(markers),
            )
        )
        markers = []
        i += 1
    return found


class MarkerError(ValueError):
    pass


def classify(fence: Fence) -> Block:
    """What the markers above ``fence`` ask for; :class:`MarkerError` for a marker nobody understands."""
    skip: str | None = None
    ctrl_c: str | None = None
    after: str | None = None
    cloud = False
    kinds = 0
    for body in fence.markers:
        quoted = QUOTED.match(body)
        if body == "run" or body in NOT_RUN or body.split(" ")[0] == "skip":
            kinds += 1
            if body in NOT_RUN:
                skip = NOT_RUN[body]
            elif body != "run":
                skip = body[len("skip") :].strip()
                if not skip:
                    raise MarkerError(
                        f"{fence.id}: `<!-- doc: skip -->` needs a reason: `<!-- doc: skip REASON -->`"
                    )
        elif body == "with-local-cloud":
            cloud = True
        elif quoted and quoted["kind"] in {"ctrl-c after", "after"}:
            try:
                re.compile(quoted["text"])
            except re.error as exc:
                raise MarkerError(f"{fence.id}: `{body}` is not a regular expression: {exc}") from None
            if quoted["kind"] == "after":
                after = quoted["text"]
            else:
                ctrl_c = quoted["text"]
        else:
            raise MarkerError(
                f"{fence.id}: unknown marker `<!-- doc: {body} -->`; use run, needs-aws, needs-robot, "
                'needs-systemd, skip REASON, with-local-cloud, after "REGEX" or ctrl-c after "REGEX"'
            )
    if kinds > 1:
        raise MarkerError(f"{fence.id}: more than one of run / needs-* / skip")
    return Block(fence, skip_reason=skip, ctrl_c_after=ctrl_c, after=after, with_local_cloud=cloud)


def raw_shell_fence_lines(path: Path) -> list[int]:
    """Opening lines of shell fences by a second, cruder reading (a guard on :func:`fences`)."""
    lines = path.read_text().splitlines()
    out, inside = [], False
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("```"):
            if not inside and s[3:].strip().split(" ")[0] in SHELL_LANGS:
                out.append(n)
            inside = not inside
    return out


# --- running ---------------------------------------------------------------------------------------------


def _clean_path(path: str) -> str:
    """PATH as a new login shell has it: no virtualenv's bin (whoever started pytest may have activated one)."""
    keep = [p for p in path.split(os.pathsep) if p and not (Path(p) / "activate").exists()]
    return os.pathsep.join(keep)


@dataclass
class Result:
    block: Block
    returncode: int | None
    output: str
    failed_line: int | None = None
    note: str = ""
    workspace: Path | None = None

    @property
    def ok(self) -> bool:
        if self.block.ctrl_c_after is not None:
            return self.note == "ctrl-c" and re.search(self.block.ctrl_c_after, self.output) is not None
        return self.returncode == 0

    def report(self) -> str:
        where = f"{_rel(self.block.fence.path)}:{self.failed_line}" if self.failed_line else self.block.id
        tail = "\n".join(self.output.splitlines()[-40:])
        return (
            f"{where}: {self.note or f'exit {self.returncode}'} (scratch directory {self.workspace})\n"
            f"--- output (last 40 lines) ---\n{tail}"
        )


@dataclass
class Workspace:
    """One doc file's scratch repository root, home and the process groups its blocks left running."""

    root: Path
    env: dict[str, str]
    groups: list[int] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    # The nsenter prefix, when the doc has a network of its own.
    netns: list[str] = field(default_factory=list)
    cloud_started: bool = False

    @classmethod
    def create(cls, doc: Path) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix=f"doc-{doc.stem[:10]}-", dir="/tmp"))
        repo = root / "repo"
        repo.mkdir()
        for entry in REPO.iterdir():
            if entry.name not in {"var", ".git"}:
                (repo / entry.name).symlink_to(entry)
        home = root / "home"
        home.mkdir()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ROOMBA_", "PYTEST_", "VIRTUAL_ENV", "PYTHON", "SOFTHSM2_CONF"))
        }
        env.update(
            HOME=str(home),
            PATH=_clean_path(os.environ.get("PATH", "/usr/bin:/bin")),
            ROOMBA_FLEET_DIR=str(root / "local-cloud"),
            TERM="dumb",
            LC_ALL="C.UTF-8",
        )
        space = cls(root=root, env=env)
        space.enter_own_network()
        return space

    @property
    def cwd(self) -> Path:
        return self.root / "repo"

    def enter_own_network(self) -> None:
        """A network namespace of the doc's own (root only), so its ports (the docs use the defaults 8883
        and 7000) can clash with no other test or a reader's running demo; else the machine's network."""
        if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
            return
        holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != b"up":
            holder.kill()
            holder.wait()
            return
        self.groups.append(holder.pid)
        self.netns = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]

    def popen(self, argv: list[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*self.netns, *argv],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(proc.pid)
        return proc

    def start_local_cloud(self) -> None:
        """``roomba-fleet up`` in ``$ROOMBA_FLEET_DIR``, on ports no doc uses, until it says ``ready``."""
        if self.cloud_started:
            return
        self.cloud_started = True
        (self.root / "logs").mkdir(exist_ok=True)
        log = self.root / "logs" / "0-local-cloud.log"
        up = [
            str(REPO / ".venv/bin/roomba-fleet"),
            "up",
            "--dir",
            self.env["ROOMBA_FLEET_DIR"],
            "--port",
            "18883",
            "--api-port",
            "18444",
        ]
        with log.open("wb") as out:
            proc = self.popen(up, out)
        deadline = time.monotonic() + 60.0
        while "\nready\n" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the local cloud for the doc did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

    def earlier_output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.root / "logs").glob("*.out")))

    def run(self, block: Block) -> Result:
        if block.with_local_cloud:
            self.start_local_cloud()
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        if block.after is not None:
            pattern = block.after
            deadline = time.monotonic() + BLOCK_TIMEOUT_S
            while re.search(pattern, self.earlier_output()) is None:
                if time.monotonic() > deadline:
                    note = (
                        f'"{pattern}" never appeared in the earlier blocks\' output ({BLOCK_TIMEOUT_S:.0f} s)'
                    )
                    result = Result(block, None, self.earlier_output()[-4000:], None, note, self.root)
                    self.results[block.id] = result
                    return result
                time.sleep(0.1)
        name = f"{block.fence.path.stem}-{block.fence.line}"
        script = logs / f"{name}.sh"
        status = logs / f"{name}.failed-line"
        # One line of instrumentation before the block, so a failure names its line in the doc.
        script.write_text(f"trap 'echo $LINENO > {shlex.quote(str(status))}' ERR\n" + block.script())
        out_path = logs / f"{name}.out"
        with out_path.open("wb") as out:
            proc = self.popen(["bash", "-euo", "pipefail", str(script)], out)
        note = ""
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while proc.poll() is None:
            if block.ctrl_c_after is not None and re.search(
                block.ctrl_c_after, out_path.read_text(errors="replace")
            ):
                # Ctrl-C reaches the foreground command only: what was started with & keeps running.
                note = (
                    "ctrl-c" if _press_ctrl_c(proc, within_s=20.0) else "ctrl-c did not stop it within 20 s"
                )
                break
            if time.monotonic() > deadline:
                note = f"still running after {BLOCK_TIMEOUT_S:.0f} s (a long-running program not started with &?)"
                break
            time.sleep(0.1)
        if block.ctrl_c_after is not None and not note and proc.returncode is not None:
            note = (
                f"exit {proc.returncode} without waiting for Ctrl-C"
                f' (a ctrl-c block ends in a live view; "{block.ctrl_c_after}" was awaited)'
            )
        failed_line = None
        if status.exists() and note != "ctrl-c":
            failed_line = block.fence.line + int(status.read_text().split()[0]) - 1
        result = Result(
            block, proc.returncode, out_path.read_text(errors="replace"), failed_line, note, self.root
        )
        self.results[block.id] = result
        return result

    def close(self) -> None:
        """SIGTERM to every process group the blocks started (what Ctrl-C in each terminal would do); after
        20 s, SIGKILL to whatever is left of them and of their children in sessions of their own."""
        tree = _descendants(set(self.groups))
        for g in self.groups:
            try:
                os.killpg(g, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20.0
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in _alive(tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.groups.clear()
        if all(r.ok for r in self.results.values()):
            shutil.rmtree(self.root, ignore_errors=True)  # kept after a failure, for its logs


def _processes() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, session id, state, start time) of every process."""
    out: dict[int, tuple[int, int, str, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(stat.parent.name)] = (int(f[1]), int(f[3]), f[0], int(f[19]))
    return out


def _descendants(sessions: set[int]) -> set[int]:
    """Every process in these sessions (each block's bash leads one) and all their descendants."""
    procs = _processes()
    found = {pid for pid, (_, sid, _, _) in procs.items() if sid in sessions}
    while True:
        more = {pid for pid, (ppid, _, _, _) in procs.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {pid for pid in pids if pid in procs and procs[pid][2] != "Z"}


def _press_ctrl_c(proc: subprocess.Popen[bytes], within_s: float) -> bool:
    """SIGINT to the shell's foreground command, pressed again (as a person would) whenever the command
    it reached has ended while the shell goes on: the foreground command can be a short-lived one (a
    ``sleep 0.1`` in a loop) that exits just as the signal is sent. True once the shell has ended."""
    deadline = time.monotonic() + within_s
    target: int | None = None
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        if target is None or not _alive({target}):
            target = _newest_child(proc.pid)
            if target is not None:
                try:
                    os.kill(target, signal.SIGINT)
                except ProcessLookupError:
                    target = None
        time.sleep(0.2)
    return True


def _ignores_sigint(pid: int) -> bool:
    """What a non-interactive shell starts with ``&`` ignores SIGINT: that is how to tell it from the
    foreground command."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def _newest_child(pid: int) -> int | None:
    """The command a shell runs in the foreground: its most recently started child that Ctrl-C can reach
    (none between two commands of a loop)."""
    children = [
        (start, p) for p, (ppid, _, state, start) in _processes().items() if ppid == pid and state != "Z"
    ]
    return next((p for _, p in sorted(children, reverse=True) if not _ignores_sigint(p)), None)


# --- the tests -------------------------------------------------------------------------------------------

PROJECT_COMMAND = re.compile(r"(?<![\w-])(roomba-(?:provision|fleet|agent|sim))((?:[ \t]+[a-z][a-z0-9-]*)*)")
SHELL_FENCES = [f for path in doc_files() for f in fences(path) if f.lang in SHELL_LANGS]


class _Docs:
    """The workspaces of the doc files whose blocks this session has started running."""

    def __init__(self) -> None:
        self.spaces: dict[Path, Workspace] = {}

    def run(self, block: Block) -> tuple[Result, list[Result]]:
        """Run ``block`` after the earlier runnable blocks of its file (once each); the file's workspace
        is closed after its last runnable block."""
        path = block.fence.path
        space = self.spaces.get(path)
        if space is None:
            space = self.spaces[path] = Workspace.create(path)
            if not space.netns:
                _wait_for_free_ports()
        runnable = [b for b in _classified(path) if b.runnable]
        earlier: list[Result] = []
        for b in runnable:
            if b.id == block.id:
                break
            done = space.results.get(b.id)
            earlier.append(done if done is not None else space.run(b))
        result = space.run(block)
        if runnable and runnable[-1].id == block.id:
            self.close(path)
        return result, [r for r in earlier if not r.ok]

    def close(self, path: Path) -> None:
        space = self.spaces.pop(path, None)
        if space is not None:
            space.close()

    def close_all(self) -> None:
        for path in list(self.spaces):
            self.close(path)


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait_for_free_ports() -> None:
    """A doc's blocks start from a machine where the default ports are free (the previous doc's cloud
    has gone; another test's process would be named here)."""
    deadline = time.monotonic() + 60.0
    while (taken := [p for p in DOC_PORTS if _port_taken(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    if taken:
        who = (
            subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
            if shutil.which("ss")
            else ""
        )
        holders = [line for line in who.splitlines() if any(f":{p} " in line for p in taken)]
        pytest.fail(
            f"ports {taken} the docs use are taken by another process:\n" + "\n".join(holders), pytrace=False
        )


def _classified(path: Path) -> list[Block]:
    """The file's shell blocks as collected (docs edited while the tests run keep their collected ids)."""
    out = []
    for f in SHELL_FENCES:
        if f.path == path:
            try:
                out.append(classify(f))
            except MarkerError:
                out.append(Block(f, skip_reason="bad marker"))
    return out


@pytest.fixture(scope="session")
def docs() -> Iterator[_Docs]:
    runner = _Docs()
    yield runner
    runner.close_all()


@pytest.mark.slow
@pytest.mark.parametrize("fence", SHELL_FENCES, ids=[f.id for f in SHELL_FENCES])
def test_shell_block(fence: Fence, docs: _Docs) -> None:
    """The block runs as written (or, marked as needing what this machine lacks, is at least valid shell
    naming real commands)."""
    block = classify(fence)
    if not block.runnable:
        _check_not_run(block)
        return
    result, earlier_failures = docs.run(block)
    if not result.ok:
        before = "".join(
            f"\n(an earlier block of this file failed too: {r.block.id})" for r in earlier_failures
        )
        pytest.fail(result.report() + before, pytrace=False)


def _check_not_run(block: Block) -> None:
    syntax = subprocess.run(["bash", "-n"], input=block.script(), capture_output=True, text=True, timeout=10)
    assert syntax.returncode == 0, f"{block.id} ({block.skip_reason}) is not valid shell: {syntax.stderr}"
    for command, words in _project_commands(block.script()):
        argv = [str(REPO / ".venv" / "bin" / command), *words, "--help"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
        assert done.returncode == 0, (
            f"{block.id}: `{' '.join([command, *words])}` is not a command ({block.skip_reason}, so not run):\n"
            f"{done.stderr.strip()}"
        )


def _project_commands(script: str) -> list[tuple[str, list[str]]]:
    """The project's commands a block calls, with the sub-command words before the first option."""
    seen: list[tuple[str, list[str]]] = []
    for m in PROJECT_COMMAND.finditer(script.replace("\\\n", " ")):
        words = m[2].split()
        # `roomba-fleet robot add robot-001`: words after the sub-commands are arguments; --help ignores them.
        entry = (m[1], words[:3])
        if entry not in seen:
            seen.append(entry)
    return seen


def test_every_block_runs_or_says_why_not() -> None:
    """A new doc cannot rot quietly: every marker is one the harness understands and sits right before a
    shell fence, every fence names its language, and the harness finds every shell fence."""
    problems: list[str] = []
    for path in doc_files():
        rel = _rel(path)
        found = fences(path)
        for f in found:
            if not f.lang:
                problems.append(f"{f.id}: a fence without a language (say sh, text, json, ...)")
            if f.lang in SHELL_LANGS:
                try:
                    classify(f)
                except MarkerError as exc:
                    problems.append(str(exc))
        shell_lines = [f.line for f in found if f.lang in SHELL_LANGS]
        if shell_lines != raw_shell_fence_lines(path):
            problems.append(
                f"{rel}: shell fences at {raw_shell_fence_lines(path)}, harness found {shell_lines}"
            )
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if MARKER.match(line):
                nxt = next((s for s in lines[n:] if s.strip() and not MARKER.match(s)), "")
                m = FENCE.match(nxt)
                if not m or m["info"].strip().split(" ")[0] not in SHELL_LANGS:
                    problems.append(f"{rel}:{n}: a doc marker not followed by a shell fence")
    assert not problems, "\n".join(problems)


def _doc(tmp_path: Path, text: str) -> list[Fence]:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return fences(doc)


def test_harness_reports_the_failing_line_and_a_missing_venv(tmp_path: Path) -> None:
    """The trap the README had: the block fails, named at its line, when the venv is never activated."""
    first, second = [
        classify(f)
        for f in _doc(
            tmp_path,
            "# x\n\n```sh\ntrue\nroomba-fleet --version\n```\n\n```sh\n. .venv/bin/activate\nroomba-fleet --version\n```\n",
        )
    ]
    space = Workspace.create(first.fence.path)
    try:
        bad, good = space.run(first), space.run(second)
    finally:
        space.close()
        shutil.rmtree(space.root, ignore_errors=True)
    assert bad.returncode == 127 and "command not found" in bad.output
    assert bad.failed_line == 5
    assert good.ok, good.report()


def test_markers_that_mean_nothing_are_refused(tmp_path: Path) -> None:
    found = _doc(
        tmp_path,
        "<!-- doc: skip -->\n```sh\ntrue\n```\n<!-- doc: needs-awz -->\n```sh\ntrue\n```\n"
        '<!-- doc: needs-aws -->\n<!-- doc: skip twice -->\n```sh\ntrue\n```\n<!-- doc: after "(" -->\n```sh\ntrue\n```\n'
        "<!-- doc: needs-robot -->\n\n```bash\nroomba-agent probe --port /dev/ttyUSB0\n```\n",
    )
    errors = []
    for f in found[:4]:
        with pytest.raises(MarkerError) as exc:
            classify(f)
        errors.append(str(exc.value))
    assert "needs a reason" in errors[0] and "unknown marker" in errors[1]
    assert "more than one" in errors[2] and "not a regular expression" in errors[3]
    robot = classify(found[4])
    assert not robot.runnable and robot.skip_reason == NOT_RUN["needs-robot"]


def test_ctrl_c_stops_the_live_view_only_and_close_stops_the_rest(tmp_path: Path) -> None:
    """As in a terminal: Ctrl-C reaches the foreground command; what runs with & (and a child of it in a
    session of its own, like the local cloud's broker) lives until the doc is done."""
    live, later = [
        classify(f)
        for f in _doc(
            tmp_path,
            '<!-- doc: ctrl-c after "tick 2" -->\n```sh\n'
            "setsid sleep 300 & echo bg $!\n"
            "sleep 301 &\n"
            "for i in $(seq 1 1000); do echo tick $i; sleep 0.1; done\n```\n\n"
            '<!-- doc: after "tick 2" -->\n```sh\necho still here\n```\n',
        )
    ]
    space = Workspace.create(live.fence.path)
    try:
        first = space.run(live)
        assert first.ok, first.report()
        survivors = _descendants(set(space.groups))
        assert len(_alive(survivors)) >= 2  # both sleeps (plus the namespace holder, when there is one)
        second = space.run(later)
        assert second.ok and "still here" in second.output
    finally:
        space.close()
        shutil.rmtree(space.root, ignore_errors=True)
    assert not _alive(survivors)


SINGLE_QUOTED = re.compile(r"'([^']*)'")


def _desired_documents(script: str) -> list[tuple[str, str, dict[str, object]]]:
    """(schema name, text, desired) for each shadow document a block writes as a quoted JSON argument."""
    found: list[tuple[str, str, dict[str, object]]] = []
    for command in script.replace("\\\n", " ").splitlines():
        for text in SINGLE_QUOTED.findall(command):
            try:
                doc = json.loads(text.replace("{thing}", "robot-001"))  # the fleet tools fill in {thing}
            except ValueError:
                continue
            desired = doc.get("state", {}).get("desired") if isinstance(doc, dict) else None
            if isinstance(desired, dict):
                found.append(("config" if "--name config" in command else "desired", text, desired))
    return found


def test_desired_documents_in_the_docs_are_what_the_robot_accepts() -> None:
    """A doc's shadow update is checked against the schema the robot validates with: the cloud takes any
    document, so `{"desired":{"mode":"clean"}}` ran fine and the robot rejected it (`mode: unknown setting`)."""
    from agent.commands import validate_sections

    checked, problems = 0, []
    for fence in SHELL_FENCES:
        for schema, text, desired in _desired_documents(fence.text):
            checked += 1
            for reason in validate_sections(schema, desired).values():
                problems.append(f"{fence.id}: {text}: the robot would answer: {reason}")
    assert checked, "no shadow document found in the docs' shell blocks: has the extraction broken?"
    assert not problems, "\n".join(problems)
    assert validate_sections(
        "desired", _desired_documents("""x '{"state":{"desired":{"mode":"clean"}}}'""")[0][2]
    )


# The blocks issue 10 found failing as written: they stay run, not marked away.
MUST_RUN = [
    ("README.md", "roomba-fleet up --dir var/demo &"),
    ("README.md", "--token factory"),
    ("README.md", "> registration-config.json"),
    ("docs/provisioning.md", "--token roomba-ca"),
    ("docs/local-cloud.md", "roomba-fleet shadow update robot-001"),
    ("docs/sim.md", "python - <<"),
]


@pytest.mark.parametrize(("doc", "snippet"), MUST_RUN, ids=[f"{d}:{s}" for d, s in MUST_RUN])
def test_the_blocks_that_failed_are_run(doc: str, snippet: str) -> None:
    blocks = [classify(f) for f in SHELL_FENCES if f.path == REPO / doc and snippet in f.text]
    assert blocks, f"no shell block of {doc} has {snippet!r} any more"
    assert all(b.runnable for b in blocks), f"{doc}: the block with {snippet!r} must run, not be marked away"
