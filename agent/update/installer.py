"""What the update feature needs of the machine it runs on: the :class:`Installer` protocol.

The update feature (:mod:`agent.features.update`) decides; an installer does. A real robot's is
:class:`LauncherInstaller`: releases side by side under ``[update] root`` (``releases/<version>/venv``, the
``current`` and ``previous`` links, ``state/*.json``), read and written through :class:`agent.launcher.Layout`,
the same files the stable launcher (what systemd starts) switches from. A simulated fleet's installer
(``fleetsim.update.SimInstaller``) keeps the same :class:`agent.launcher.Slots` in memory.

Everything an installer is asked to install has been verified by the feature first (the manifest's signature
against the trusted release certificates, the bundle's SHA-256); :meth:`Installer.install` verifies again
while it unpacks (a bundle is never unpacked unverified) and removes what it left half-done when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

    from agent.launcher import Slots
    from provisioning.release import Manifest

PIP_TIMEOUT_S = 900.0
VENV_TIMEOUT_S = 300.0
SMOKE_TIMEOUT_S = 120.0
OUTPUT_TAIL = 600  # characters of a failing command's output kept in the reason


class InstallError(Exception):
    """The release could not be installed; the message says why (it becomes the FAILED job's reason).
    Nothing of the release is left behind and ``current``/``previous`` are untouched."""


class InstallRefused(InstallError):
    """The bundle cannot be installed on this robot as it is (REJECTED, not FAILED): e.g. its version is
    installed, in use, with other content."""


class Installer(Protocol):
    def running_version(self) -> str:
        """The version of the code running now."""
        ...

    def slots(self) -> Slots:
        """current, previous, a pending switch, a trial, the last update's result, installed releases."""
        ...

    def free_bytes(self) -> int:
        """Bytes free where releases and downloads go."""
        ...

    def download_dir(self) -> Path:
        """Where partial and complete bundles are kept (``downloads/``)."""
        ...

    async def install(self, bundle: Path, manifest: Manifest, trust: Sequence[x509.Certificate]) -> None:
        """Install the verified ``bundle`` as ``releases/<manifest.version>`` (not switched to). Idempotent:
        a release already installed completely is left as it is. Raises :class:`InstallError`."""
        ...

    def request_switch(self, to: str, bake_s: float, commit_timeout_s: float, job: dict[str, Any]) -> None:
        """Ask the launcher to switch to ``to`` at the next start (durable before it returns)."""
        ...

    def commit(self, version: str) -> None:
        """The trial of ``version`` is healthy: make it current for good (read back; raises if not)."""
        ...

    def fail_trial(self, reason: str) -> None:
        """The trial failed its self-test: ``reason`` is what the rolled-back version reports."""
        ...

    def restart(self, code: int) -> None:
        """Stop this agent with ``code`` (``agent.launcher.EXIT_SWITCH`` or ``EXIT_ROLLBACK``)."""
        ...


def _die_with_parent() -> Callable[[], None] | None:
    """For a child process: SIGKILL it when the agent dies (Linux ``PR_SET_PDEATHSIG``), so that a killed
    agent never leaves a pip half-way through a release that the next start removes and installs again."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


async def _run(argv: Sequence[str], timeout_s: float, what: str, cwd: Path) -> str:
    """Run ``argv`` in ``cwd``; its output, or InstallError naming ``what`` failed and the end of the
    output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        raise InstallError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise InstallError(f"{what}: timed out after {timeout_s:g} s") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        tail = " ".join(text.split())[-OUTPUT_TAIL:]
        raise InstallError(f"{what} failed (exit {proc.returncode}): {tail}")
    return text


class LauncherInstaller:
    """Releases under ``root`` as :class:`agent.launcher.Layout` keeps them; each release its own virtualenv,
    built at its final path and installed offline from the bundle's wheelhouse (``pip install --no-index
    --find-links``), then smoke-checked (``import agent`` must say the release's version).

    ``restart`` stops the agent with an exit code (``Agent.request_exit``); ``python`` builds the venvs
    (default: the interpreter running now, whose base Python the new venv gets)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        version: str,
        restart: Callable[[int], None],
        python: str | None = None,
    ) -> None:
        from agent.launcher import Layout

        self.root = Path(root)
        self.layout = Layout(self.root)
        self.version = version
        self._restart = restart
        self.python = python or sys.executable

    def running_version(self) -> str:
        return self.version

    def slots(self) -> Slots:
        return self.layout.read()

    def free_bytes(self) -> int:
        return int(self.layout.free_bytes())

    def download_dir(self) -> Path:
        return Path(self.layout.downloads_dir())

    async def install(self, bundle: Path, manifest: Manifest, trust: Sequence[x509.Certificate]) -> None:
        version = manifest.version
        if self.layout.is_installed(version):
            if not await asyncio.to_thread(self._other_content, bundle, version):
                return  # this very release (a restart after the install): reuse it
            if version in self.layout.read().protected():
                raise InstallRefused(
                    f"version {version} is already installed with different content: "
                    "publish the fix under a new version"
                )
            # another build of the same version, not in use: replace it
            await asyncio.to_thread(self.layout.remove_release, version)
        try:
            await self._install(bundle, manifest, trust)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # a protected version is never removed (nor installed)
                await asyncio.to_thread(self.layout.remove_release, version)
            if isinstance(exc, InstallError | asyncio.CancelledError):
                raise
            if isinstance(exc, OSError):
                raise InstallError(f"installing {version} failed: {exc}") from exc
            if type(exc).__name__ == "ReleaseError":
                raise InstallError(f"the bundle no longer verifies: {exc}") from exc
            raise

    def _other_content(self, bundle: Path, version: str) -> bool:
        """The installed ``releases/<version>`` is another build than ``bundle``: its ``manifest.json`` is a
        release manifest whose bytes differ from the bundle's. A release installed without one (an image's
        or a test root's, whose manifest.json is no signed manifest) is taken as the same."""
        from provisioning.release import BundleReader, ReleaseError, parse_manifest

        try:
            installed = (Path(self.layout.release_dir(version)) / "manifest.json").read_bytes()
            parse_manifest(installed)
        except (OSError, ReleaseError):
            return False
        with BundleReader(bundle) as reader:
            return installed != reader.manifest_bytes

    async def _install(self, bundle: Path, manifest: Manifest, trust: Sequence[x509.Certificate]) -> None:
        from provisioning.release import BundleReader

        version = manifest.version
        rdir = Path(self.layout.release_dir(version))
        if rdir.exists():  # an earlier install was cut short: start again from nothing
            await asyncio.to_thread(self.layout.remove_release, version)
        rdir.mkdir(parents=True)

        def unpack() -> None:
            # the signature first, then every member's hash, again; then manifest.json, manifest.sig and
            # wheels/ into the release directory (hashed again while written, fsynced)
            with BundleReader(bundle) as reader:
                reader.verify(list(trust))
                reader.extract(rdir)

        await asyncio.to_thread(unpack)
        venv = rdir / "venv"
        await _run([self.python, "-m", "venv", str(venv)], VENV_TIMEOUT_S, "creating the virtualenv", rdir)
        py = str(venv / "bin" / "python")
        # -I (isolated): neither the working directory nor PYTHON* variables leak into the release
        await _run(
            [
                py,
                "-I",
                "-m",
                "pip",
                "install",
                "--no-index",
                "--no-cache-dir",
                "--find-links",
                str(rdir / "wheels"),
                manifest.requires,
            ],
            PIP_TIMEOUT_S,
            "pip install from the bundle's wheelhouse",
            rdir,
        )
        said = (
            await _run(
                [py, "-I", "-c", "import agent; print(agent.__version__)"],
                SMOKE_TIMEOUT_S,
                "the smoke check",
                rdir,
            )
        ).strip()
        if said != version:
            raise InstallError(f"the smoke check found agent version {said!r} in the release, not {version}")

        await asyncio.to_thread(self.layout.mark_installed, version)

    def request_switch(self, to: str, bake_s: float, commit_timeout_s: float, job: dict[str, Any]) -> None:
        self.layout.request_switch(to, bake_s=bake_s, commit_timeout_s=commit_timeout_s, job=job)

    def commit(self, version: str) -> None:
        self.layout.commit(version)  # read back: raises unless version is current with no trial left
        with contextlib.suppress(Exception):  # disk hygiene only: never fails a commit
            self.layout.prune(keep=3)

    def fail_trial(self, reason: str) -> None:
        self.layout.fail_trial(reason)

    def restart(self, code: int) -> None:
        self._restart(code)
