"""A command in a real pseudo-terminal and the screen it draws: how the live views are tested.

:class:`PtyProcess` runs a command with its stdout on a pty of a given size (its stderr apart, so the screen
holds only the view) and feeds everything it writes to a :class:`Screen`, a small terminal emulator that
understands what ``rich`` and friends send (cursor moves, erasing, scrolling; colours ignored). A test then
asserts on what a person would see: the visible lines, and how many lines scrolled off the top (a view that
never outgrows the terminal scrolls none).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Mapping, Sequence

from base.testing import wait_until

_CSI = re.compile(r"\x1b\[([?>=]?)([0-9;]*)([ -/]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Screen:
    """The visible state of a ``rows`` x ``cols`` terminal after the bytes fed to it."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.lines = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.scrolled = 0
        """Lines that scrolled off the top since the start."""
        self._pending = ""

    def feed(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":
                rest = text[i:]
                m = _CSI.match(rest) or _OSC.match(rest)
                if m is None:
                    if len(rest) < 32 and ("[" in rest[:2] or "]" in rest[:2] or len(rest) == 1):
                        self._pending = rest  # an escape split across reads
                        return
                    i += 2  # ESC + one character (e.g. ESC 7, ESC =): nothing we need
                    continue
                if m.re is _CSI:
                    self._csi(m.group(1), m.group(2), m.group(4))
                i += m.end()
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self._line_feed()
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch >= " ":
                if self.col >= self.cols:
                    self.col = 0
                    self._line_feed()
                self.lines[self.row][self.col] = ch
                self.col += 1
            i += 1

    def _line_feed(self) -> None:
        if self.row == self.rows - 1:
            self.lines.pop(0)
            self.lines.append([" "] * self.cols)
            self.scrolled += 1
        else:
            self.row += 1

    def _csi(self, private: str, params: str, final: str) -> None:
        nums = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = nums[0] if nums and nums[0] else 1
        if private:
            if final in "hl" and nums and nums[0] in (47, 1047, 1049):
                self.clear()  # the alternate screen: a blank page either way
            return
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row = min(self.rows - 1, self.row + n)
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = min(self.cols - 1, n - 1)
        elif final in "Hf":
            self.row = min(self.rows - 1, (nums[0] if nums and nums[0] else 1) - 1)
            self.col = min(self.cols - 1, (nums[1] if len(nums) > 1 and nums[1] else 1) - 1)
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode in (2, 3):
                self.lines = [[" "] * self.cols for _ in range(self.rows)]
            elif mode == 0:
                self.lines[self.row][self.col :] = [" "] * (self.cols - self.col)
                for r in range(self.row + 1, self.rows):
                    self.lines[r] = [" "] * self.cols
        elif final == "K":
            mode = nums[0] if nums else 0
            line = self.lines[self.row]
            if mode == 0:
                line[self.col :] = [" "] * (self.cols - self.col)
            elif mode == 1:
                line[: self.col + 1] = [" "] * (self.col + 1)
            else:
                self.lines[self.row] = [" "] * self.cols

    def clear(self) -> None:
        self.lines = [[" "] * self.cols for _ in range(self.rows)]
        self.row = self.col = 0

    def text(self) -> list[str]:
        """The visible lines, trailing blanks stripped."""
        return ["".join(line).rstrip() for line in self.lines]

    def __str__(self) -> str:
        return "\n".join(self.text())


class PtyProcess:
    """``argv`` with stdout (and stdin) on a ``rows`` x ``cols`` pty; its stderr is collected apart."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        rows: int = 24,
        cols: int = 100,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        base = {
            k: v for k, v in (env if env is not None else os.environ).items() if k not in ("COLUMNS", "LINES")
        }
        base.setdefault("TERM", "xterm-256color")
        self.screen = Screen(rows, cols)
        self.raw = bytearray()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=base,
            cwd=cwd,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self.stderr = bytearray()
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, name="pty-stderr", daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self.screen.feed(data.decode(errors="replace"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.stderr += chunk

    def lines(self) -> list[str]:
        with self._lock:
            return self.screen.text()

    def scrolled(self) -> int:
        with self._lock:
            return self.screen.scrolled

    def wait_screen(self, predicate: Callable[[list[str]], object], timeout: float, what: str) -> list[str]:
        """The visible lines once ``predicate(lines)`` holds; AssertionError (with the screen) otherwise."""
        box: list[list[str]] = [[]]

        def check() -> bool:
            if self.proc.poll() is not None and not predicate(self.lines()):
                raise AssertionError(
                    f"the command ended (rc {self.proc.returncode}) before {what}; stderr: "
                    f"{self.stderr.decode(errors='replace')[-2000:]}\nscreen:\n" + "\n".join(self.lines())
                )
            box[0] = self.lines()
            return bool(predicate(box[0]))

        try:
            wait_until(check, timeout, what, interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nscreen:\n" + "\n".join(self.lines())) from None
        return box[0]

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C (SIGINT), then the exit code (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.interrupt()
        self._reader.join(timeout=5)
        try:
            os.close(self._master)
        except OSError:
            pass
        if self.proc.stderr is not None:
            self._err_reader.join(timeout=5)
            self.proc.stderr.close()

    def __enter__(self) -> PtyProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
