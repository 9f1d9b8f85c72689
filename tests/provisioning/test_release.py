"""Release signing and bundles: the key and certificate, the bundle's exact layout, a signature openssl
verifies, and every tampering a robot must refuse (each a ReleaseError of the right kind, nothing extracted).

Bundles here hold small stand-in wheels (the format does not look inside them); real builds are tested in
tests/fleet/test_release_cli.py. Token keys live in a real SoftHSM2 store, used from child processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioning import release
from provisioning.errors import KeyExists
from provisioning.release import BundleReader, Manifest, ReleaseError

LONG = "python_pkcs11-0.10.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
WHEELS = {
    "roomba_agent-0.2.0-py3-none-any.whl": b"PK\x03\x04 agent " + bytes(range(256)) * 8,
    "dep_a-1.0-py3-none-any.whl": b"PK\x03\x04 dep a " * 300,
    LONG: b"PK\x03\x04 long name " * 50,  # > 100 bytes with wheels/: stored with a pax path header
}
AGENT = "wheels/roomba_agent-0.2.0-py3-none-any.whl"
CREATED = dt.datetime(2026, 12, 7, 23, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release-keys")
    release.keygen(root / "signer")
    release.keygen(root / "other", name="someone else")
    return {"signer": root / "signer", "other": root / "other"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("wheels")
    for name, data in WHEELS.items():
        (root / name).write_bytes(data)
    return sorted(root.iterdir())


def make_bundle(
    out: Path, wheels: list[Path], signer_dir: Path, version: str = "0.2.0", min_previous: str = "0.1.0"
) -> Path:
    with release.load_signer(signer_dir) as signer:
        return release.build_bundle(
            out / release.bundle_name(version),
            wheels,
            version=version,
            min_previous=min_previous,
            signer=signer,
            python_abi="cp311",
            created_at=CREATED,
        )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, wheels: list[Path], keys: dict[str, Path]) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), wheels, keys["signer"])


def trust(keys: dict[str, Path], which: str = "signer") -> Path:
    return keys[which] / release.SIGNING_CERT


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path, "r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]


def retar(path: Path, items: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path.write_bytes(buf.getvalue())
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_keygen_makes_a_code_signing_certificate_and_a_private_key(tmp_path: Path, openssl) -> None:
    ident = release.keygen(tmp_path / "sig", name="fleet releases", days=30)
    cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.subject == cert.issuer and "CN=fleet releases" in cert.subject.rfc4514_string()
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert ident.signer_id == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert ident.key_path is not None and stat.S_IMODE(ident.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sig").stat().st_mode) == 0o700
    text = openssl("x509", "-in", str(ident.cert_path), "-noout", "-text").stdout
    assert "Code Signing" in text and "CA:FALSE" in text and "Digital Signature" in text
    with pytest.raises(KeyExists, match="refusing to replace a release key"):
        release.keygen(tmp_path / "sig")


def test_bundle_layout_is_exact_and_openssl_verifies_the_signature(
    bundle: Path, wheels: list[Path], keys: dict[str, Path], tmp_path: Path, openssl
) -> None:
    items = members(bundle)
    names = [info.name for info, _ in items]
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert sorted(names[2:]) == sorted(f"wheels/{w.name}" for w in wheels)
    assert all(info.isreg() and info.mode == 0o644 and info.uid == 0 for info, _ in items)
    manifest_bytes, signature = items[0][1], items[1][1]
    doc = json.loads(manifest_bytes)
    assert manifest_bytes == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    cert = x509.load_pem_x509_certificate(trust(keys).read_bytes())
    assert doc == {
        "format": 1,
        "name": "roomba-agent",
        "version": "0.2.0",
        "min_previous": "0.1.0",
        "python_abi": "cp311",
        "requires": "roomba-agent==0.2.0",
        "created_at": "2026-12-07T23:00:00Z",
        "signer": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        "install_bytes": 3 * sum(len(d) for d in WHEELS.values()),
        "platform": release.current_platform(),
        "files": {
            f"wheels/{n}": {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for n, d in WHEELS.items()
        },
    }
    (tmp_path / "manifest.json").write_bytes(manifest_bytes)
    (tmp_path / "manifest.sig").write_bytes(signature)
    pub = openssl("x509", "-in", str(trust(keys)), "-noout", "-pubkey").stdout
    (tmp_path / "pub.pem").write_text(pub)
    result = openssl(
        "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "manifest.sig"),
        str(tmp_path / "manifest.json"),
    )  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "Verified OK")
    listing = subprocess.run(["tar", "tf", str(bundle)], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == names  # GNU tar reads it the same way (pax long name included)


def test_verify_then_extract_writes_the_same_bytes(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    with BundleReader(bundle) as reader:
        with pytest.raises(RuntimeError, match="before verify"):
            reader.extract(tmp_path / "early")
        assert not (tmp_path / "early").exists()
        manifest = reader.verify(release.load_trust(trust(keys)))
        reader.extract(tmp_path / "out")
    assert (manifest.version, manifest.min_previous, manifest.agent_wheel) == ("0.2.0", "0.1.0", AGENT)
    for name, data in WHEELS.items():
        assert (tmp_path / "out" / "wheels" / name).read_bytes() == data
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest.to_bytes()
    assert release.parse_manifest(manifest.to_bytes()) == manifest
    assert release.verify_bundle(bundle, trust(keys)) == manifest


def test_a_rotated_trust_file_accepts_either_key(
    bundle: Path, keys: dict[str, Path], wheels: list[Path], tmp_path: Path
) -> None:
    both = tmp_path / "trust.pem"
    both.write_bytes(trust(keys, "other").read_bytes() + trust(keys).read_bytes())
    assert len(release.load_trust(both)) == 2
    assert release.verify_bundle(bundle, both).version == "0.2.0"
    other = make_bundle(tmp_path, wheels, keys["other"], version="0.2.0")
    assert release.verify_bundle(other, both).signer != release.verify_bundle(bundle, both).signer


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


Tamper = Callable[[Path, Path, dict[str, Path], list[Path]], Path]


def t_wheel_byte(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    data = src.read_bytes()
    at = data.index(WHEELS["dep_a-1.0-py3-none-any.whl"]) + 100
    out.write_bytes(_flip(data, at))
    return out


def t_manifest_byte(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    data = src.read_bytes()
    at = data.index(b'"min_previous":"0.1.0"') + len('"min_previous":"0.')
    out.write_bytes(data[:at] + b"0" + data[at + 1 :])  # 0.1.0 -> 0.0.0: still valid JSON, same size
    return out


def t_other_key(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return make_bundle(out.parent / "other-key", wheels, keys["other"])


def t_signature_only_swapped(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    foreign = members(make_bundle(out.parent / "foreign", wheels, keys["other"]))
    items = members(src)
    items[1] = regular("manifest.sig", foreign[1][1])
    return retar(out, items)


def t_extra_member(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return retar(out, [*members(src), regular("wheels/extra-1.0-py3-none-any.whl", b"PK extra")])


def t_missing_member(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return retar(out, [m for m in members(src) if m[0].name != "wheels/dep_a-1.0-py3-none-any.whl"])


def t_dot_dot(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return retar(out, [*members(src), regular("../x", b"evil")])


def t_dot_dot_in_wheels(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return retar(out, [*members(src), regular("wheels/../../x.whl", b"evil")])


def t_absolute(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    return retar(out, [*members(src), regular("/etc/roomba.whl", b"evil")])


def t_symlink(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    link = tarfile.TarInfo("wheels/dep_b-1.0-py3-none-any.whl")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return retar(out, [*members(src), (link, b"")])


def t_hardlink(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    link = tarfile.TarInfo("wheels/dep_b-1.0-py3-none-any.whl")
    link.type, link.linkname = tarfile.LNKTYPE, "manifest.json"
    return retar(out, [*members(src), (link, b"")])


def t_directory(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    folder = tarfile.TarInfo("wheels")
    folder.type = tarfile.DIRTYPE
    items = members(src)
    return retar(out, [*items[:2], (folder, b""), *items[2:]])


def t_duplicate(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    items = members(src)
    dep = next(m for m in items if m[0].name == "wheels/dep_a-1.0-py3-none-any.whl")
    return retar(out, [*items, regular(dep[0].name, b"PK other content")])


def t_truncated(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    data = src.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def t_truncated_end_marker(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    data = src.read_bytes().rstrip(b"\0")
    out.write_bytes(data + b"\0" * (-len(data) % 512))  # the last member whole, no end-of-archive marker
    return out


def t_wrong_order(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    items = members(src)
    return retar(out, [items[1], items[0], *items[2:]])


def t_gzipped(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    import gzip

    out.write_bytes(gzip.compress(src.read_bytes()))
    return out


def t_trailing_data(src: Path, out: Path, keys: dict[str, Path], wheels: list[Path]) -> Path:
    out.write_bytes(src.read_bytes() + b"appended")
    return out


TAMPERS: list[tuple[Tamper, str, str]] = [
    (t_wheel_byte, "hash", "wheels/dep_a-1.0-py3-none-any.whl has SHA-256"),
    (t_manifest_byte, "signature", "does not verify against any trusted release certificate"),
    (t_other_key, "signature", "does not verify against any trusted release certificate"),
    (t_signature_only_swapped, "signature", "does not verify"),
    (t_extra_member, "format", "'wheels/extra-1.0-py3-none-any.whl' is not in the manifest"),
    (t_missing_member, "format", "'wheels/dep_a-1.0-py3-none-any.whl' is in the manifest but missing"),
    (t_dot_dot, "format", "'../x' would escape the bundle"),
    (t_dot_dot_in_wheels, "format", "'wheels/../../x.whl' would escape the bundle"),
    (t_absolute, "format", "'/etc/roomba.whl' is an absolute path"),
    (t_symlink, "format", "is a symbolic link; only regular files are allowed"),
    (t_hardlink, "format", "is a hard link; only regular files are allowed"),
    (t_directory, "format", "'wheels/' is a directory"),
    (t_duplicate, "format", "'wheels/dep_a-1.0-py3-none-any.whl' appears twice"),
    (t_truncated, "format", "the bundle is truncated"),
    (t_truncated_end_marker, "format", "the bundle is truncated"),
    (t_wrong_order, "format", "starts with manifest.json then manifest.sig"),
    (t_gzipped, "format", "bad checksum"),
    (t_trailing_data, "format", "data after its end-of-archive marker"),
]


@pytest.mark.parametrize(
    ("tamper", "kind", "message"), TAMPERS, ids=[t[0].__name__.removeprefix("t_") for t in TAMPERS]
)
def test_a_tampered_bundle_is_refused_and_nothing_is_extracted(
    tamper: Tamper, kind: str, message: str, bundle: Path, keys: dict[str, Path], wheels: list[Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    bad = tamper(bundle, tmp_path / "bad.bundle", keys, wheels)
    dest = tmp_path / "extracted"
    with pytest.raises(ReleaseError) as caught, BundleReader(bad) as reader:
        reader.verify(trust(keys))
        reader.extract(dest)
    assert (caught.value.kind, message in str(caught.value)) == (kind, True), str(caught.value)
    assert not dest.exists()


def test_a_manifest_naming_another_signer_is_refused(
    keys: dict[str, Path], wheels: list[Path], tmp_path: Path, bundle: Path
) -> None:
    """Signed by a trusted key but claiming another signer: the signer field is checked too."""
    items = members(bundle)
    doc = json.loads(items[0][1])
    doc["signer"] = "0" * 64
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with release.load_signer(keys["signer"]) as signer:
        items[0], items[1] = regular("manifest.json", data), regular("manifest.sig", signer.sign(data))
    with pytest.raises(ReleaseError, match="names signer 0000000000000000") as caught:
        release.verify_bundle(retar(tmp_path / "b.bundle", items), trust(keys))
    assert caught.value.kind == "signature"


def _manifest_doc() -> dict[str, object]:
    return json.loads(
        Manifest(
            version="0.2.0", min_previous="0.1.0", python_abi="cp311", requires="roomba-agent==0.2.0",
            created_at="2026-12-07T23:00:00Z", signer="a" * 64, install_bytes=30,
            files={AGENT: release.FileEntry("b" * 64, 10)},
        ).to_bytes()
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("python_abi"), "lacks python_abi"),
        (lambda d: d.update(extra=1), "unknown keys extra"),
        (lambda d: d.update(format=2), "format 2 is not 1"),
        (lambda d: d.update(version="two"), "not a PEP 440 version"),
        (lambda d: d.update(python_abi="py3"), "is not like 'cp311'"),
        (lambda d: d.update(platform="Linux-x86_64"), "platform 'Linux-x86_64' is not like 'linux_x86_64'"),
        (lambda d: d.update(signer="XYZ"), "signer must be"),
        (lambda d: d.update(install_bytes=-1), "install_bytes must be a whole number"),
        (lambda d: d.update(files={"../x.whl": {"sha256": "b" * 64, "size": 1}}), "is not wheels/<name>.whl"),
        (lambda d: d.update(files={}), "non-empty object"),
        (lambda d: d.update(version="0.3.0"), "is not version 0.3.0 of the manifest"),
        (lambda d: d["files"][AGENT].update(size=True), "size must be a whole number"),  # type: ignore[index]
    ],
    ids=["missing", "unknown", "format", "version", "abi", "platform", "signer", "install_bytes", "path", "empty",
         "agent_version", "bool_size"],
)  # fmt: skip
def test_parse_manifest_is_strict(change: Callable[[dict[str, object]], object], message: str) -> None:
    doc = _manifest_doc()
    change(doc)
    with pytest.raises(ReleaseError, match=message) as caught:
        release.parse_manifest(json.dumps(doc).encode())
    assert caught.value.kind == "format"


def test_parse_manifest_refuses_duplicate_keys_and_non_json() -> None:
    text = json.dumps(_manifest_doc())
    with pytest.raises(ReleaseError, match="has the key 'version' twice"):
        release.parse_manifest(text.replace('"version"', '"version": "9", "version"', 1).encode())
    with pytest.raises(ReleaseError, match="not JSON"):
        release.parse_manifest(b"{")


@pytest.mark.parametrize(
    ("running", "kwargs", "message"),
    [
        ("0.1.0", {"python_abi": "cp312"}, "built for cp311; this Python is cp312"),
        ("0.0.9", {"python_abi": "cp311"}, "updates only from 0.1.0 or later; this robot runs 0.0.9"),
        ("0.2.0", {"python_abi": "cp311"}, "not newer than the running 0.2.0"),
        ("0.3.0", {"python_abi": "cp311"}, "not newer than the running 0.3.0"),
    ],
    ids=["abi", "min_previous", "same", "older"],
)
def test_check_compatible_refuses(running: str, kwargs: dict[str, str], message: str) -> None:
    manifest = release.parse_manifest(json.dumps(_manifest_doc()).encode())
    with pytest.raises(ReleaseError, match=message) as caught:
        release.check_compatible(manifest, running=running, **kwargs)  # type: ignore[arg-type]
    assert caught.value.kind == "compat"


def test_the_platform_is_optional_and_checked_when_said() -> None:
    # a format-1 manifest as first built (no platform) still parses and fits any platform
    plain = release.parse_manifest(json.dumps(_manifest_doc()).encode())
    assert plain.platform is None and "platform" not in plain.to_json()
    release.check_compatible(plain, running="0.1.0", python_abi="cp311", platform="linux_aarch64")
    data = json.dumps({**_manifest_doc(), "platform": "linux_aarch64"}, sort_keys=True, separators=(",", ":"))
    arm = release.parse_manifest(data.encode())
    assert arm.platform == "linux_aarch64" and arm.to_bytes() == data.encode()
    release.check_compatible(arm, running="0.1.0", python_abi="cp311", platform="linux_aarch64")
    with pytest.raises(ReleaseError, match="built for linux_aarch64; this machine is linux_x86_64") as caught:
        release.check_compatible(arm, running="0.1.0", python_abi="cp311", platform="linux_x86_64")
    assert caught.value.kind == "compat"


def test_current_platform_is_a_wheel_platform_tag() -> None:
    import re
    import sysconfig

    tag = release.current_platform()
    assert re.fullmatch(r"[a-z0-9_]+", tag)
    assert tag == sysconfig.get_platform().replace("-", "_").replace(".", "_").lower()


def test_check_compatible_accepts_newer_and_an_allowed_downgrade() -> None:
    manifest = release.parse_manifest(json.dumps(_manifest_doc()).encode())
    release.check_compatible(manifest, running="0.1.0", python_abi="cp311")
    release.check_compatible(manifest, running="0.3.0", python_abi="cp311", allow_downgrade=True)


def test_load_trust_errors(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="does not exist") as caught:
        release.load_trust(tmp_path / "none.pem")
    assert caught.value.kind == "io"
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ReleaseError, match="holds no PEM certificate") as caught:
        release.load_trust(tmp_path / "junk.pem")
    assert caught.value.kind == "format"
    with pytest.raises(ReleaseError, match="does not exist") as caught:
        BundleReader(tmp_path / "none.bundle")
    assert caught.value.kind == "io"


def test_build_bundle_refuses_a_bundle_without_the_agent_wheel(
    keys: dict[str, Path], wheels: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(ReleaseError, match="exactly one roomba_agent wheel"):
        make_bundle(tmp_path, [w for w in wheels if not w.name.startswith("roomba_agent")], keys["signer"])
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp file left


# --- the CLI ---------------------------------------------------------------------------------------------


def test_cli_keygen_sign_verify(
    run_cli, tmp_path: Path, bundle: Path, keys: dict[str, Path], openssl
) -> None:
    result = run_cli("release", "keygen", "--out", str(tmp_path / "k"), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["certificate"] == str(tmp_path / "k" / "release-signing.pem") and doc["token"] is None
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    firmware = tmp_path / "firmware.bin"
    firmware.write_bytes(os.urandom(3000))
    result = run_cli("release", "sign", "--signer", str(tmp_path / "k"), str(firmware))
    assert result.returncode == 0 and f"signature: {firmware}.sig" in result.stdout, result.stderr
    pub = tmp_path / "pub.pem"
    pub.write_text(openssl("x509", "-in", doc["certificate"], "-noout", "-pubkey").stdout)
    checked = openssl("dgst", "-sha256", "-verify", str(pub), "-signature", f"{firmware}.sig", str(firmware))
    assert checked.stdout.strip() == "Verified OK"
    result = run_cli("release", "sign", "--signer", str(tmp_path / "k"), str(firmware))
    assert result.returncode == 1 and "already exists; pass --force" in result.stderr
    ok = run_cli(
        "release", "verify", "--trust", doc["certificate"], str(firmware), "--signature", f"{firmware}.sig"
    )
    assert ok.returncode == 0 and doc["signer"] in ok.stdout
    result = run_cli("release", "verify", "--trust", str(trust(keys)), str(bundle))
    assert result.returncode == 0 and "ok: " in result.stdout and "release 0.2.0" in result.stdout
    result = run_cli("release", "verify", "--trust", str(trust(keys)), str(bundle), "--json")
    assert json.loads(result.stdout)["manifest"]["version"] == "0.2.0"
    assert json.loads(result.stdout)["sha256"] == release.sha256_file(bundle)


def test_cli_verify_says_why_a_bundle_is_refused(
    run_cli, tmp_path: Path, bundle: Path, keys: dict[str, Path]
) -> None:
    result = run_cli("release", "verify", "--trust", str(trust(keys, "other")), str(bundle))
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("roomba-provision: error: signature: the signature does not verify")
    bad = t_wheel_byte(bundle, tmp_path / "bad.bundle", keys, [])
    result = run_cli("release", "verify", "--trust", str(trust(keys)), str(bad), "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["kind"]) == (False, "hash") and "dep_a-1.0" in doc["error"]
    result = run_cli("release", "verify", "--trust", str(tmp_path / "none.pem"), str(bundle))
    assert result.returncode == 1 and "io: release trust file" in result.stderr


# --- a key in a PKCS#11 token ----------------------------------------------------------------------------

TOKEN_BUILD = """
from pathlib import Path
from provisioning import release
with release.load_signer(params["signer"]) as signer:
    assert signer.in_token
    path = release.build_bundle(
        Path(params["out"]), [Path(w) for w in params["wheels"]], version="0.2.0", min_previous="0.1.0",
        signer=signer,
    )
print(json.dumps({"bundle": str(path)}))
"""


def test_a_token_release_key_signs_bundles_and_files(
    softhsm, token: str, tmp_path: Path, wheels: list[Path], openssl
) -> None:
    signer = tmp_path / "token-signer"
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(b"firmware " * 1000)
    keygen, sign, wrong = softhsm.cli_runs(
        (
            ["release", "keygen", "--out", str(signer), "--pkcs11-module", softhsm.module, "--token", token,
             "--json"],
            {"ROOMBA_PKCS11_PIN": softhsm.pin},
        ),
        (["release", "sign", "--signer", str(signer), str(firmware), "--pin-file", str(pin_file)], {}),
        (["release", "sign", "--signer", str(signer), str(firmware), "--out", str(tmp_path / "x.sig")],
         {"ROOMBA_PKCS11_PIN": "wrong-pin-1234"}),
    )  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    doc = json.loads(keygen.stdout)
    assert (doc["key"], doc["token"], doc["key_label"]) == (None, token, "roomba-release")
    ref = json.loads((signer / release.SIGNING_PKCS11).read_text())
    assert ref == {"module": softhsm.module, "token_label": token, "key_label": "roomba-release"}
    assert not (signer / release.SIGNING_KEY).exists()
    for result in (keygen, sign, wrong):
        assert softhsm.pin not in result.stdout + result.stderr and "wrong-pin-1234" not in result.stderr
    assert sign.returncode == 0, sign.stderr
    assert wrong.returncode == 1 and "rejected the PIN" in wrong.stderr
    pub = tmp_path / "pub.pem"
    pub.write_text(openssl("x509", "-in", str(signer / release.SIGNING_CERT), "-noout", "-pubkey").stdout)
    checked = openssl("dgst", "-sha256", "-verify", str(pub), "-signature", f"{firmware}.sig", str(firmware))
    assert checked.stdout.strip() == "Verified OK"
    env_pin = {**softhsm.env, "ROOMBA_PKCS11_PIN": softhsm.pin}
    built = subprocess.run(
        [os.sys.executable, "-c", "import json, sys\nparams = json.loads(sys.stdin.read())\n" + TOKEN_BUILD],
        input=json.dumps(
            {"signer": str(signer), "out": str(tmp_path / "t.bundle"), "wheels": [str(w) for w in wheels]}
        ),
        capture_output=True, text=True, timeout=60, env=env_pin,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    manifest = release.verify_bundle(tmp_path / "t.bundle", signer / release.SIGNING_CERT)
    assert manifest.signer == doc["signer"]
