"""What we issue works with a real Mosquitto over mutual TLS: CA, server certificate, device certificates."""

from __future__ import annotations

import queue
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from provisioning import certs
from provisioning.ca import CertificateAuthority, init_ca, issue_server_cert
from provisioning.device import Identity, create_identity, install_certificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path, file_ca: CertificateAuthority) -> Iterator[int]:
    cert, key = issue_server_cert(file_ca, tmp_path / "broker", ["localhost"], ["127.0.0.1"])
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite roomba/%u/#\n")
    for _attempt in range(3):  # the free port can be taken by someone else before mosquitto binds it
        port = free_port()
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            f"user root\nper_listener_settings false\nallow_anonymous false\nacl_file {acl}\n"
            f"listener {port} 127.0.0.1\ncafile {file_ca.cert_path}\ncertfile {cert}\nkeyfile {key}\n"
            "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
        )
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if _wait_listening(proc, port):
            break
        err = proc.stderr.read() if proc.stderr else b""
        assert b"Address already in use" in err, err
    else:
        pytest.fail("mosquitto found no free port in 3 attempts")
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once mosquitto accepts connections; False if it exited (e.g. the port was taken)."""
    deadline = time.monotonic() + 10
    while proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not start listening"
            time.sleep(0.05)
    return False


def connect(ident: Identity, port: int) -> tuple[mqtt.Client, queue.Queue[object]]:
    events: queue.Queue[object] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ident.thing)
    client.tls_set(ca_certs=str(ident.ca_path), certfile=str(ident.cert_path), keyfile=str(ident.key_path))
    client.on_connect = lambda c, u, flags, rc, props: events.put(("connect", rc.is_failure))
    client.on_message = lambda c, u, msg: events.put(("message", msg.topic, msg.payload))
    client.on_subscribe = lambda c, u, mid, codes, props: events.put(
        ("subscribed", [x.is_failure for x in codes])
    )
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client, events


def test_device_connects_and_publishes_over_mutual_tls(
    tmp_path: Path, broker: int, file_ca: CertificateAuthority
) -> None:
    """An identity we issue is accepted by a real Mosquitto with require_certificate, and can publish."""
    ident = create_identity(file_ca, "robot-mqtt", tmp_path / "robot-mqtt")
    client, events = connect(ident, broker)
    try:
        assert events.get(timeout=10) == ("connect", False)
        client.subscribe("roomba/robot-mqtt/#", qos=1)
        assert events.get(timeout=10) == ("subscribed", [False])
        client.publish("roomba/robot-mqtt/telemetry", b"hello", qos=1).wait_for_publish(10)
        assert events.get(timeout=10) == ("message", "roomba/robot-mqtt/telemetry", b"hello")
    finally:
        client.loop_stop()
        client.disconnect()


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, broker: int, file_ca: CertificateAuthority
) -> None:
    """A certificate signed by another CA is refused at the TLS handshake, even with our root alongside."""
    rogue_ca = init_ca(tmp_path / "rogue", common_name="Rogue CA")
    rogue = create_identity(rogue_ca, "robot-rogue", tmp_path / "rogue-id", root_ca=file_ca.cert_path)
    ctx = ssl.create_default_context(cafile=str(rogue.ca_path))
    ctx.load_cert_chain(rogue.cert_path, rogue.key_path)
    with (
        socket.create_connection(("127.0.0.1", broker), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match=r"(?i)unknown ca|certificate"),
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)


AWSCRT_CONNECT = """
import queue
from awscrt import io, mqtt5
from awsiot import mqtt5_client_builder

connected, stopped = queue.Queue(), queue.Queue()
client = mqtt5_client_builder.mtls_with_pkcs11(
    pkcs11_lib=io.Pkcs11Lib(file=params["module"]),
    user_pin=params["pin"],
    token_label=params["token"],
    private_key_label=params["label"],
    cert_filepath=params["cert"],
    endpoint="127.0.0.1",
    port=params["port"],
    ca_filepath=params["ca"],
    client_id=params["label"],
    on_lifecycle_connection_success=lambda data: connected.put("connected"),
    on_lifecycle_connection_failure=lambda data: connected.put(f"failed: {data.exception}"),
    on_lifecycle_stopped=lambda data: stopped.put("stopped"),
)
client.start()
outcome = {"connect": connected.get(timeout=15)}
if outcome["connect"] == "connected":
    packet = mqtt5.PublishPacket(topic=f"roomba/{params['label']}/events", payload=b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE)
    outcome["puback"] = client.publish(packet).result(10).puback.reason_code.name
client.stop()
outcome["stop"] = stopped.get(timeout=10)
print(json.dumps(outcome))
"""


def test_token_device_key_connects_with_awscrt(
    tmp_path: Path, broker: int, file_ca: CertificateAuthority, softhsm, token: str
) -> None:
    """The robot flow with the key in a token: keygen in the token, station signs, awscrt connects via PKCS#11."""
    robot = tmp_path / "robot"
    p11 = ["--pkcs11-module", softhsm.module, "--token", token]
    result = softhsm.cli(
        "device",
        "keygen",
        "--thing",
        "robot-p11",
        "--out",
        str(robot),
        *p11,
        env={"ROOMBA_PKCS11_PIN": softhsm.pin},
    )
    assert result.returncode == 0, result.stderr
    cert = file_ca.sign_csr((robot / "device.csr").read_bytes())
    ident = install_certificate(robot, certs.cert_pem(cert), root_ca=file_ca.cert_path)
    outcome = softhsm.python(
        AWSCRT_CONNECT,
        module=softhsm.module,
        pin=softhsm.pin,
        token=token,
        label="robot-p11",
        cert=ident.cert_path,
        ca=ident.ca_path,
        port=broker,
    )
    assert outcome == {"connect": "connected", "puback": "NO_MATCHING_SUBSCRIBERS", "stop": "stopped"}
