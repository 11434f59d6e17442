"""The whole suite runs with the network off (docs/RELIABILITY.md): from collection to the end,
a connection (TCP connect, UDP sendto) or a name lookup for anything but this machine raises
NetworkBlockedError (tests/network_guard.py) naming the test, and a test that attempted one
fails at its teardown even when the code under test swallowed the error. Loopback (localhost,
127.0.0.0/8, ::1, this host's name) and unix sockets stay open: the web viewer's server, DDP's
gloo rendezvous.

This guards the pytest process only; what a test starts as a subprocess is covered by running
the suite with the network really off: experiments/offline_suite.sh (`unshare -rn`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from network_guard import STATE, install, restore


def pytest_configure(config: pytest.Config) -> None:
    """Block the network before collection imports anything."""
    install()


def pytest_unconfigure(config: pytest.Config) -> None:
    restore()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Name the running test in the error (before its fixtures are set up)."""
    STATE["test"], STATE["attempts"] = item.nodeid, []


@pytest.fixture(autouse=True)
def network_attempts() -> Iterator[list[str]]:
    """The network attempts of the running test (its fixtures' included); the test fails at
    teardown when there were any. A test that makes some on purpose empties the list."""
    yield STATE["attempts"]
    attempts, STATE["attempts"] = STATE["attempts"], []
    if attempts:
        pytest.fail("the test reached for the network:\n" + "\n".join(attempts), pytrace=False)
