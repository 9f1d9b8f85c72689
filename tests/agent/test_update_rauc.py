"""The RAUC installer backend against the real RAUC (Debian's ``rauc``, 1.8 on bookworm): a private D-Bus bus
(``dbus-daemon``), ``rauc service`` on it, two ``type=raw`` slots on plain image files, and a ``custom``
bootloader backend (a shell script keeping the primary slot and each slot's good/bad in files) that plays the
bootloader. A reboot is the rig restarting ``rauc service`` with ``--override-boot-slot`` set to whatever
the bootloader would start. RAUC's ``noop`` bootloader installs too, but records nothing: the last test
shows the commit refusing to pretend on it.

Needs root (RAUC loop-mounts the bundle's squashfs); ``scripts/setup.sh`` installs rauc, squashfs-tools and
dbus when they are missing.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.update.installer import InstallError
from agent.update.rauc import RaucError, RaucInstaller, parse_info, parse_status
from base.testing import wait_until
from provisioning.release import Manifest, current_abi

ROOT = Path(__file__).resolve().parents[2]
COMPATIBLE = "roomba-agent-test"
SLOT_BYTES = 4 * 1024 * 1024
IMAGE_BYTES = 256 * 1024
TOOLS = ("rauc", "mksquashfs", "dbus-daemon")


def _ensure_tools() -> None:
    if not all(shutil.which(t) for t in TOOLS):
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True, cwd=ROOT)
    missing = [t for t in TOOLS if not shutil.which(t)]
    assert not missing, (
        f"scripts/setup.sh did not install {missing} (Debian packages rauc squashfs-tools dbus)"
    )
    assert os.geteuid() == 0, "rauc service loop-mounts bundles: these tests need root"


def manifest(version: str, signer: x509.Certificate) -> Manifest:
    """The release's signed manifest as the feature has it when it calls ``install`` (the RAUC backend reads
    its version; the wheels are in the RAUC image, not listed here)."""
    return Manifest(
        version=version,
        min_previous="0.1.0",
        python_abi=current_abi(),
        requires=f"roomba-agent=={version}",
        created_at="2026-12-07T23:00:00Z",
        signer=hashlib.sha256(signer.public_bytes(serialization.Encoding.DER)).hexdigest(),
        install_bytes=IMAGE_BYTES,
    )


@dataclass(frozen=True)
class Signer:
    cert: x509.Certificate
    cert_pem: Path
    key_pem: Path


def make_signer(out: Path, name: str) -> Signer:
    """A release-signing identity as the project makes one: self-signed EC P-256, digitalSignature,
    EKU codeSigning, CA:false (RAUC accepts it with ``check-purpose=codesign``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = out / f"{name}.cert.pem", out / f"{name}.key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_pem.chmod(0o600)
    return Signer(cert, cert_pem, key_pem)


BOOTLOADER = """#!/bin/sh
# RAUC custom bootloader backend for the tests: the bootloader's state is files under {boot}
D={boot}
case "$1" in
  get-primary) cat "$D/primary" ;;
  set-primary) printf '%s\\n' "$2" > "$D/primary" ;;
  get-state) cat "$D/state.$2" ;;
  set-state) printf '%s\\n' "$3" > "$D/state.$2" ;;
  *) echo "unknown command: $*" >&2; exit 2 ;;
esac
"""

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class Rig:
    """An A/B system for RAUC on plain files, its bootloader and a private bus; ``reboot`` starts what the
    bootloader says."""

    def __init__(self, tmp: Path, bootloader: str = "custom") -> None:
        _ensure_tools()
        self.tmp = tmp
        self.bootloader = bootloader
        self.signer = make_signer(tmp / "keys", "release")
        self.boot = tmp / "boot"
        self.boot.mkdir()
        (self.boot / "primary").write_text("A\n")
        (self.boot / "state.A").write_text("good\n")
        (self.boot / "state.B").write_text("bad\n")
        slots = tmp / "slots"
        slots.mkdir()
        self.images = {}
        for i, bootname in enumerate("AB"):
            path = slots / f"rootfs.{i}.img"
            with open(path, "wb") as f:
                f.truncate(SLOT_BYTES)
            self.images[bootname] = path
        for d in ("data", "mnt", "bundles", "state"):
            (tmp / d).mkdir()
        script = tmp / "bootloader.sh"
        script.write_text(BOOTLOADER.format(boot=self.boot))
        script.chmod(0o755)
        handlers = f"\n[handlers]\nbootloader-custom-backend={script}\n" if bootloader == "custom" else ""
        slot_conf = "".join(
            f"\n[slot.rootfs.{i}]\ndevice={self.images[b]}\ntype=raw\nbootname={b}\n"
            for i, b in enumerate("AB")
        )
        self.conf = tmp / "system.conf"
        self.conf.write_text(
            f"[system]\ncompatible={COMPATIBLE}\nbootloader={bootloader}\nmountprefix={tmp / 'mnt'}\n"
            f"data-directory={tmp / 'data'}\nbundle-formats=plain\n\n"
            f"[keyring]\npath={self.signer.cert_pem}\ncheck-purpose=codesign\n{handlers}{slot_conf}"
        )
        self.socket = tmp / "bus.sock"
        (tmp / "bus.conf").write_text(BUS_CONF.format(socket=self.socket))
        self.bus_address = f"unix:path={self.socket}"
        self.bus = subprocess.Popen(
            ["dbus-daemon", "--nofork", f"--config-file={tmp / 'bus.conf'}", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.bus.stdout is not None
        assert self.bus.stdout.readline().startswith(f"unix:path={self.socket}")
        self.service: subprocess.Popen[bytes] | None = None
        self.booted = "A"
        try:
            self.start_service()
        except BaseException:
            self.close()
            raise

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DBUS_STARTER_BUS_TYPE": "session",
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }

    def rauc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rauc", *args], capture_output=True, text=True, env=self.env(), timeout=60)

    def start_service(self) -> None:
        with open(self.tmp / "rauc-service.log", "ab") as log:
            self.service = subprocess.Popen(
                ["rauc", "service", f"--conf={self.conf}", f"--override-boot-slot={self.booted}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )
        wait_until(lambda: self.rauc("status").returncode == 0, 30, "rauc service on the private bus")

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.send_signal(signal.SIGTERM)
            self.service.wait(30)
            self.service = None

    def reboot(self) -> str:
        """Power-cycle: the bootloader starts its primary slot (the noop rig's has no say: it stays)."""
        self.stop_service()
        if self.bootloader == "custom":
            self.booted = (self.boot / "primary").read_text().strip()
        self.start_service()
        return self.booted

    def bootloader_state(self) -> dict[str, str]:
        return {p.name: p.read_text().strip() for p in sorted(self.boot.iterdir())}

    def bundle(
        self, version: str, *, signer: Signer | None = None, compatible: str = COMPATIBLE
    ) -> tuple[Path, bytes]:
        signer = signer or self.signer
        content = self.tmp / "bundles" / f"content-{version}-{signer.cert_pem.stem}"
        content.mkdir()
        image = os.urandom(IMAGE_BYTES)
        (content / "rootfs.img").write_bytes(image)
        (content / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat=plain\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        out = self.tmp / "bundles" / f"roomba-agent-{version}-{signer.cert_pem.stem}.raucb"
        done = subprocess.run(
            [
                "rauc",
                "bundle",
                f"--cert={signer.cert_pem}",
                f"--key={signer.key_pem}",
                str(content),
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return out, image

    def slot_holds(self, bootname: str, image: bytes) -> bool:
        with open(self.images[bootname], "rb") as f:
            return f.read(len(image)) == image

    def installer(self, version: str, restarts: list[int] | None = None) -> RaucInstaller:
        sink = restarts if restarts is not None else []
        return RaucInstaller(
            self.tmp / "state",
            version=version,
            restart=sink.append,
            conf=self.conf,
            bus_address=self.bus_address,
        )

    def close(self) -> None:
        self.stop_service()
        self.bus.terminate()
        self.bus.wait(30)
        if self.bus.stdout is not None:
            self.bus.stdout.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def install(inst: RaucInstaller, bundle: Path, version: str, trust: list[x509.Certificate]) -> None:
    asyncio.run(inst.install(bundle, manifest(version, trust[0]), trust))


def test_install_switch_reboot_commit_twice(rig: Rig) -> None:
    """0.1.0 (factory image in A) -> 0.2.0 in B -> 0.3.0 in A: each written by rauc install, switched to by
    the bootloader, marked good after the self-test and read back."""
    trust = [rig.signer.cert]
    restarts: list[int] = []
    inst = rig.installer("0.1.0", restarts)
    bundle, image = rig.bundle("0.2.0")
    assert inst.info(bundle, trust).version == "0.2.0"

    install(inst, bundle, "0.2.0", trust)
    assert rig.slot_holds("B", image)
    assert rig.bootloader_state() == {"primary": "B", "state.A": "good", "state.B": "bad"}
    slots = inst.slots()
    assert (slots.current, slots.trial, slots.pending) == ("0.1.0", None, None)
    assert slots.installed == frozenset({"0.1.0", "0.2.0"})

    inst.request_switch("0.2.0", 30.0, 300.0, {"jobId": "job-1"})
    pending = inst.slots().pending
    assert pending is not None and (pending["to"], pending["from"]) == ("0.2.0", "0.1.0")
    inst.restart(100)
    assert restarts == [100]

    assert rig.reboot() == "B"
    inst = rig.installer("0.2.0")
    slots = inst.slots()
    assert (slots.current, slots.previous, slots.pending) == ("0.2.0", "0.1.0", None)
    assert slots.trial is not None and slots.trial["version"] == "0.2.0"
    assert slots.trial["job"] == {"jobId": "job-1"} and slots.trial["bake_s"] == 30.0
    inst.commit("0.2.0")
    assert rig.bootloader_state() == {"primary": "B", "state.A": "good", "state.B": "good"}
    status = inst.status()
    booted = status.booted_slot
    assert booted is not None and (booted.name, booted.boot_status, booted.version) == (
        "rootfs.1",
        "good",
        "0.2.0",
    )
    slots = inst.slots()
    assert slots.trial is None and slots.last is not None
    assert (slots.last["result"], slots.last["from"], slots.last["to"]) == ("committed", "0.1.0", "0.2.0")

    bundle3, image3 = rig.bundle("0.3.0")
    install(inst, bundle3, "0.3.0", trust)
    assert rig.slot_holds("A", image3) and rig.slot_holds("B", image)
    inst.request_switch("0.3.0", 10.0, 300.0, {"jobId": "job-2"})
    assert rig.reboot() == "A"
    inst = rig.installer("0.3.0")
    inst.commit("0.3.0")
    slots = inst.slots()
    assert (slots.current, slots.previous) == ("0.3.0", "0.2.0")
    assert slots.installed == frozenset({"0.2.0", "0.3.0"})


def test_failed_self_test_rolls_back_to_the_previous_slot(rig: Rig) -> None:
    trust = [rig.signer.cert]
    inst = rig.installer("0.1.0")
    bundle, _ = rig.bundle("0.2.0")
    install(inst, bundle, "0.2.0", trust)
    inst.request_switch("0.2.0", 30.0, 300.0, {"jobId": "job-bad"})
    assert rig.reboot() == "B"

    trial = rig.installer("0.2.0")
    with pytest.raises(RaucError, match=re.escape("cannot commit 0.3.0")):
        trial.commit("0.3.0")
    trial.fail_trial("self-test: no OI sensor frames for 30 s")
    assert rig.bootloader_state() == {"primary": "A", "state.A": "good", "state.B": "bad"}

    assert rig.reboot() == "A"
    back = rig.installer("0.1.0")
    slots = back.slots()
    assert (slots.current, slots.trial, slots.pending) == ("0.1.0", None, None)
    assert slots.last is not None
    assert (slots.last["result"], slots.last["from"], slots.last["to"]) == ("rolled_back", "0.1.0", "0.2.0")
    assert slots.last["reason"] == "self-test: no OI sensor frames for 30 s"
    assert slots.last["job"] == {"jobId": "job-bad"}
    assert slots.broken["0.2.0"]["reason"] == "self-test: no OI sensor frames for 30 s"


def test_a_bundle_signed_by_another_key_changes_nothing(rig: Rig) -> None:
    other = make_signer(rig.tmp / "keys", "someone-else")
    bundle, image = rig.bundle("0.2.0", signer=other)
    inst = rig.installer("0.1.0")

    with pytest.raises(RaucError) as checked:  # the agent's trust says no: rauc install is never called
        install(inst, bundle, "0.2.0", [rig.signer.cert])
    assert checked.value.kind == "signature" and isinstance(checked.value, InstallError)

    with pytest.raises(RaucError) as refused:  # the agent trusts it, RAUC's keyring does not
        install(inst, bundle, "0.2.0", [other.cert])
    assert refused.value.kind == "signature"
    assert "rauc install failed" in str(refused.value)

    assert not rig.slot_holds("B", image)
    assert rig.bootloader_state() == {"primary": "A", "state.A": "good", "state.B": "bad"}
    status = inst.status()
    assert [s.version for s in status.slots] == [None, None]


@pytest.mark.parametrize(
    ("bundle_version", "compatible", "match"),
    [
        pytest.param(
            "0.2.1", COMPATIBLE, "bundle is version 0.2.1, the release is 0.2.0", id="not_the_release"
        ),
        pytest.param("0.2.0", "some-other-robot", "for 'some-other-robot'", id="other_compatible"),
    ],
)
def test_a_bundle_for_something_else_is_refused(
    rig: Rig, bundle_version: str, compatible: str, match: str
) -> None:
    bundle, image = rig.bundle(bundle_version, compatible=compatible)
    inst = rig.installer("0.1.0")
    with pytest.raises(RaucError, match=re.escape(match)) as refused:
        install(inst, bundle, "0.2.0", [rig.signer.cert])
    assert refused.value.kind == "compat"
    assert not rig.slot_holds("B", image)


def test_the_noop_bootloader_installs_but_cannot_record_a_commit(tmp_path: Path) -> None:
    rig = Rig(tmp_path, bootloader="noop")
    try:
        inst = rig.installer("0.1.0")
        bundle, image = rig.bundle("0.2.0")
        install(inst, bundle, "0.2.0", [rig.signer.cert])
        assert rig.slot_holds("B", image)
        status = inst.status()
        assert status.primary is None  # noop cannot say which slot starts next
        assert {s.boot_status for s in status.slots} == {"bad"}  # nor whether a slot is good

        marked = rig.rauc("status", "mark-good", "booted")
        assert marked.returncode == 0, marked.stderr  # RAUC accepts it and drops it
        with pytest.raises(RaucError, match="noop bootloader records nothing") as refused:
            inst.commit("0.1.0")
        assert refused.value.kind == "state"
    finally:
        rig.close()


STATUS = {
    "compatible": COMPATIBLE,
    "variant": "",
    "booted": "B",
    "boot_primary": "rootfs.1",
    "slots": [
        {
            "rootfs.1": {
                "class": "rootfs",
                "device": "/x/rootfs.1.img",
                "type": "raw",
                "bootname": "B",
                "state": "booted",
                "parent": None,
                "mountpoint": None,
                "boot_status": "good",
                "slot_status": {"bundle": {"compatible": COMPATIBLE, "version": "0.2.0"}, "status": "ok"},
            }
        },
        {
            "rootfs.0": {
                "class": "rootfs",
                "device": "/x/rootfs.0.img",
                "type": "raw",
                "bootname": "A",
                "state": "inactive",
                "parent": None,
                "mountpoint": None,
                "boot_status": "good",
                "slot_status": {"bundle": {"compatible": None}},
            }
        },
    ],
}


def test_parse_status_of_rauc_1_8_json() -> None:
    status = parse_status(STATUS)
    assert [s.name for s in status.slots] == ["rootfs.0", "rootfs.1"]
    booted, other = status.booted_slot, status.other_slot()
    assert booted is not None and other is not None
    assert (booted.name, booted.version, booted.bootname) == ("rootfs.1", "0.2.0", "B")
    assert (other.name, other.version, other.boot_status) == ("rootfs.0", None, "good")
    assert status.primary_slot == booted


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"slots": []}, id="no_compatible"),
        pytest.param({"compatible": COMPATIBLE}, id="no_slots"),
        pytest.param({"compatible": COMPATIBLE, "slots": [{"a": {}, "b": {}}]}, id="two_names_in_one_entry"),
        pytest.param({"compatible": COMPATIBLE, "slots": [{"a": "x"}]}, id="slot_not_an_object"),
    ],
)
def test_parse_status_refuses_what_it_does_not_understand(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rauc status"):
        parse_status(doc)


def test_parse_info() -> None:
    info = parse_info({"compatible": COMPATIBLE, "version": "0.2.0", "images": []})
    assert (info.compatible, info.version) == (COMPATIBLE, "0.2.0")
    with pytest.raises(ValueError, match="no compatible or version"):
        parse_info({"compatible": COMPATIBLE})
