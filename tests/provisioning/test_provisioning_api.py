"""The Python API other components use (CONTRACTS.md), checked against openssl and a real TLS handshake."""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioning import certs
from provisioning.ca import CertificateAuthority, init_ca, issue_server_cert, load_ca
from provisioning.device import create_identity
from provisioning.errors import CaDirMissing, CaExists, KeyExists, ThingNameNotAllowed


def test_init_ca_layout_and_extensions(tmp_path: Path, openssl) -> None:
    """A new CA is a P-256 self-signed root, pathlen 0, key 0600, with the extensions openssl expects."""
    ca = init_ca(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.crt").exists()
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert ca.cert_path == tmp_path / "ca" / "ca.crt"
    text = openssl("x509", "-in", str(ca.cert_path), "-noout", "-text").stdout
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign" in text
    assert "X509v3 Subject Key Identifier" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "ecdsa-with-SHA256" in text and "prime256v1" in text
    assert openssl("verify", "-CAfile", str(ca.cert_path), str(ca.cert_path)).returncode == 0


def test_init_ca_rsa(tmp_path: Path, openssl) -> None:
    """An RSA-2048 CA works too, and openssl verifies the identities it issues."""
    ca = init_ca(tmp_path / "ca", key_type="rsa")
    text = openssl("x509", "-in", str(ca.cert_path), "-noout", "-text").stdout
    assert "Public-Key: (2048 bit)" in text and "sha256WithRSAEncryption" in text
    ident = create_identity(ca, "rsa-ca-robot", tmp_path / "id")
    assert openssl("verify", "-CAfile", str(ca.cert_path), str(ident.cert_path)).returncode == 0


def test_init_ca_refuses_to_overwrite(tmp_path: Path) -> None:
    """A second ``init_ca`` on the same directory fails instead of replacing the fleet's root."""
    init_ca(tmp_path / "ca")
    with pytest.raises(CaExists):
        init_ca(tmp_path / "ca")


def test_load_ca_roundtrip_and_missing(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """A CA loads back as written; a missing or empty directory is CaDirMissing, not a bare OSError."""
    loaded = load_ca(file_ca.dir)
    assert loaded.certificate == file_ca.certificate
    with pytest.raises(CaDirMissing):
        load_ca(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaDirMissing):
        load_ca(tmp_path / "empty")


def test_create_identity_layout_and_openssl(tmp_path: Path, file_ca: CertificateAuthority, openssl) -> None:
    """An identity is docs/CONTRACTS.md's four files, private modes, a client-auth leaf openssl verifies."""
    ident = create_identity(file_ca, "robot-001", tmp_path / "robot-001", days=30)
    d = tmp_path / "robot-001"
    assert sorted(p.name for p in d.iterdir()) == ["device.crt", "device.csr", "device.key", "root-ca.crt"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "device.key").stat().st_mode) == 0o600
    assert ident.cert_path == d / "device.crt" and ident.key_path == d / "device.key"
    assert ident.ca_path.read_bytes() == file_ca.cert_path.read_bytes()
    assert openssl("verify", "-CAfile", str(file_ca.cert_path), str(ident.cert_path)).returncode == 0
    req = openssl("req", "-in", str(d / "device.csr"), "-noout", "-verify", "-subject")
    assert req.returncode == 0 and "robot-001" in req.stdout
    cert = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    assert ident.certificate_id == certs.certificate_id(cert) and len(ident.certificate_id) == 64
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    der = subprocess.run(
        ["openssl", "x509", "-in", str(ident.cert_path), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    assert hashlib.sha256(der).hexdigest() == ident.certificate_id
    text = openssl("x509", "-in", str(ident.cert_path), "-noout", "-text").stdout
    assert "CA:FALSE" in text and "TLS Web Client Authentication" in text and "Digital Signature" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature\n" in text
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ca_ski = file_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ca_ski and ski != ca_ski
    mod_key = openssl("pkey", "-in", str(ident.key_path), "-pubout").stdout
    mod_cert = openssl("x509", "-in", str(ident.cert_path), "-noout", "-pubkey").stdout
    assert mod_key == mod_cert


def test_create_identity_never_overwrites(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """An existing device key is never replaced: KeyExists, and the key bytes are unchanged."""
    create_identity(file_ca, "robot-002", tmp_path / "r")
    key_before = (tmp_path / "r" / "device.key").read_bytes()
    with pytest.raises(KeyExists):
        create_identity(file_ca, "robot-002", tmp_path / "r")
    assert (tmp_path / "r" / "device.key").read_bytes() == key_before


def test_create_identity_into_existing_dir_with_other_files(
    tmp_path: Path, file_ca: CertificateAuthority
) -> None:
    """A directory holding other files (agent.toml) is used as is; no temporary file is left behind."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "agent.toml").write_text("x = 1\n")
    ident = create_identity(file_ca, "robot-003", tmp_path / "r")
    assert ident.key_path is not None and ident.key_path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_create_identity_into_empty_existing_dir(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """An empty directory is tightened to 0700 and receives exactly the four identity files."""
    (tmp_path / "r").mkdir(mode=0o755)
    ident = create_identity(file_ca, "robot-005", tmp_path / "r")
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o700
    assert sorted(p.name for p in ident.dir.iterdir()) == [
        "device.crt",
        "device.csr",
        "device.key",
        "root-ca.crt",
    ]


def test_create_identity_bad_thing_name(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """A thing name AWS would refuse fails before anything is written."""
    with pytest.raises(ThingNameNotAllowed):
        create_identity(file_ca, "robot 1", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_create_identity_custom_root_ca(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """``root_ca`` puts the given root (e.g. Amazon's) in root-ca.crt instead of the issuing CA."""
    other = init_ca(tmp_path / "other", common_name="Stand-in Amazon Root")
    ident = create_identity(file_ca, "robot-004", tmp_path / "r", root_ca=other.cert_path)
    assert ident.ca_path.read_bytes() == other.cert_path.read_bytes()


def test_server_cert_sans_and_mutual_tls(tmp_path: Path, file_ca: CertificateAuthority, openssl) -> None:
    """The broker certificate has the SANs and server EKU; a device identity completes mutual TLS with it."""
    cert_path, key_path = issue_server_cert(file_ca, tmp_path / "broker", ["localhost"], ["127.0.0.1"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    text = openssl("x509", "-in", str(cert_path), "-noout", "-text").stdout
    assert (
        "DNS:localhost" in text and "IP Address:127.0.0.1" in text and "TLS Web Server Authentication" in text
    )
    assert openssl("verify", "-CAfile", str(file_ca.cert_path), str(cert_path)).returncode == 0
    ident = create_identity(file_ca, "robot-tls", tmp_path / "robot-tls")

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    server_ctx.load_verify_locations(file_ca.cert_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ident.ca_path))
    client_ctx.load_cert_chain(ident.cert_path, ident.key_path)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(10)
    listener.close()
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert (("commonName", "robot-tls"),) in peer["subject"]
    with pytest.raises(Exception, match="exists"):
        issue_server_cert(file_ca, tmp_path / "broker", ["localhost"], ["127.0.0.1"])
    issue_server_cert(file_ca, tmp_path / "broker", ["localhost"], ["127.0.0.1"], replace=True)
