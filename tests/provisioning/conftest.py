"""Provisioning test fixtures: a key-file CA, a private SoftHSM store used from child processes, CLI runners."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from provisioning.ca import CertificateAuthority, init_ca


def run_openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args],
        input=input.decode() if input else None,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="session")
def file_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca")


@pytest.fixture
def openssl() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_openssl


SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_PIN = "Pin-qZx7-wK3"  # distinctive: a short numeric PIN can occur by chance in hex ids or paths
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SoftHsm:
    """A private SoftHSM2 store (never the system one), used only by child processes.

    SoftHSM reads ``SOFTHSM2_CONF`` once per process at C_Initialize, and other areas' tests may load the
    module into the pytest process with their own store; so every PKCS#11 step here runs in a child
    process whose environment points at this store, and the pytest process never loads the module.
    """

    module: str
    pin: str
    conf: Path
    env: dict[str, str]

    def init_token(self, label: str) -> str:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                self.pin,
                "--so-pin",
                "87654321",
            ],
            check=True,
            capture_output=True,
            timeout=30,
            env=self.env,
        )
        return label

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``roomba-provision`` in a child process using this store."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "roomba-provision"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**self.env, **(env or {})},
        )

    def cli_runs(self, *runs: tuple[list[str], dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
        """Several ``roomba-provision`` runs (argv, extra env) in one child process, one after the other.

        Same results as ``cli`` (exit code, stdout, stderr per run) for a fraction of the start-up cost;
        ``cli`` stays the way to test the console script itself.
        """
        results = self.python(CLI_RUNS, runs=[[argv, env] for argv, env in runs])
        return [
            subprocess.CompletedProcess(argv, code, out, err)
            for (argv, _), (code, out, err) in zip(runs, results, strict=True)
        ]

    def python(self, code: str, **params: object) -> Any:
        """Run ``code`` in a child Python with ``params`` as JSON on stdin; it prints one JSON result."""
        prelude = "import json, sys\nparams = json.loads(sys.stdin.read())\n"
        result = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            input=json.dumps(params, default=str),
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])


CLI_RUNS = """
import contextlib, io, os
import structlog
from provisioning.cli import main

results = []
for argv, env in params["runs"]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    structlog.reset_defaults()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "ROOMBA_LOG_LEVEL": "warning"}
    env.pop("ROOMBA_PKCS11_PIN", None)
    return SoftHsm(SOFTHSM_MODULE, TOKEN_PIN, conf, env)


_token_counter = itertools.count()


@pytest.fixture
def token(softhsm: SoftHsm) -> str:
    """A fresh, initialised token for this test."""
    return softhsm.init_token(f"roomba-test-{os.getpid()}-{next(_token_counter)}")


@pytest.fixture
def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``provisioning.cli.main`` in this process (fast); same result shape as a subprocess run."""
    from provisioning.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
            finally:
                structlog.reset_defaults()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return run
