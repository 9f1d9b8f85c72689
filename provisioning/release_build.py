"""Building a release bundle from a source tree: the agent's wheel, its wheelhouse, the signed bundle.

:func:`build_release` copies the tree (without virtualenvs, VCS, caches, tests), sets ``base.__version__`` in
the copy to the release's version, has pip build the agent's wheel with the running interpreter, adds the
wheel of every runtime dependency for this Python (a wheelhouse, so the robot installs offline; pinned to
what this environment runs and cached by dependency list, pins, ABI and platform, so only the first build
downloads), and writes the signed bundle (:func:`provisioning.release.build_bundle`). :class:`ReleaseKit`
is the same for tests and benches: one key, one cache, memoised builds. ``roomba-fleet release build`` is
the command line on top.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from base.logs import get_logger
from provisioning import release

VERSION_FILE = Path("base/__init__.py")
_VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.M)
# what a build never copies: virtualenvs, VCS, caches and earlier build outputs
SKIP = (
    ".venv",
    "venv",
    ".git",
    "dist",
    "build",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "tests",
    "bench",
    ".ci",
)
PIP_TIMEOUT_S = 900

log = get_logger("provisioning.release_build")


class BuildError(Exception):
    """A release build step failed; the message says which and why."""


def default_source() -> Path:
    """The checkout this code runs from (the parent of the ``provisioning`` package), when it is a source tree."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise BuildError(
            f"{root} is not a source tree (no pyproject.toml): this roomba-fleet is an installed copy; "
            "pass --source DIR (a checkout of roomba-agent)"
        )
    return root


def tree_version(source: Path) -> str:
    try:
        text = (source / VERSION_FILE).read_text()
    except OSError as exc:
        raise BuildError(f"{source / VERSION_FILE}: {exc.strerror}: not a roomba-agent source tree") from None
    match = _VERSION_LINE.search(text)
    if not match:
        raise BuildError(f'{source / VERSION_FILE} has no line __version__ = "..."')
    return match.group(1)


def copy_source(source: Path, dest: Path) -> Path:
    """A copy of the source tree (without virtualenvs, VCS, caches, tests, earlier builds) at ``dest``."""
    if not (source / "pyproject.toml").is_file():
        raise BuildError(f"{source} is not a source tree (no pyproject.toml)")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*SKIP), symlinks=True)
    return dest


def set_version(tree: Path, version: str) -> None:
    path = tree / VERSION_FILE
    text = path.read_text()
    new, count = _VERSION_LINE.subn(f'__version__ = "{version}"', text)
    if count != 1:
        raise BuildError(f'{path} must have exactly one line __version__ = "..."')
    path.write_text(new)


def runtime_dependencies(tree: Path) -> list[str]:
    """``[project].dependencies`` of the tree's pyproject.toml."""
    try:
        project = tomllib.loads((tree / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{tree / 'pyproject.toml'}: cannot read [project] ({exc})") from None
    deps = project.get("dependencies", [])
    for dep in deps:
        try:
            Requirement(dep)
        except InvalidRequirement as exc:
            raise BuildError(f"{tree / 'pyproject.toml'}: bad dependency {dep!r}: {exc}") from None
    return sorted(deps)


def installed_pins(exclude: str = release.NAME) -> list[str]:
    """``name==version`` of every distribution in this environment: the wheelhouse gets what was tested."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.name
        if name and canonicalize_name(name) != canonicalize_name(exclude):
            pins[canonicalize_name(name)] = f"{canonicalize_name(name)}=={dist.version}"
    return sorted(pins.values())


def wheelhouse_key(deps: Sequence[str], pins: Sequence[str]) -> str:
    """What the wheelhouse depends on: the dependency list, the pins, this Python's ABI and platform."""
    doc = {
        "deps": sorted(deps),
        "pins": sorted(pins),
        "abi": release.current_abi(),
        "platform": sysconfig.get_platform(),
        "implementation": sys.implementation.name,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "roomba-agent" / "wheelhouse"


def _pip(args: Sequence[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: pip did not finish within {PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() and "subprocess-exited" not in line]
        raise BuildError(f"{what}: pip exited {done.returncode}: {' | '.join((errors or lines)[-3:])}")


def build_isolation_needed(tree: Path) -> bool:
    """Whether this environment lacks what the tree's ``[build-system] requires`` (then pip isolates the
    build and fetches its backend; else the build uses what is installed, which is faster and offline)."""
    try:
        requires = (
            tomllib.loads((tree / "pyproject.toml").read_text()).get("build-system", {}).get("requires", [])
        )
    except (OSError, tomllib.TOMLDecodeError):
        return True
    for text in requires:
        try:
            req = Requirement(text)
            installed = importlib.metadata.version(req.name)
        except (InvalidRequirement, importlib.metadata.PackageNotFoundError):
            return True
        if not req.specifier.contains(installed, prereleases=True):
            return True
    return False


def wheelhouse(tree: Path, cache: Path) -> list[Path]:
    """The wheels of every runtime dependency (transitively) for this Python, from the cache or the registry."""
    deps = runtime_dependencies(tree)
    if not deps:
        return []
    pins = installed_pins()
    target = cache / wheelhouse_key(deps, pins)
    if not (target / ".complete").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            constraints = work / "constraints.txt"
            constraints.write_text("\n".join(pins) + "\n")
            started = time.monotonic()
            _pip(
                ["wheel", "-q", "--prefer-binary", "-c", str(constraints), "-w", str(work / "wheels"), *deps],
                "the dependency wheelhouse",
            )
            (work / "wheels" / ".complete").write_text(json.dumps({"deps": deps}) + "\n")
            with contextlib.suppress(OSError):  # another build got there first: use theirs
                os.rename(work / "wheels", target)
            log.info(
                "release.wheelhouse.built", dir=str(target), seconds=round(time.monotonic() - started, 1)
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    wheels = sorted(p for p in target.glob("*.whl") if not p.name.startswith("roomba_agent-"))
    if not wheels:
        raise BuildError(f"the wheelhouse {target} is empty")
    return wheels


@dataclass(frozen=True)
class Built:
    bundle: Path
    version: str
    min_previous: str
    sha256: str
    size: int
    wheels: int
    signer: str

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "version": self.version,
            "min_previous": self.min_previous,
            "sha256": self.sha256,
            "size": self.size,
            "wheels": self.wheels,
            "signer": self.signer,
        }


def check_version(text: str, option: str) -> str:
    try:
        Version(text)
    except InvalidVersion:
        raise BuildError(f"{option} {text!r} is not a PEP 440 version (e.g. 0.2.0)") from None
    return text


def build_release(
    *,
    signer: release.Signer,
    out_dir: Path,
    version: str | None = None,
    min_previous: str | None = None,
    source: Path | None = None,
    deps: bool = True,
    cache: Path | None = None,
) -> Built:
    """Build, sign and write ``out_dir/roomba-agent-<version>.bundle`` from ``source`` (default: this checkout)."""
    tree = Path(source) if source is not None else default_source()
    own = tree_version(tree)
    version = check_version(version or own, "--version")
    min_previous = check_version(min_previous or own, "--min-previous")
    with tempfile.TemporaryDirectory(prefix="roomba-release-") as tmp:
        work = Path(tmp)
        src = copy_source(tree, work / "src")
        set_version(src, version)
        isolation = [] if build_isolation_needed(src) else ["--no-build-isolation"]
        _pip(
            ["wheel", "-q", "--no-deps", *isolation, "-w", str(work / "wheel"), str(src)], "the agent's wheel"
        )
        agent = sorted((work / "wheel").glob("roomba_agent-*.whl"))
        if len(agent) != 1:
            raise BuildError(f"pip built {len(agent)} roomba_agent wheels, expected one")
        wheels = [*agent, *(wheelhouse(src, cache or default_cache()) if deps else [])]
        bundle = release.build_bundle(
            Path(out_dir) / release.bundle_name(version),
            wheels,
            version=version,
            min_previous=min_previous,
            signer=signer,
            platform=release.current_platform(),  # the dependency wheels are this machine's
        )
    return Built(
        bundle=bundle.resolve(),
        version=version,
        min_previous=min_previous,
        sha256=release.sha256_file(bundle),
        size=bundle.stat().st_size,
        wheels=len(wheels),
        signer=signer.signer_id,
    )


class ReleaseKit:
    """Signed bundles for tests and benches: one signing key, one wheelhouse cache, builds memoised.

    ``build(version)`` of this checkout is built once per kit; a ``source=`` tree (from :meth:`source_copy`,
    patched to make a bad build) is built each time. The dependency wheelhouse is built at most once per
    cache directory (``$ROOMBA_WHEELHOUSE_CACHE``, else ``root/wheelhouse``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.signer_dir = self.root / "signer"
        if not (self.signer_dir / release.SIGNING_CERT).exists():
            release.keygen(self.signer_dir, name="roomba test release signing")
        self.trust_pem = self.signer_dir / release.SIGNING_CERT
        self.cache = Path(os.environ.get("ROOMBA_WHEELHOUSE_CACHE") or self.root / "wheelhouse")
        self._built: dict[tuple[str, bool, str | None], Built] = {}
        self._count = 0

    def built(
        self, version: str, *, source: Path | None = None, deps: bool = True, min_previous: str | None = None
    ) -> Built:
        """Like :meth:`build`, with the sha256, size and signer of the bundle."""
        key = (version, deps, min_previous)
        if source is None and key in self._built and self._built[key].bundle.is_file():
            return self._built[key]
        self._count += 1
        with release.load_signer(self.signer_dir) as signer:
            result = build_release(
                signer=signer,
                out_dir=self.root / "bundles" / str(self._count),
                version=version,
                min_previous=min_previous,
                source=source,
                deps=deps,
                cache=self.cache,
            )
        if source is None:
            self._built[key] = result
        return result

    def build(
        self, version: str, *, source: Path | None = None, deps: bool = True, min_previous: str | None = None
    ) -> Path:
        """A signed ``roomba-agent-<version>.bundle`` (``deps=False``: only the agent's wheel)."""
        return self.built(version, source=source, deps=deps, min_previous=min_previous).bundle

    def source_copy(self, dest: Path) -> Path:
        """A copy of this checkout's source under ``dest`` that a test may patch and pass as ``source=``."""
        return copy_source(default_source(), Path(dest) / "roomba-agent-src")
