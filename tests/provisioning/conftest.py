"""Fixtures for provisioning tests: a key-file CA per session and helpers to run openssl."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator

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
TOKEN_PIN = "4321"
TOKEN_LABELS = [f"roomba-test-{i}" for i in range(8)]


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private SoftHSM2 store with a pool of tokens, made before python-pkcs11 loads the module.

    SoftHSM reads ``SOFTHSM2_CONF`` once per process, so the whole session shares this store; never the
    system token directory.
    """
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in TOKEN_LABELS:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                TOKEN_PIN,
                "--so-pin",
                "87654321",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    yield {"module": SOFTHSM_MODULE, "pin": TOKEN_PIN, "conf": str(conf)}
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


_token_counter = itertools.count()


@pytest.fixture
def token(softhsm: dict[str, str]) -> str:
    """A fresh token label from the session pool (each test gets its own)."""
    return TOKEN_LABELS[next(_token_counter) % len(TOKEN_LABELS)]


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
