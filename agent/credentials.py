"""Refuse unsafe or wrong credentials before connecting.

A broker answers a bad certificate with a bare TLS alert or a hang-up, and the MQTT client then retries
forever; checking locally first turns that into one clear reason and the matching ``doctor`` hint.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True)
class CredentialProblem:
    code: str
    message: str
    hint: str


def _doctor_hint(fix: str) -> str:
    return f"{fix} (then: roomba-agent doctor --config FILE)"


def check_key_mode(path: str, mode: int, owner_uid: int, my_uid: int) -> list[CredentialProblem]:
    """Pure: the private key must be readable by nobody but its owner, who must be us (or root)."""
    problems = []
    if mode & 0o077:
        problems.append(
            CredentialProblem(
                "key_mode",
                f"private key {path} has mode {stat.S_IMODE(mode):04o}; group/other must have no access",
                _doctor_hint(f"chmod 600 {path}"),
            )
        )
    if my_uid not in (0, owner_uid):
        problems.append(
            CredentialProblem(
                "key_owner",
                f"private key {path} is owned by uid {owner_uid}, not by this user (uid {my_uid})",
                _doctor_hint(f"chown roomba-agent: {path}"),
            )
        )
    return problems


def check_certificate(
    cert: x509.Certificate, thing_name: str, now: dt.datetime, chain: Sequence[x509.Certificate] = ()
) -> list[CredentialProblem]:
    """Pure: validity window, CN == thing name, and (if given) issued by one of ``chain``."""
    from cryptography.x509.oid import NameOID

    problems = []
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        problems.append(
            CredentialProblem(
                "cert_not_yet_valid",
                f"device certificate is not valid before {not_before.isoformat()} (clock says {now.isoformat()})",
                _doctor_hint("check the clock (timedatectl; NTP) or re-issue the certificate"),
            )
        )
    if now > not_after:
        problems.append(
            CredentialProblem(
                "cert_expired",
                f"device certificate expired on {not_after.isoformat()}",
                _doctor_hint("issue a new certificate: roomba-provision / roomba-fleet robot add"),
            )
        )
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if thing_name not in cns:
        got = cns[0] if cns else "(none)"
        problems.append(
            CredentialProblem(
                "cert_cn_mismatch",
                f"device certificate CN is {got!r} but thing_name is {thing_name!r}; the broker would refuse it",
                _doctor_hint("use this robot's own certificate, or fix thing_name in the config"),
            )
        )
    if chain and not any(cert.issuer == ca.subject for ca in chain):
        problems.append(
            CredentialProblem(
                "cert_issuer_unknown",
                f"device certificate issuer {cert.issuer.rfc4514_string()} is not in the given CA file",
                _doctor_hint("pair the certificate with the CA that signed it"),
            )
        )
    return problems


def check_files(
    thing_name: str, cert_path: str, key_path: str | None, now: dt.datetime | None = None
) -> list[CredentialProblem]:
    """The I/O wrapper used by ``run`` (before connecting) and by ``doctor``."""
    from cryptography import x509

    now = now or dt.datetime.now(dt.UTC)
    problems: list[CredentialProblem] = []
    if key_path is not None:
        try:
            st = os.stat(key_path)
        except FileNotFoundError:
            problems.append(
                CredentialProblem(
                    "key_missing",
                    f"private key {key_path} does not exist",
                    _doctor_hint("point connection.key at the device key"),
                )
            )
        except PermissionError:
            problems.append(
                CredentialProblem(
                    "key_unreadable",
                    f"private key {key_path} is not accessible",
                    _doctor_hint(f"chown roomba-agent: {key_path}"),
                )
            )
        else:
            problems += check_key_mode(key_path, st.st_mode, st.st_uid, os.geteuid())
            if not os.access(key_path, os.R_OK):
                problems.append(
                    CredentialProblem(
                        "key_unreadable",
                        f"private key {key_path} is not readable",
                        _doctor_hint(f"chown roomba-agent: {key_path}"),
                    )
                )
    try:
        with open(cert_path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        problems.append(
            CredentialProblem(
                "cert_missing",
                f"device certificate {cert_path}: {exc.strerror}",
                _doctor_hint("point connection.cert at the device certificate"),
            )
        )
        return problems
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        problems.append(
            CredentialProblem(
                "cert_unparsable",
                f"device certificate {cert_path} is not a PEM certificate",
                _doctor_hint("point connection.cert at the PEM file device.crt"),
            )
        )
        return problems
    problems += check_certificate(cert, thing_name, now)
    return problems


def start_isolated_check(
    thing_name: str, cert_path: str, key_path: str | None
) -> Callable[[], list[CredentialProblem]]:
    """Run ``check_files`` in a forked child, so the long-running agent never maps ``cryptography`` (~8 MB
    RSS) and can start its robot link meanwhile; call the returned function to wait for the verdict.

    Must be called before any thread or CRT object exists: a forked child gets only the calling thread, so
    a lock another thread (a CRT event loop, the HAL reader) held at the fork stays locked in the child.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: check, report, leave without running the parent's cleanup
        code = 0
        try:
            os.close(read_fd)
            problems = check_files(thing_name, cert_path, key_path)
            with os.fdopen(write_fd, "w") as out:
                json.dump([asdict(p) for p in problems], out)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_fd)

    def collect() -> list[CredentialProblem]:
        with os.fdopen(read_fd) as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            return check_files(thing_name, cert_path, key_path)  # the isolated run failed: check here
        return [CredentialProblem(**p) for p in json.loads(data)]

    return collect


def check_files_isolated(thing_name: str, cert_path: str, key_path: str | None) -> list[CredentialProblem]:
    return start_isolated_check(thing_name, cert_path, key_path)()
