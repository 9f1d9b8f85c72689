"""The device key inside a token (SoftHSM2): the agent connects with it over mutual TLS to the local cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4321"


@pytest.mark.slow
def test_agent_connects_with_a_token_key(local_cloud: Any, tmp_path: Path) -> None:
    """The agent connects with its key in a PKCS#11 token (SoftHSM), and the PIN never reaches the log."""
    from provisioning.ca import load_ca
    from provisioning.device import install_certificate, keygen

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "robot",
                "--pin",
                PIN,
                "--so-pin",
                "87654321",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=60,
        )
        thing = "e2e-pkcs11"
        ident = tmp_path / "identity"
        result = keygen(thing, ident, pkcs11_module=SOFTHSM, token_label="robot", key_label=thing, pin=PIN)
        ca = load_ca(local_cloud.dir.ca_dir)
        from cryptography import x509

        csr = x509.load_pem_x509_csr(result.csr_path.read_bytes())
        cert = ca.sign_csr(csr, days=30)
        from cryptography.hazmat.primitives import serialization

        install_certificate(ident, cert.public_bytes(serialization.Encoding.PEM), root_ca=local_cloud.ca_path)
    finally:
        del os.environ["SOFTHSM2_CONF"]
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'thing_name = "{thing}"\nstate_dir = "{tmp_path / "state"}"\n\n[connection]\n'
        f'endpoint = "127.0.0.1"\nport = {local_cloud.port}\nroot_ca = "{ident / "root-ca.crt"}"\n'
        f'cert = "{ident / "device.crt"}"\nlocal = true\n\n[connection.pkcs11]\nmodule = "{SOFTHSM}"\n'
        f'token_label = "robot"\nkey_label = "{thing}"\npin_file = "{pin_file}"\n\n'
        '[robot]\nserial_port = "socket://127.0.0.1:9"\n'
    )
    exe = str(Path(sys.executable).parent / "roomba-agent")
    out = subprocess.run(
        [exe, "doctor", "--config", str(config), "--json", "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["certificates"]["status"] == "passed", checks["certificates"]
    assert checks["tls"]["status"] == "skipped" and "PKCS#11" in checks["tls"]["detail"]
    assert checks["mqtt connect"]["status"] == "passed", checks["mqtt connect"]
    assert checks["shadow round trip"]["status"] == "passed", checks["shadow round trip"]
    # no robot behind that port: checked and bad, and what depends on it could not be checked
    assert checks["serial port"]["status"] == "failed" and checks["serial port"]["fix"]
    assert checks["oi handshake"]["status"] == "skipped" and checks["robot health"]["status"] == "skipped"
    assert out.returncode == 1
    assert PIN not in out.stdout + out.stderr
    # and the daemon itself: connected with the token key while it waits for the (absent) robot
    with open(tmp_path / "agent.log", "wb") as log:
        agent = subprocess.Popen(
            [exe, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        status_path = tmp_path / "state" / "status.json"
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if status_path.exists():
                status = json.loads(status_path.read_text())
                if status["mqtt"]["connected"]:
                    break
            time.sleep(0.2)
        assert status["mqtt"]["connected"] and not status["ready"]
    finally:
        agent.terminate()
        assert agent.wait(20) == 0
    assert PIN not in (tmp_path / "agent.log").read_text()
