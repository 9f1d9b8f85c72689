"""Nagle off on the MQTT connection (awscrt has no option for it): only the sockets to the broker's port."""

from __future__ import annotations

import socket

from agent.mqtt import set_tcp_nodelay


def test_nodelay_set_on_connections_to_the_peer_port_only() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_server(("127.0.0.1", 0)) as other:
        port = server.getsockname()[1]
        to_broker = socket.create_connection(("127.0.0.1", port))
        to_other = socket.create_connection(("127.0.0.1", other.getsockname()[1]))
        accepted, _ = server.accept()
        try:
            assert to_broker.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert set_tcp_nodelay(port) == 1
            assert to_broker.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert to_other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # peer is the client
        finally:
            for s in (to_broker, to_other, accepted):
                s.close()
