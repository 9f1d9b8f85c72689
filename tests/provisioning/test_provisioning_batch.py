"""Factory batches: resumable after SIGINT and SIGKILL, no duplicates, keys never replaced, atomic output."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.batch import MANIFEST, BatchStopped, plan_count, plan_serials, run_batch
from provisioning.ca import CertificateAuthority
from provisioning.errors import BatchLocked, InvalidInput

CLI = str(Path(sys.executable).parent / "roomba-provision")


def manifest_lines(out: Path) -> list[dict[str, str]]:
    path = out / MANIFEST
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.endswith(b"}")]


def key_digests(out: Path) -> dict[str, str]:
    return {
        d.name: hashlib.sha256((d / "device.key").read_bytes()).hexdigest()
        for d in out.iterdir()
        if d.is_dir() and not d.name.startswith(".")
    }


def interrupt_when(proc: subprocess.Popen[bytes], out: Path, lines: int, sig: int) -> None:
    deadline = time.monotonic() + 60
    while len(manifest_lines(out)) < lines:
        assert proc.poll() is None, "batch finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=30)


def assert_complete(out: Path, things: list[str], ca: CertificateAuthority) -> None:
    entries = manifest_lines(out)
    assert sorted(e["thing"] for e in entries) == sorted(things)
    assert (out / MANIFEST).read_bytes().count(b"\n") == len(things)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    for entry in entries:
        d = out / entry["thing"]
        assert sorted(p.name for p in d.iterdir()) == [
            "device.crt",
            "device.csr",
            "device.key",
            "root-ca.crt",
        ]
        assert oct(d.stat().st_mode & 0o777) == "0o700"
        assert oct((d / "device.key").stat().st_mode & 0o777) == "0o600"
        cert = x509.load_pem_x509_certificate((d / "device.crt").read_bytes())
        assert (
            entry["certificate_id"]
            == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        )
        cert.verify_directly_issued_by(ca.certificate)


def default_sigint() -> None:
    """Undo an inherited SIG_IGN (background jobs of a non-interactive shell) so Ctrl-C is delivered."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_batch_resumes_after_sigint_sigterm_and_sigkill(
    tmp_path: Path, file_ca: CertificateAuthority, openssl
) -> None:
    """Interrupted three ways, a rerun completes the batch: no duplicate, no replaced key, exits 130/143."""
    out = tmp_path / "batch"
    cmd = [CLI, "batch", "--ca", str(file_ca.dir), "--count", "240", "--prefix", "robot-", "--out", str(out)]
    digests: dict[str, str] = {}
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint
        )
        interrupt_when(proc, out, len(digests) + 25, sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        if sig != signal.SIGKILL:
            assert err.strip().endswith(b"interrupted; rerun the same command to resume")
        now = key_digests(out)
        assert all(now[t] == digest for t, digest in digests.items())
        digests = now

    final = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["total"] == 240 and summary["skipped"] + summary["recovered"] == len(digests)
    assert final.stderr == ""
    things = [f"robot-{i:03d}" for i in range(1, 241)]
    assert_complete(out, things, file_ca)
    assert all(key_digests(out)[t] == digest for t, digest in digests.items())
    assert (
        openssl("verify", "-CAfile", str(file_ca.cert_path), str(out / "robot-240" / "device.crt")).returncode
        == 0
    )


def test_batch_recovers_identity_missing_from_torn_manifest(
    tmp_path: Path, file_ca: CertificateAuthority
) -> None:
    """A manifest torn mid-line and a stale temp dir: written identities are recovered, not re-keyed."""
    out = tmp_path / "b"
    plan = plan_count(5, "unit-")
    first = run_batch(file_ca, out, plan)
    assert (first.created, first.skipped, first.recovered) == (5, 0, 0)
    keys = key_digests(out)
    lines = (out / MANIFEST).read_bytes().splitlines(keepends=True)
    (out / MANIFEST).write_bytes(b"".join(lines[:3]) + lines[3][:20])
    (out / ".tmp-unit-006.abcd").mkdir()
    again = run_batch(file_ca, out, plan_count(6, "unit-"))
    assert (again.created, again.skipped, again.recovered) == (1, 3, 2)
    assert_complete(out, [f"unit-{i:03d}" for i in range(1, 7)], file_ca)
    assert all(key_digests(out)[t] == d for t, d in keys.items())


def test_batch_from_serials_file(tmp_path: Path, file_ca: CertificateAuthority, run_cli) -> None:
    """A serials file (comments, blank lines) gives one identity per serial, in order, in the manifest."""
    serials = tmp_path / "serials.txt"
    serials.write_text("# line 1 is a comment\nSN1000\n\nSN1001  # trailing comment\nSN1002\n")
    result = run_cli(
        "batch",
        "--ca",
        str(file_ca.dir),
        "--serials",
        str(serials),
        "--prefix",
        "rb-",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stderr
    entries = manifest_lines(tmp_path / "o")
    assert [(e["thing"], e["serial"]) for e in entries] == [
        ("rb-SN1000", "SN1000"),
        ("rb-SN1001", "SN1001"),
        ("rb-SN1002", "SN1002"),
    ]
    assert set(entries[0]) == {
        "thing",
        "serial",
        "certificate_id",
        "fingerprint_sha256",
        "not_before",
        "not_after",
    }
    assert result.stderr == ""


def test_serials_file_errors() -> None:
    """Duplicate serials, a bad character, an empty file: one-line errors naming the line; counts zero-pad."""
    with pytest.raises(InvalidInput, match="serials:3: serial 'A1' already listed on line 1"):
        plan_serials(["A1", "B2", "A1"], "r-")
    with pytest.raises(InvalidInput, match=r"serials:2: .*'/'"):
        plan_serials(["A1", "B/2"], "r-")
    with pytest.raises(InvalidInput, match="no serial numbers"):
        plan_serials(["", "# nothing"], "r-")
    with pytest.raises(InvalidInput, match="at least 1"):
        plan_count(0, "r-")
    assert [p.thing for p in plan_count(3, "x-")] == ["x-001", "x-002", "x-003"]
    assert plan_count(1000, "x-")[-1].thing == "x-1000" and plan_count(1000, "x-")[0].thing == "x-0001"


def test_batch_refuses_concurrent_run(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """A second batch on the same directory fails at once (lock held) and writes nothing."""
    out = tmp_path / "locked"
    out.mkdir()
    fd = os.open(out / ".batch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BatchLocked, match="another batch"):
            run_batch(file_ca, out, plan_count(2, "x-"))
    finally:
        os.close(fd)
    assert not (out / "x-001").exists()


def test_batch_progress_only_on_a_terminal(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """Progress goes to stderr only on a terminal; stdout stays one JSON summary for scripts."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        """Read while the child runs: Linux may drop what is left in a pty once its last writer exits."""
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [CLI, "batch", "--ca", str(file_ca.dir), "--count", "20", "--out", str(tmp_path / "tty")],
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    out, _ = proc.communicate(timeout=60)
    reader.join(30)
    os.close(master)
    assert proc.returncode == 0
    tty_text = b"".join(chunks).decode()
    assert "20/20 (100%)" in tty_text
    assert json.loads(out)["created"] == 20


def test_identity_directory_is_never_half_written(
    tmp_path: Path, file_ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the third file is written leaves nothing behind: no identity, no key, no temp."""
    from provisioning import fsio
    from provisioning.device import create_identity

    real = fsio._write_new
    calls = {"n": 0}

    def failing(path: Path, data: bytes, mode: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, data, mode)

    monkeypatch.setattr(fsio, "_write_new", failing)
    with pytest.raises(OSError, match="No space left"):
        create_identity(file_ca, "half-1", tmp_path / "out" / "half-1")
    assert calls["n"] == 3
    assert not (tmp_path / "out" / "half-1").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []
    monkeypatch.setattr(fsio, "_write_new", real)
    result = run_batch(file_ca, tmp_path / "out", plan_count(1, "half-"))
    assert (result.created, result.recovered) == (1, 0)
    assert_complete(tmp_path / "out", ["half-001"], file_ca)


def test_manifest_append_without_newline_is_repaired(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """A manifest cut just before its last newline is repaired, not counted as a torn entry."""
    out = tmp_path / "b"
    run_batch(file_ca, out, plan_count(2, "nl-"))
    data = (out / MANIFEST).read_bytes()
    (out / MANIFEST).write_bytes(data[:-1])  # torn exactly before the last newline
    again = run_batch(file_ca, out, plan_count(3, "nl-"))
    assert (again.created, again.skipped, again.recovered) == (1, 2, 0)
    assert_complete(out, ["nl-001", "nl-002", "nl-003"], file_ca)


def test_resume_refuses_a_foreign_identity_directory(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """A planned directory holding another thing's certificate stops the batch instead of being adopted."""
    from provisioning.device import create_identity

    out = tmp_path / "b"
    create_identity(file_ca, "someone-else", out / "fx-002")
    with pytest.raises(InvalidInput, match="holds a certificate for 'someone-else', not 'fx-002'"):
        run_batch(file_ca, out, plan_count(3, "fx-"))
    assert [e["thing"] for e in manifest_lines(out)] == ["fx-001"]


def test_batch_root_ca_must_be_a_certificate(tmp_path: Path, file_ca: CertificateAuthority, run_cli) -> None:
    """A junk or missing ``--root-ca`` is a one-line error before any identity is written."""
    junk = tmp_path / "root.pem"
    junk.write_text("not a certificate\n")
    args = ["batch", "--ca", str(file_ca.dir), "--count", "1", "--out", str(tmp_path / "o")]
    result = run_cli(*args, "--root-ca", str(junk))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"roomba-provision: error: {junk} is not a PEM or DER X.509 certificate"
    ]
    result = run_cli(*args, "--root-ca", str(tmp_path / "missing.pem"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "o" / "robot-001").exists()
    result = run_cli(*args, "--root-ca", str(file_ca.cert_path))
    assert result.returncode == 0, result.stderr


def test_batch_stops_only_between_identities_and_resumes(
    tmp_path: Path, file_ca: CertificateAuthority
) -> None:
    """A stop request is honoured between identities only; the rerun creates just the rest."""
    out = tmp_path / "batch"
    plan = plan_count(8, "robot-")
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(BatchStopped, match="after 3 of 8"):
        run_batch(file_ca, out, plan, should_stop=stop_after_three)
    first = [t.thing for t in plan[:3]]
    assert [e["thing"] for e in manifest_lines(out)] == first
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("robot-")) == first
    result = run_batch(file_ca, out, plan)
    assert (result.created, result.skipped) == (5, 3)
    assert_complete(out, [t.thing for t in plan], file_ca)
