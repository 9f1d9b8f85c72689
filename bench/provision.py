"""Identities per second: a batch with a key-file CA, with a SoftHSM CA, and the usual openssl recipe.

Prints one JSON line. Everything (CA, token store, outputs) lives in a temp directory removed at the end.
Usage: .venv/bin/python bench/provision.py [--file-count 1000] [--hsm-count 200] [--openssl-count 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "246810"

EXTFILE = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl_identity(ca_dir: Path, out: Path, thing: str, ext: Path) -> None:
    """The recipe found in most guides: openssl req for key + CSR, openssl x509 -req to sign."""
    out.mkdir(mode=0o700)
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(out / "device.key"), "-out", str(out / "device.csr"), "-subj", f"/CN={thing}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(out / "device.csr"), "-CA", str(ca_dir / "ca.crt"),
         "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-CAserial", str(ca_dir / "ca.srl"),
         "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(out / "device.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    shutil.copyfile(ca_dir / "ca.crt", out / "root-ca.crt")
    os.chmod(out / "device.key", 0o600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file-count", type=int, default=1000)
    parser.add_argument("--hsm-count", type=int, default=200)
    parser.add_argument("--openssl-count", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        root = Path(tmp)
        (root / "tokens").mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", PIN, "--so-pin", "13579111"],
            check=True, capture_output=True,
        )  # fmt: skip

        from base.logs import configure
        from provisioning.batch import plan_count, run_batch
        from provisioning.ca import init_ca

        configure("warning")

        file_ca = init_ca(root / "file-ca")
        file_result = run_batch(file_ca, root / "file-out", plan_count(args.file_count, "robot-"))
        file_rate = file_result.created / file_result.elapsed_s

        with init_ca(root / "hsm-ca", pkcs11_module=SOFTHSM_MODULE, token_label="bench", pin=PIN) as hsm_ca:
            hsm_result = run_batch(hsm_ca, root / "hsm-out", plan_count(args.hsm_count, "robot-"))
        hsm_rate = hsm_result.created / hsm_result.elapsed_s

        ext = root / "ext.cnf"
        ext.write_text(EXTFILE)
        (root / "openssl-out").mkdir()
        started = time.monotonic()
        for i in range(1, args.openssl_count + 1):
            openssl_identity(file_ca.dir, root / "openssl-out" / f"robot-{i:03d}", f"robot-{i:03d}", ext)
        openssl_rate = args.openssl_count / (time.monotonic() - started)

    print(
        json.dumps(
            {
                "bench": "provision",
                "file_ca_per_s": round(file_rate, 1),
                "file_ca_count": args.file_count,
                "file_ca_batch_s": round(file_result.elapsed_s, 2),
                "hsm_ca_per_s": round(hsm_rate, 1),
                "hsm_ca_count": args.hsm_count,
                "openssl_per_s": round(openssl_rate, 1),
                "openssl_count": args.openssl_count,
                "file_vs_openssl": round(file_rate / openssl_rate, 2),
                "hsm_vs_openssl": round(hsm_rate / openssl_rate, 2),
                "target_1000_under_60s": file_rate * 60 >= 1000,
                "cpus": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
