"""Benchmark of the local cloud's shadow service; prints ONE JSON line.

- ``updates_per_s``: accepted shadow updates per second with ``--robots`` robots (awscrt MQTT5 clients in
  this process, each keeping ``--window`` updates in flight) over ``--seconds``.
- ``p50_ms`` / ``p99_ms``: update → update/accepted round trip for one robot, sequential.
- ``baseline_p50_ms`` / ``baseline_p99_ms``: a plain broker echo through the same Mosquitto (a client
  publishing to a topic it subscribes to; the operator identity, since a robot may not receive on its own
  ``roomba/<thing>/...`` topics); ``ratio_p50`` = p50 / baseline.

The local cloud runs with the per-thing rate limit off (``rate_limit_per_thing=0``; AWS's 20/s would cap
100 robots at 2,000/s). Clients use QoS1 publishes, QoS0 response subscriptions and flow control NONE: the
SDK builder's default flow control (AWS IoT Core's limits) caps a client at about 100 publishes/s, and QoS0
responses avoid a Nagle/delayed-ACK stall of about 40 ms after each PUBACK.

    .venv/bin/python bench/shadow_service.py [--robots 100] [--window 8] [--seconds 5] [--samples 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import ssl
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from awscrt import io, mqtt5
from awsiot import mqtt5_client_builder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base import logs
from localcloud import mqtt_lite as mq
from localcloud.layout import LOCAL_TOPIC_ROOT, OPERATOR_IDENTITY
from localcloud.testing import IdentityPaths, LocalCloud
from localcloud.tlsio import TlsConnection
from shadow.topics import shadow_topic

QOS0 = mqtt5.QoS.AT_MOST_ONCE
QOS1 = mqtt5.QoS.AT_LEAST_ONCE


def make_client(
    cloud: LocalCloud, ident: IdentityPaths, bootstrap: io.ClientBootstrap, on_publish: Any
) -> tuple[mqtt5.Client, Future[None]]:
    connected: Future[None] = Future()

    def on_success(_data: mqtt5.LifecycleConnectSuccessData) -> None:
        if not connected.done():
            connected.set_result(None)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=cloud.endpoint,
        port=cloud.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(ident.ca),
        client_id=ident.thing,
        client_bootstrap=bootstrap,
        enable_metrics_collection=False,
        extended_validation_and_flow_control_options=mqtt5.ExtendedValidationAndFlowControlOptions.NONE,
        on_publish_received=on_publish,
        on_lifecycle_connection_success=on_success,
    )
    client.start()
    return client, connected


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_latency(
    cloud: LocalCloud, bootstrap: io.ClientBootstrap, samples: int
) -> tuple[list[float], list[float]]:
    ident = cloud.identity("bench-latency")
    thing = ident.thing
    arrived = threading.Event()

    def on_publish(_data: mqtt5.PublishReceivedData) -> None:
        arrived.set()

    client, connected = make_client(cloud, ident, bootstrap, on_publish)
    connected.result(30)
    accepted = shadow_topic(thing, "update", "accepted")
    client.subscribe(mqtt5.SubscribePacket([mqtt5.Subscription(accepted, QOS0)])).result(10)
    # A robot may not receive on roomba/<thing>/... (the device policy), so the echo runs as the operator.
    operator = cloud.identity(OPERATOR_IDENTITY)
    echo_client, echo_connected = make_client(
        cloud,
        IdentityPaths(
            f"{OPERATOR_IDENTITY}-bench-{uuid.uuid4().hex[:8]}", operator.cert, operator.key, operator.ca
        ),
        bootstrap,
        on_publish,
    )
    echo_connected.result(30)
    echo = f"{LOCAL_TOPIC_ROOT}/bench/{uuid.uuid4().hex}"
    echo_client.subscribe(mqtt5.SubscribePacket([mqtt5.Subscription(echo, QOS0)])).result(10)

    def round_trips(sender: mqtt5.Client, topic: str, payload_of: Any) -> list[float]:
        out = []
        for i in range(samples + 50):
            arrived.clear()
            t0 = time.perf_counter()
            sender.publish(mqtt5.PublishPacket(topic=topic, payload=payload_of(i), qos=QOS1))
            if not arrived.wait(5):
                raise RuntimeError(f"no answer on {topic} within 5 s")
            if i >= 50:
                out.append((time.perf_counter() - t0) * 1000)
        return out

    shadow = round_trips(
        client,
        shadow_topic(thing, "update"),
        lambda i: json.dumps({"state": {"reported": {"seq": i}}, "clientToken": str(i)}),
    )
    base = round_trips(echo_client, echo, lambda i: json.dumps({"seq": i}))
    client.stop()
    echo_client.stop()
    return shadow, base


def measure_throughput(
    cloud: LocalCloud,
    bootstrap: io.ClientBootstrap,
    robots: int,
    seconds: float,
    window: int,
    cpu_us_per_update: dict[str, float],
) -> float:
    count = [0]
    lock = threading.Lock()
    stop = threading.Event()
    clients: list[mqtt5.Client] = []
    things = [f"bench-{i:03d}" for i in range(robots)]
    idents = [cloud.identity(t) for t in things]
    payloads = {t: json.dumps({"state": {"reported": {"battery": 80, "mode": "clean"}}}) for t in things}

    def sender(thing: str, idx: int) -> Any:
        topic = shadow_topic(thing, "update")

        def on_publish(_data: mqtt5.PublishReceivedData) -> None:
            with lock:
                count[0] += 1
            if not stop.is_set():
                clients[idx].publish(mqtt5.PublishPacket(topic=topic, payload=payloads[thing], qos=QOS1))

        return on_publish

    futures = []
    for idx, (thing, ident) in enumerate(zip(things, idents, strict=True)):
        client, connected = make_client(cloud, ident, bootstrap, sender(thing, idx))
        clients.append(client)
        futures.append(connected)
    for f in futures:
        f.result(60)
    subs = [
        c.subscribe(mqtt5.SubscribePacket([mqtt5.Subscription(shadow_topic(t, "update", "accepted"), QOS0)]))
        for c, t in zip(clients, things, strict=True)
    ]
    for s in subs:
        s.result(10)
    for c, t in zip(clients, things, strict=True):
        for _ in range(window):
            c.publish(mqtt5.PublishPacket(topic=shadow_topic(t, "update"), payload=payloads[t], qos=QOS1))
    time.sleep(1.0)  # warm-up
    pids = {name: cloud.child_pid(name) for name in ("shadow-service", "mosquitto")}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own0 = time.process_time()
    with lock:
        start_count, t0 = count[0], time.perf_counter()
    time.sleep(seconds)
    with lock:
        done, elapsed = count[0] - start_count, time.perf_counter() - t0
    cpu_used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    cpu_used["bench_clients"] = time.process_time() - own0
    cpu_us_per_update.update({k: round(v / max(done, 1) * 1e6, 1) for k, v in cpu_used.items()})
    stop.set()
    time.sleep(0.3)
    for c in clients:
        c.stop()
    return done / elapsed


def measure_throughput_lean(
    cloud: LocalCloud, robots: int, seconds: float, window: int, cpu_us_per_update: dict[str, float]
) -> float:
    """Many robots on raw TLS sockets speaking MQTT 3.1.1 via ``localcloud.mqtt_lite``: a load generator cheap
    enough that the figure measures the stand-in (broker + shadow service), not the client library."""
    things = [f"bench-{i:03d}" for i in range(robots)]
    conns: dict[socket.socket, tuple[str, TlsConnection, mq.PacketParser]] = {}
    for thing in things:
        ident = cloud.identity(thing)
        ctx = ssl.create_default_context(cafile=str(ident.ca))
        ctx.load_cert_chain(str(ident.cert), str(ident.key))
        conn = TlsConnection.connect(cloud.endpoint, cloud.port, ctx)
        conn.send(mq.connect(thing, keepalive=60))
        conn.send(mq.subscribe(1, [(shadow_topic(thing, "update", "accepted"), 0)]))
        parser = mq.PacketParser()
        acked = False
        while not acked:
            parser.feed(conn.recv())
            acked = any(p.type == mq.SUBACK for p in parser.packets())
        conns[conn.sock] = (thing, conn, parser)
    payload = json.dumps({"state": {"reported": {"battery": 80, "mode": "clean"}}}).encode()
    requests = {t: mq.publish(shadow_topic(t, "update"), payload, 1, 7) for t in things}
    for thing, conn, _p in conns.values():
        conn.send(requests[thing] * window)
    count = 0
    pids = {name: cloud.child_pid(name) for name in ("shadow-service", "mosquitto")}
    warm_until = time.perf_counter() + 1.0
    t0 = end = 0.0
    start_count = 0
    cpu0: dict[str, float] = {}
    own0 = 0.0
    while True:
        now = time.perf_counter()
        if not t0 and now >= warm_until:
            t0, end, start_count = now, now + seconds, count
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            own0 = time.process_time()
        if t0 and now >= end:
            break
        readable, _, _ = select.select(list(conns), [], [], 1.0)
        for sock in readable:
            thing, conn, parser = conns[sock]
            parser.feed(conn.recv())
            answered = sum(1 for p in parser.packets() if p.type == mq.PUBLISH)
            if answered:
                count += answered
                conn.send(requests[thing] * answered)
    elapsed = time.perf_counter() - t0
    done = count - start_count
    cpu_used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    cpu_used["bench_clients"] = time.process_time() - own0
    cpu_us_per_update.update({k: round(v / max(done, 1) * 1e6, 1) for k, v in cpu_used.items()})
    for _t, conn, _p in conns.values():
        conn.close()
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--client", choices=("lean", "awscrt"), default="lean", help="throughput load generator")
    p.add_argument("--response-qos", type=int, default=None, help="override the service's response QoS")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {"rate_limit_per_thing": 0}
    if args.response_qos is not None:
        settings["response_qos"] = args.response_qos
    logs.configure("warning")
    bootstrap = io.ClientBootstrap(io.EventLoopGroup(1), io.DefaultHostResolver(io.EventLoopGroup(1)))
    with LocalCloud.start(**settings) as cloud:
        shadow, base = measure_latency(cloud, bootstrap, args.samples)
        cpu: dict[str, float] = {}
        if args.client == "awscrt":
            rate = measure_throughput(cloud, bootstrap, args.robots, args.seconds, args.window, cpu)
        else:
            rate = measure_throughput_lean(cloud, args.robots, args.seconds, args.window, cpu)
        settings_used = json.loads(cloud.dir.settings_path.read_text())
    p50, base50 = statistics.median(shadow), statistics.median(base)
    result = {
        "bench": "shadow_service",
        "run": uuid.uuid4().hex[:8],
        "updates_per_s": round(rate, 1),
        "robots": args.robots,
        "client": args.client,
        "window": args.window,
        "p50_ms": round(p50, 3),
        "p99_ms": round(percentile(shadow, 0.99), 3),
        "baseline_p50_ms": round(base50, 3),
        "baseline_p99_ms": round(percentile(base, 0.99), 3),
        "ratio_p50": round(p50 / base50, 2),
        "samples": args.samples,
        "cpu_us_per_update": cpu,
        "response_qos": settings_used.get("response_qos"),
        "durable": settings_used.get("durable"),
        "rate_limit_per_thing": settings_used.get("rate_limit_per_thing"),
        "targets": {"updates_per_s": 5000, "p50_ms": 2.0, "p99_ms": 10.0},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
