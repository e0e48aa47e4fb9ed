"""The bench finds the Kafka and MongoDB it measures from the servers it talks to, not from
pid files: another set of local servers (the bench's own, say) may run beside the tests'."""

from __future__ import annotations

import os
import socket

from bench.city import listening_pid


def test_the_process_listening_on_a_port_is_found_from_the_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listening_pid(port) == os.getpid()
    assert listening_pid(port) is None  # closed: nobody listens there any more


def test_a_connected_socket_is_not_taken_for_the_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            # The client's own end has a port of its own, in no listening state.
            mine = client.getsockname()[1]
            assert listening_pid(mine) is None
            assert listening_pid(port) == os.getpid()
