"""The network guard the suite runs under (tests/conftest.py installs it): see there."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
ANY_ADDRESS = ("", "0.0.0.0", "::")  # the unspecified address: this machine
REAL = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex,
        "sendto": socket.socket.sendto, "getaddrinfo": socket.getaddrinfo,
        "create_connection": socket.create_connection}
STATE: dict[str, Any] = {"test": "collection", "attempts": []}  # the running test, its tries


class NetworkBlockedError(socket.gaierror):
    """A test reached for the network (an OSError, as with the network really off, so code
    that handles being offline behaves as it would there)."""

    def __init__(self, what: str):
        super().__init__(errno.ENETUNREACH, f"{STATE['test']}: network access blocked in tests "
                         f"({what}); tests must not need the network (tests/network_guard.py)")


def is_local_host(host: object) -> bool:
    """True for this machine: None, the unspecified address, loopback names and addresses and
    this host's name; False for any other name or address (looking it up is network use)."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()  # [::1], fe80::1%eth0
    if name in ANY_ADDRESS or name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    if name == socket.gethostname().lower():
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_local_address(address: object) -> bool:
    """A socket address: (host, port[, ...]) is checked; a unix path (str or bytes) and the
    addresses of other families are local."""
    if isinstance(address, tuple) and address:
        return is_local_host(address[0])
    return True


def _block(what: str) -> NetworkBlockedError:
    error = NetworkBlockedError(what)
    STATE["attempts"].append(str(error))
    return error


def _connect(self: socket.socket, address: Any) -> None:
    if not is_local_address(address):
        raise _block(f"connect to {address!r}")
    return REAL["connect"](self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    if not is_local_address(address):
        raise _block(f"connect_ex to {address!r}")
    return REAL["connect_ex"](self, address)


def _sendto(self: socket.socket, data: bytes, *args: Any) -> int:
    address = args[-1]  # sendto(data, address) or sendto(data, flags, address)
    if not is_local_address(address):
        raise _block(f"sendto {address!r}")
    return REAL["sendto"](self, data, *args)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> list[Any]:
    if not is_local_host(host):
        raise _block(f"name lookup of {host!r}")
    return REAL["getaddrinfo"](host, *args, **kwargs)


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    if not is_local_address(address):
        raise _block(f"create_connection to {address!r}")
    return REAL["create_connection"](address, *args, **kwargs)


def install() -> None:
    """Block the network in this process (until restore())."""
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.socket.sendto = _sendto
    socket.getaddrinfo = _getaddrinfo
    socket.create_connection = _create_connection


def restore() -> None:
    socket.socket.connect = REAL["connect"]
    socket.socket.connect_ex = REAL["connect_ex"]
    socket.socket.sendto = REAL["sendto"]
    socket.getaddrinfo = REAL["getaddrinfo"]
    socket.create_connection = REAL["create_connection"]
