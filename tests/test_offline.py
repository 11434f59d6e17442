"""The network guard (tests/network_guard.py, installed by tests/conftest.py): a public address
or name is refused with an error naming the test, and the test is failed even if the error was
swallowed; this machine (loopback TCP, unix sockets) stays reachable."""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request

import pytest
from network_guard import NetworkBlockedError, is_local_host

PUBLIC_ADDRESS = ("93.184.216.34", 80)  # a public IPv4 address (example.com's old one)
PUBLIC_NAME = "example.com"
TIMEOUT_S = 2.0  # were the guard off, a connection attempt would end by this


def test_a_public_address_is_refused_naming_the_test(network_attempts: list[str]) -> None:
    name = "test_offline.py::test_a_public_address_is_refused_naming_the_test"
    with pytest.raises(NetworkBlockedError, match=name):
        socket.create_connection(PUBLIC_ADDRESS, timeout=TIMEOUT_S)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as raw:
        raw.settimeout(TIMEOUT_S)
        with pytest.raises(NetworkBlockedError, match="connect to"):
            raw.connect(PUBLIC_ADDRESS)
        with pytest.raises(NetworkBlockedError, match="connect_ex to"):
            raw.connect_ex(PUBLIC_ADDRESS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            pytest.raises(NetworkBlockedError, match="sendto"):
        udp.sendto(b"x", PUBLIC_ADDRESS)
    with pytest.raises(NetworkBlockedError, match="name lookup of 'example.com'"):
        socket.getaddrinfo(PUBLIC_NAME, 443)
    # urllib sees an OSError, as with the network really off
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{PUBLIC_NAME}/", timeout=TIMEOUT_S)
    assert len(network_attempts) == 6 and all(name in a for a in network_attempts)
    network_attempts.clear()  # made on purpose: the test is not failed for them


def test_a_swallowed_attempt_is_still_recorded(network_attempts: list[str]) -> None:
    with contextlib.suppress(OSError):
        socket.create_connection(PUBLIC_ADDRESS, timeout=TIMEOUT_S)
    assert len(network_attempts) == 1 and "create_connection" in network_attempts[0]
    network_attempts.clear()


def test_this_machine_stays_reachable(network_attempts: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as client:
                peer, _ = server.accept()
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"
                peer.close()
    left, right = socket.socketpair()  # a unix socket pair
    with left, right:
        left.sendall(b"ok")
        assert right.recv(2) == b"ok"
    assert network_attempts == []


@pytest.mark.parametrize(("host", "local"), [
    ("localhost", True), ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
    ("[::1]", True), ("", True), (None, True), ("0.0.0.0", True), (socket.gethostname(), True),
    ("8.8.8.8", False), ("2001:4860:4860::8888", False), ("example.com", False),
    ("10.0.0.1", False),
])
def test_which_hosts_are_this_machine(host: str | None, local: bool) -> None:
    assert is_local_host(host) is local
