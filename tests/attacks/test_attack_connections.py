"""Slowloris and idle connections: the HOMS closes them and still serves real clients.

Before the fix a socket that sent half a header (or announced a body and never sent it) held
its connection for ever, and enough of them shut every real client out.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from hp2p.homs.launch import HomsProcess, start_homs

pytestmark = pytest.mark.slow

TIMEOUT = 0.5  # the HOMS's header and body timeouts in these tests
WITHIN = 5.0  # how long a test waits for the HOMS to close a socket


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomsProcess]:
    options = ["--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT)]
    options += ["--max-connections", "10", "--idle-timeout", "1"]
    with start_homs(tmp_path_factory.mktemp("guarded"), None, *options) as homs:
        yield homs


def _connect(homs: HomsProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", homs.port), timeout=WITHIN)
    sock.settimeout(WITHIN)
    return sock


def _closed_within(sock: socket.socket) -> float:
    """Seconds until the HOMS closed ``sock`` (EOF or reset); fails after WITHIN seconds."""
    start = time.monotonic()
    try:
        while True:  # bounded by the socket timeout: recv raises after WITHIN s of silence
            if not sock.recv(4096):
                break
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the HOMS kept the connection open for {WITHIN} s")
    finally:
        sock.close()
    return time.monotonic() - start


def test_half_a_header_is_closed_within_the_header_timeout(guarded: HomsProcess) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: homs\r\nX-Slow: ")
    assert _closed_within(sock) < TIMEOUT + 2.0


def test_a_silent_connection_is_closed_within_the_header_timeout(guarded: HomsProcess) -> None:
    assert _closed_within(_connect(guarded)) < TIMEOUT + 2.0


def test_a_missing_body_is_closed_within_the_body_timeout(guarded: HomsProcess) -> None:
    sock = _connect(guarded)
    head = b"POST /homs HTTP/1.1\r\nHost: homs\r\nContent-Type: application/json\r\n"
    sock.sendall(head + b'Content-Length: 1000\r\n\r\n{"overlay":')
    assert _closed_within(sock) < TIMEOUT + 2.0


def test_an_idle_keep_alive_connection_is_closed_within_the_idle_timeout(
    guarded: HomsProcess,
) -> None:
    sock = _connect(guarded)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: homs\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:  # bounded by the socket timeout
        chunk = sock.recv(4096)
        assert chunk, "closed before answering"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert _closed_within(sock) < 1.0 + 2.0


def test_many_idle_sockets_do_not_shut_out_a_real_client(guarded: HomsProcess) -> None:
    idle = [_connect(guarded) for _ in range(40)]  # four times --max-connections
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # half of them started a header
        answer = httpx.get(f"{guarded.url}/health", timeout=WITHIN)
        assert answer.status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_complete_request_is_served_as_usual(guarded: HomsProcess) -> None:
    with httpx.Client(base_url=guarded.url, timeout=WITHIN) as client:
        for _ in range(3):  # on one keep-alive connection
            assert client.get("/health").status_code == 200
