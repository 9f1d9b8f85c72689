"""``roomba-provision``: the CA, robot keys, station signing, factory batches, checks and AWS artifacts.

Results go to stdout; each error is one line on stderr and a non-zero exit. PINs come from
``$ROOMBA_PKCS11_PIN`` or ``--pin-file``, never from the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from base import logs
from base.cli import Parser, add_completion, add_json, bash_completion, entry
from provisioning import aws, certs, hsm, release
from provisioning.batch import BatchStopped, PlannedThing, Progress, plan_count, plan_serials, run_batch
from provisioning.ca import CA_CERT, init_ca, issue_server_cert, load_ca, read_certificate
from provisioning.device import (
    DEVICE_CERT,
    DEVICE_KEY,
    DEVICE_PKCS11,
    Identity,
    create_identity,
    install_certificate,
    keygen,
)
from provisioning.errors import InvalidInput, OutputExists, ProvisioningError
from provisioning.fsio import atomic_write
from provisioning.verify import check_identity

PROG = "roomba-provision"
MAX_DAYS = certs.MAX_DAYS

# every command: 0 done, 1 refused (the one error line says why and what to do), 2 usage error
REFUSED = {1: "refused or failed: the error line on stderr says why and what to do"}


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


DAYS = _int_in(1, MAX_DAYS)


def _days(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    parser.add_argument(
        "--days",
        type=DAYS,
        default=default,
        help=f"{what} validity in days, 1..{MAX_DAYS} (default {default})",
    )


def _add_pkcs11(parser: argparse.ArgumentParser, *, key_label_default: str | None) -> None:
    group = parser.add_argument_group("PKCS#11 token (PIN from $ROOMBA_PKCS11_PIN or --pin-file)")
    group.add_argument("--pkcs11-module", metavar="SO", help=f"PKCS#11 module, e.g. {hsm.DEFAULT_MODULE}")
    group.add_argument("--token", metavar="LABEL", help="token label (the key is made inside this token)")
    group.add_argument(
        "--key-label",
        metavar="LABEL",
        default=key_label_default,
        help="key object label" + (f" (default {key_label_default})" if key_label_default else ""),
    )
    group.add_argument("--pin-file", metavar="FILE", help="file whose first line is the user PIN")


def _add_pin_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pin-file", metavar="FILE", help="PIN for a token CA (else $ROOMBA_PKCS11_PIN)")


def _ca_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca", required=True, type=Path, metavar="DIR", help="the CA directory (from ca init)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Provision Roomba robots for AWS IoT: the CA, robot keys, station signing, factory "
        "batches, identity checks and AWS artifacts.",
        epilog=f"run `{PROG} COMMAND --help` for a command's options; `{PROG} completion bash` prints shell "
        "completion. PINs come from $ROOMBA_PKCS11_PIN or --pin-file, never from the command line.",
        exit_codes=REFUSED,
    )
    parser.add_argument(
        "--log-level", default="warning", help="debug, info, warning (default) or error; logs go to stderr"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    ca_parser = sub.add_parser(
        "ca", help="manage the company CA", description="Manage the company CA.", exit_codes=REFUSED
    )
    ca = ca_parser.add_subparsers(dest="ca_command", required=True, metavar="COMMAND", title="commands")
    init = ca.add_parser(
        "init",
        help="create a CA (key file, or key inside a PKCS#11 token)",
        description="Create a CA: DIR/ca.crt and its key (DIR/ca.key, or a key inside a PKCS#11 token).",
        exit_codes={1: "refused: DIR already holds a CA, or the token/PIN is wrong (the error line says)"},
    )
    init.add_argument("--dir", required=True, type=Path, help="the new CA directory (made 0700)")
    init.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="EC P-256 (default) or RSA 2048"
    )
    init.add_argument("--cn", default="Roomba Fleet Development CA", help="CA common name")
    init.add_argument("--org", default="Roomba Fleet", help="CA organisation")
    _days(init, certs.DEFAULT_CA_DAYS, "CA certificate")
    init.add_argument(
        "--path-length",
        type=_int_in(0, 8),
        default=0,
        help="CA path length, 0..8 (default 0: the CA issues devices directly)",
    )
    _add_pkcs11(init, key_label_default="roomba-ca")
    add_json(init, "where the CA is and its certificate id")
    verif = ca.add_parser(
        "verification-cert",
        help="proof-of-possession certificate for AWS CA registration",
        description="Issue the verification certificate AWS IoT asks for when registering this CA.",
        exit_codes=REFUSED,
    )
    _ca_arg(verif)
    verif.add_argument(
        "--registration-code",
        required=True,
        help="from aws iot get-registration-code (ASCII letters, digits)",
    )
    verif.add_argument("--out", required=True, type=Path, help="file for the verification certificate (PEM)")
    _add_pin_file(verif)
    add_json(verif, "the file written")
    server = ca.add_parser(
        "server-cert",
        help="TLS server certificate (e.g. for the local Mosquitto broker)",
        description="Issue a TLS server certificate and key signed by the CA.",
        exit_codes=REFUSED,
    )
    _ca_arg(server)
    server.add_argument("--out", required=True, type=Path, help="directory for server.crt and server.key")
    server.add_argument("--hostname", action="append", default=[], help="DNS SAN (repeatable)")
    server.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
    _days(server, certs.DEFAULT_SERVER_DAYS, "server certificate")
    server.add_argument("--replace", action="store_true", help="rotate an existing server certificate")
    _add_pin_file(server)
    add_json(server, "the files written")

    device_parser = sub.add_parser(
        "device",
        help="device keys and identities",
        description="Device keys and identities.",
        exit_codes=REFUSED,
    )
    device = device_parser.add_subparsers(
        dest="device_command", required=True, metavar="COMMAND", title="commands"
    )
    kg = device.add_parser(
        "keygen",
        help="on the robot: make the device key and a CSR",
        description="On the robot: make the device key (file or token) and a CSR to carry to the station.",
        exit_codes={1: "refused: a key is already there (never overwritten), or the token/PIN is wrong"},
    )
    kg.add_argument("--thing", required=True, help="thing name (1-128 of [a-zA-Z0-9:_-]), the CSR's CN")
    kg.add_argument("--out", required=True, type=Path, help="identity directory for the key and device.csr")
    kg.add_argument("--key-type", choices=("ec", "rsa"), default="ec", help="EC P-256 (default) or RSA 2048")
    _add_pkcs11(kg, key_label_default=None)
    add_json(kg, "where the key and CSR are")
    install = device.add_parser(
        "install",
        help="on the robot: install the signed certificate",
        description="On the robot: install the certificate the station signed, beside its key.",
        exit_codes={1: "refused: the certificate does not match the key, or one is installed (see --force)"},
    )
    install.add_argument("--dir", required=True, type=Path, help="identity directory made by keygen")
    install.add_argument("--cert", required=True, type=Path, help="certificate from roomba-provision sign")
    install.add_argument("--root-ca", type=Path, help="server root CA (AmazonRootCA1.pem for AWS)")
    install.add_argument("--force", action="store_true", help="replace an installed certificate")
    add_json(install, "the installed identity")
    create = device.add_parser(
        "create",
        help="keygen and sign in one step (simulation, development)",
        description="Key, CSR and signed certificate in one step (simulation and development).",
        exit_codes=REFUSED,
    )
    _ca_arg(create)
    create.add_argument("--thing", required=True, help="thing name (1-128 of [a-zA-Z0-9:_-])")
    create.add_argument("--out", required=True, type=Path, help="the new identity directory")
    _days(create, certs.DEFAULT_DEVICE_DAYS, "device certificate")
    create.add_argument("--root-ca", type=Path, help="server root for root-ca.crt (default: this CA)")
    create.add_argument("--chain", action="store_true", help="device.crt = certificate + CA certificate")
    _add_pin_file(create)
    add_json(create, "the new identity")

    sign = sub.add_parser(
        "sign",
        help="at the station: check a CSR and issue a client certificate",
        description="At the station: check a robot's CSR and issue its client certificate.",
        exit_codes={1: "refused: the CSR is invalid, or --out exists (see --force)"},
    )
    _ca_arg(sign)
    sign.add_argument("--csr", required=True, type=Path, help="the robot's CSR (device.csr from keygen)")
    sign.add_argument("--out", required=True, type=Path, help="file for the certificate (PEM)")
    _days(sign, certs.DEFAULT_DEVICE_DAYS, "device certificate")
    sign.add_argument(
        "--chain", action="store_true", help="append the CA certificate (AWS JITP first connect)"
    )
    sign.add_argument("--force", action="store_true", help="replace an existing certificate file")
    _add_pin_file(sign)
    add_json(sign, "the certificate issued")

    batch = sub.add_parser(
        "batch",
        help="a factory batch of identities plus a manifest (resumable)",
        description="A factory batch of identities plus a manifest; rerun the same command to resume. "
        "Prints one JSON summary line (total, created, skipped, recovered, manifest, per_s).",
        exit_codes={
            1: "refused: bad serials, or another batch holds --out",
            130: "interrupted (Ctrl-C) between two identities: rerun to resume",
            143: "stopped by SIGTERM between two identities: rerun to resume",
        },
    )
    _ca_arg(batch)
    what = batch.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--count", type=_int_in(1, 1_000_000), help="this many identities, PREFIX001 and on (1..1000000)"
    )
    what.add_argument("--serials", type=Path, help="file with one serial number per line")
    batch.add_argument("--prefix", default="robot-", help="thing name prefix (default robot-)")
    batch.add_argument("--out", required=True, type=Path, help="directory for the identities and manifest")
    _days(batch, certs.DEFAULT_DEVICE_DAYS, "device certificate")
    batch.add_argument("--root-ca", type=Path, help="server root for root-ca.crt (default: this CA)")
    batch.add_argument("--chain", action="store_true", help="device.crt = certificate + CA certificate")
    _add_pin_file(batch)

    verify = sub.add_parser(
        "verify",
        help="check an installed identity the way the agent will",
        description="Check an installed identity the way the agent will: files and modes, key match, "
        "chain to the CA, thing name, expiry. Each finding is one line on stderr.",
        exit_codes={1: "the identity has an error (each finding is printed)"},
    )
    verify.add_argument("--dir", required=True, type=Path, help="the identity directory")
    verify.add_argument("--ca", required=True, type=Path, help="CA directory or CA certificate file")
    verify.add_argument("--thing", help="expected thing name (default: only check the CN is legal)")
    verify.add_argument(
        "--warn-days",
        type=_int_in(0, MAX_DAYS),
        default=30,
        help="warn when the certificate expires within this many days (default 30)",
    )
    add_json(verify, "the verdict, expiry and findings")

    awsp_parser = sub.add_parser(
        "aws", help="AWS IoT artifacts", description="AWS IoT artifacts (JSON on stdout).", exit_codes=REFUSED
    )
    awsp = awsp_parser.add_subparsers(dest="aws_command", required=True, metavar="COMMAND", title="commands")
    policy = awsp.add_parser(
        "policy",
        help="least-privilege device policy JSON",
        description="Print the least-privilege AWS IoT policy for robots (JSON).",
        exit_codes={1: "the policy would exceed AWS IoT's size limit (the error line says what to drop)"},
    )
    policy.add_argument(
        "--partition", choices=aws.PARTITIONS, default="aws", help="AWS partition (default aws)"
    )
    policy.add_argument("--region", default="*", help="default '*': the policy's own region")
    policy.add_argument("--account", default="*", help="default '*': the policy's own account")
    policy.add_argument("--shadow", action="append", default=[], help="pin named shadows (default: any)")
    jitp = awsp.add_parser(
        "jitp-template",
        help="just-in-time provisioning template JSON",
        description="Print the just-in-time provisioning template (JSON).",
    )
    jitp.add_argument(
        "--policy-name", default="roomba-agent", help="the policy attached to each new certificate"
    )
    jitp.add_argument("--thing-type", help="thing type for the things created (default: none)")
    jitp.add_argument("--role-arn", help="wrap as --registration-config {templateBody, roleArn}")
    _add_release(sub)
    add_completion(sub, PROG)
    return parser


def _add_release(sub: Any) -> None:
    rel_parser = sub.add_parser(
        "release",
        help="release signing: the key, detached signatures, bundle checks",
        description="The release-signing key (separate from the device CA), detached signatures, and the "
        "check a robot makes of a release bundle before it installs it.",
        exit_codes=REFUSED,
    )
    rel = rel_parser.add_subparsers(
        dest="release_command", required=True, metavar="COMMAND", title="commands"
    )
    kg = rel.add_parser(
        "keygen",
        help="make the release-signing key and its certificate (key file, or key inside a PKCS#11 token)",
        description="Make the release-signing key (EC P-256) and its self-signed code-signing certificate: "
        f"DIR/{release.SIGNING_CERT} (what robots trust) and DIR/{release.SIGNING_KEY} (0600), or a key "
        f"inside a PKCS#11 token and DIR/{release.SIGNING_PKCS11}.",
        exit_codes={1: "refused: DIR already holds a release key, or the token/PIN is wrong"},
    )
    kg.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="the signing directory (made 0700)"
    )
    kg.add_argument(
        "--name", default=release.DEFAULT_SIGNER_NAME, help="certificate common name (default %(default)r)"
    )
    _days(kg, release.DEFAULT_DAYS, "signing certificate")
    _add_pkcs11(kg, key_label_default=release.DEFAULT_KEY_LABEL)
    add_json(kg, "where the certificate and key are, and the signer id")
    sg = rel.add_parser(
        "sign",
        help="detached signature (DER ECDSA P-256 SHA-256) of a file",
        description="Write a detached DER ECDSA P-256 / SHA-256 signature of FILE "
        "(`openssl dgst -sha256 -verify PUBKEY -signature SIG FILE` checks it).",
        exit_codes=REFUSED,
    )
    sg.add_argument("--signer", required=True, type=Path, metavar="DIR", help="the signing directory")
    sg.add_argument("file", type=Path, metavar="FILE", help="the file to sign")
    sg.add_argument("--out", type=Path, metavar="SIG", help="the signature file (default FILE.sig)")
    sg.add_argument("--force", action="store_true", help="replace an existing signature file")
    _add_pin_file(sg)
    add_json(sg, "the signature file and the signer id")
    vf = rel.add_parser(
        "verify",
        help="check a release bundle (or a detached signature) against trusted certificates",
        description="Check BUNDLE the way a robot does before installing it: the signature over the manifest "
        "against the trusted certificates, then every member's size and SHA-256, and the tar's structure. "
        "With --signature SIG, check a detached signature of any FILE instead.",
        exit_codes={1: "not valid: the error line says which check failed (signature, hash, format, io)"},
    )
    vf.add_argument("--trust", required=True, type=Path, metavar="PEM", help="trusted release certificate(s)")
    vf.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle (or FILE with --signature)")
    vf.add_argument("--signature", type=Path, metavar="SIG", help="verify this detached signature of FILE")
    add_json(vf, "the verdict and the manifest")


def _emit(out: TextIO, json_mode: bool, doc: dict[str, Any], text: str) -> None:
    """The result: ``doc`` as one JSON document with --json, else the lines people read."""
    print(json.dumps(doc, indent=2) if json_mode else text, file=out)


def _write_output(path: Path, data: bytes, *, force: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, 0o644, overwrite=force)


def _pkcs11_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pkcs11_module": args.pkcs11_module,
        "token_label": args.token,
        "pin_file": args.pin_file,
    }


def cmd_ca_init(args: argparse.Namespace, out: TextIO) -> int:
    extra = _pkcs11_args(args)
    if args.pkcs11_module or args.token:
        extra["key_label"] = args.key_label
    ca = init_ca(
        args.dir,
        key_type=args.key_type,
        common_name=args.cn,
        organization=args.org,
        days=args.days,
        path_length=args.path_length,
        **extra,
    )
    with ca:
        where = "in token " + repr(args.token) if ca.in_token else f"in {args.dir / 'ca.key'}"
        cert = ca.certificate
        doc = {
            "ca_dir": str(args.dir),
            "certificate": str(ca.cert_path),
            "key": None if ca.in_token else str(args.dir / "ca.key"),
            "token": args.token if ca.in_token else None,
            "key_label": args.key_label if ca.in_token else None,
            "certificate_id": certs.certificate_id(cert),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
        text = f"CA created: {ca.cert_path} (key {where})\ncertificate id: {doc['certificate_id']}"
    _emit(out, args.json, doc, text)
    return 0


def cmd_verification_cert(args: argparse.Namespace, out: TextIO) -> int:
    with load_ca(args.ca, pin_file=args.pin_file) as ca:
        try:
            cert = ca.verification_certificate(args.registration_code)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    _write_output(args.out, certs.cert_pem(cert))
    _emit(
        out, args.json, {"verification_certificate": str(args.out)}, f"verification certificate: {args.out}"
    )
    return 0


def cmd_server_cert(args: argparse.Namespace, out: TextIO) -> int:
    if not args.hostname and not args.ip:
        raise InvalidInput("give at least one --hostname or --ip for the server certificate")
    with load_ca(args.ca, pin_file=args.pin_file) as ca:
        try:
            cert_path, key_path = issue_server_cert(
                ca, args.out, args.hostname, args.ip, days=args.days, replace=args.replace
            )
        except ValueError as exc:
            raise InvalidInput(f"bad --hostname/--ip: {exc}") from None
    _emit(
        out,
        args.json,
        {"certificate": str(cert_path), "key": str(key_path)},
        f"server certificate: {cert_path}\nserver key: {key_path}",
    )
    return 0


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    result = keygen(
        args.thing, args.out, key_type=args.key_type, key_label=args.key_label, **_pkcs11_args(args)
    )
    where = (
        f"token {args.token!r} label {result.token_key.key_label!r}"
        if result.token_key
        else str(result.key_path)
    )
    doc = {
        "thing": result.thing,
        "dir": str(result.dir),
        "csr": str(result.csr_path),
        "key": str(result.key_path) if result.key_path else None,
        "token": result.token_key.token_label if result.token_key else None,
        "key_label": result.token_key.key_label if result.token_key else None,
    }
    _emit(out, args.json, doc, f"device key: {where}\nCSR: {result.csr_path}")
    return 0


def _identity_doc(ident: Identity) -> dict[str, Any]:
    return {
        "thing": ident.thing,
        "dir": str(ident.dir),
        "certificate": str(ident.cert_path),
        "key": str(ident.key_path) if ident.key_path else None,
        "root_ca": str(ident.ca_path),
        "certificate_id": ident.certificate_id,
    }


def cmd_device_install(args: argparse.Namespace, out: TextIO) -> int:
    try:
        pem = args.cert.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read certificate {args.cert}: {exc.strerror}") from None
    ident = install_certificate(args.dir, pem, root_ca=args.root_ca, force=args.force)
    _emit(
        out,
        args.json,
        _identity_doc(ident),
        f"installed: {ident.cert_path}\nthing: {ident.thing}\ncertificate id: {ident.certificate_id}",
    )
    return 0


def cmd_device_create(args: argparse.Namespace, out: TextIO) -> int:
    with load_ca(args.ca, pin_file=args.pin_file) as ca:
        ident = create_identity(ca, args.thing, args.out, args.days, root_ca=args.root_ca, chain=args.chain)
    _emit(
        out,
        args.json,
        _identity_doc(ident),
        f"identity: {ident.dir}\ncertificate id: {ident.certificate_id}",
    )
    return 0


def cmd_sign(args: argparse.Namespace, out: TextIO) -> int:
    try:
        data = args.csr.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read CSR {args.csr}: {exc.strerror}") from None
    csr = certs.load_csr(data)
    info = certs.check_csr(csr)
    if args.out.exists() and not args.force:
        raise OutputExists(f"{args.out} already exists; pass --force to replace it")
    with load_ca(args.ca, pin_file=args.pin_file) as ca:
        cert = ca.sign_csr(csr, days=args.days)
        pem = certs.cert_pem(cert) + (ca.certificate_pem if args.chain else b"")
    _write_output(args.out, pem, force=args.force)
    doc = {
        "certificate": str(args.out),
        "thing": info.thing,
        "key": info.key_description,
        "certificate_id": certs.certificate_id(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "chain": bool(args.chain),
    }
    _emit(
        out,
        args.json,
        doc,
        f"certificate: {args.out}\nthing: {info.thing}\nkey: {info.key_description}\n"
        f"certificate id: {doc['certificate_id']}",
    )
    return 0


class _TtyProgress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, p: Progress) -> None:
        if p.done == p.total or p.done % 10 == 0:
            rate = p.created / p.elapsed_s if p.elapsed_s > 0 else 0.0
            self.stream.write(f"\r{PROG}: {p.done}/{p.total} ({100 * p.done // p.total}%) {rate:.0f}/s ")
            if p.done == p.total:
                self.stream.write("\n")
            self.stream.flush()


def cmd_batch(args: argparse.Namespace, out: TextIO) -> int:
    plan: list[PlannedThing]
    if args.serials is not None:
        try:
            lines = args.serials.read_text().splitlines()
        except OSError as exc:
            raise InvalidInput(f"cannot read serials file {args.serials}: {exc.strerror}") from None
        plan = plan_serials(lines, args.prefix, str(args.serials))
    else:
        plan = plan_count(args.count, args.prefix)
    progress = _TtyProgress(sys.stderr) if sys.stderr.isatty() else None
    # SIGINT/SIGTERM only set a flag: the batch stops between two identities, never inside one (an exception
    # raised from a handler at an arbitrary bytecode was once swallowed inside the CSR check).
    received: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with load_ca(args.ca, pin_file=args.pin_file) as ca:
            result = run_batch(
                ca,
                args.out,
                plan,
                days=args.days,
                root_ca=args.root_ca,
                chain=args.chain,
                progress=progress,
                should_stop=lambda: bool(received),
            )
    except BatchStopped:
        print(f"\n{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 143 if received[0] == signal.SIGTERM else 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rate = result.created / result.elapsed_s if result.elapsed_s > 0 else 0.0
    print(
        json.dumps(
            {
                "total": result.total,
                "created": result.created,
                "skipped": result.skipped,
                "recovered": result.recovered,
                "manifest": str(result.manifest_path),
                "per_s": round(rate, 1),
            }
        ),
        file=out,
    )
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    ca_path = args.ca / CA_CERT if args.ca.is_dir() else args.ca
    if not args.dir.is_dir():
        raise InvalidInput(f"identity directory {args.dir} does not exist")
    key_path: Path | None = args.dir / DEVICE_KEY
    if not (args.dir / DEVICE_KEY).exists() and (args.dir / DEVICE_PKCS11).exists():
        key_path = None
    findings = check_identity(
        args.dir / DEVICE_CERT,
        key_path,
        ca_path,
        args.thing,
        check_modes=True,
        expiry_warning=dt.timedelta(days=args.warn_days),
    )
    for finding in findings:
        print(f"{PROG}: {finding.severity}: {finding.code}: {finding.message}", file=sys.stderr)
    doc: dict[str, Any] = {
        "ok": not any(f.is_error for f in findings),
        "dir": str(args.dir),
        "thing": args.thing,
        "not_after": None,
        "days_left": None,
        "findings": [{"severity": f.severity, "code": f.code, "message": f.message} for f in findings],
    }
    if not doc["ok"]:
        if args.json:
            print(json.dumps(doc, indent=2), file=out)
        return 1
    cert = read_certificate(args.dir / DEVICE_CERT)
    doc["thing"] = args.thing or certs.common_name(cert.subject)
    doc["not_after"] = cert.not_valid_after_utc.isoformat()
    doc["days_left"] = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    _emit(
        out,
        args.json,
        doc,
        f"ok: {args.dir} is a valid identity for {doc['thing']} "
        f"(expires {cert.not_valid_after_utc.date()}, in {doc['days_left']} days)",
    )
    return 0


def cmd_aws_policy(args: argparse.Namespace, out: TextIO) -> int:
    policy = aws.device_policy(args.partition, args.region, args.account, tuple(args.shadow) or ("*",))
    size = aws.policy_size(policy)
    if size > aws.POLICY_MAX_CHARS:
        hint = (
            "leave --region and --account at '*' (a policy only applies in its own account and region)"
            if args.region != "*" or args.account != "*"
            else "pin fewer --shadow names"
        )
        raise InvalidInput(
            f"policy is {size} characters without whitespace; AWS IoT allows {aws.POLICY_MAX_CHARS}: {hint}"
        )
    print(json.dumps(policy, indent=2), file=out)
    return 0


def cmd_aws_jitp(args: argparse.Namespace, out: TextIO) -> int:
    template = aws.jitp_template(args.policy_name, args.thing_type)
    document: Any = aws.registration_config(template, args.role_arn) if args.role_arn else template
    print(json.dumps(document, indent=2), file=out)
    return 0


def _pkcs11_spec(args: argparse.Namespace) -> release.TokenSpec | None:
    if not (args.pkcs11_module or args.token):
        return None
    if not (args.pkcs11_module and args.token):
        raise InvalidInput("a token release key needs both --pkcs11-module and --token")
    return release.TokenSpec(
        module=args.pkcs11_module, token_label=args.token, key_label=args.key_label, pin_file=args.pin_file
    )


def cmd_release_keygen(args: argparse.Namespace, out: TextIO) -> int:
    ident = release.keygen(args.out, name=args.name, days=args.days, token=_pkcs11_spec(args))
    doc = {
        "dir": str(ident.dir),
        "certificate": str(ident.cert_path),
        "key": str(ident.key_path) if ident.key_path else None,
        "token": ident.token.token_label if ident.token else None,
        "key_label": ident.token.key_label if ident.token else None,
        "signer": ident.signer_id,
        "not_after": ident.certificate.not_valid_after_utc.isoformat(),
    }
    where = f"in token {args.token!r} label {args.key_label!r}" if ident.token else str(ident.key_path)
    _emit(
        out,
        args.json,
        doc,
        f"release certificate: {ident.cert_path} (robots trust this file)\nkey: {where}\n"
        f"signer id: {ident.signer_id}",
    )
    return 0


def cmd_release_sign(args: argparse.Namespace, out: TextIO) -> int:
    if not args.file.is_file():
        raise InvalidInput(f"{args.file}: no such file")
    target = args.out or args.file.with_name(args.file.name + ".sig")
    if target.exists() and not args.force:
        raise OutputExists(f"{target} already exists; pass --force to replace it")
    with release.load_signer(args.signer, pin_file=args.pin_file) as signer:
        signature = signer.sign_file(args.file)
        signer_id = signer.signer_id
    _write_output(target, signature, force=args.force)
    doc = {"file": str(args.file), "signature": str(target), "signer": signer_id}
    _emit(out, args.json, doc, f"signature: {target}\nsigner id: {signer_id}")
    return 0


def cmd_release_verify(args: argparse.Namespace, out: TextIO) -> int:
    try:
        trust = release.load_trust(args.trust)
        if args.signature is not None:
            try:
                data, signature = args.bundle.read_bytes(), args.signature.read_bytes()
            except OSError as exc:
                raise release.ReleaseError("io", f"cannot read {exc.filename}: {exc.strerror}") from None
            cert = release.verify_signature(data, signature, trust)
            doc: dict[str, Any] = {"ok": True, "file": str(args.bundle), "signer": certs.certificate_id(cert)}
            _emit(out, args.json, doc, f"ok: {args.bundle} is signed by {doc['signer']}")
            return 0
        manifest = release.verify_bundle(args.bundle, trust)
    except release.ReleaseError as exc:
        print(f"{PROG}: error: {exc.kind}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "kind": exc.kind, "error": str(exc)}, indent=2), file=out)
        return 1
    doc = {
        "ok": True,
        "bundle": str(args.bundle),
        "sha256": release.sha256_file(args.bundle),
        "manifest": manifest.to_json(),
    }
    _emit(
        out,
        args.json,
        doc,
        f"ok: {args.bundle} is release {manifest.version} (from {manifest.min_previous} on, "
        f"{manifest.python_abi}, {len(manifest.files)} wheels), signed by {manifest.signer}",
    )
    return 0


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "ca":
        handlers = {
            "init": cmd_ca_init,
            "verification-cert": cmd_verification_cert,
            "server-cert": cmd_server_cert,
        }
        return handlers[args.ca_command](args, out)
    if args.command == "device":
        handlers = {"keygen": cmd_keygen, "create": cmd_device_create, "install": cmd_device_install}
        return handlers[args.device_command](args, out)
    if args.command == "release":
        handlers = {"keygen": cmd_release_keygen, "sign": cmd_release_sign, "verify": cmd_release_verify}
        return handlers[args.release_command](args, out)
    if args.command == "aws":
        return {"policy": cmd_aws_policy, "jitp-template": cmd_aws_jitp}[args.aws_command](args, out)
    return {"sign": cmd_sign, "batch": cmd_batch, "verify": cmd_verify}[args.command](args, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(bash_completion(PROG, {"": parser}))
        return 0
    logs.configure(args.log_level)
    try:
        return _dispatch(args, sys.stdout)
    except ProvisioningError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stop the interpreter's flush from failing again
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug, not an operator mistake: still one line, the traceback at debug level
        logs.get_logger("provisioning.cli").debug("cli.unexpected_error", exc_info=True)
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {exc} "
            "(a bug: rerun with --log-level debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


console = entry(lambda: main(sys.argv[1:]))

if __name__ == "__main__":
    console()
