"""An answer given before the body was read (415, 404, 405) must still reach the client.

The sync worker closes the socket after each response; a close with unread bytes in the receive buffer makes
the kernel send a TCP reset instead of a FIN, which can cost the client the answer ("connection reset by
peer"). Clients send the headers and the body in separate writes (urllib3 does), so the body is often still
unread when the app answers from the headers alone. gunicorn >= 23's sync worker half-closes and drains
before closing; the body here is larger than its 64 KiB drain, the case most likely to break.
"""

from __future__ import annotations

import socket
import time

import pytest

pytestmark = pytest.mark.live

BODY = b'{"model": {"kind": "neuron"}, "inputs": {"x": 1, "y": 0, "w": 1, "b": 0}}' + b" " * 300_000


def exchange(url: str, method: str, path: str, content_type: str, body: bytes) -> bytes:
    """Headers, then the body in a second write, then wait a moment before reading, as a busy client would."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        time.sleep(0.05)  # the server has the headers alone when it starts on the request
        sock.sendall(body)
        time.sleep(0.3)  # the answer (and, without the fix, the reset) arrives before the client reads
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)  # ConnectionResetError here is the bug
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize(
    ("method", "path", "content_type", "status"),
    [
        ("POST", "/v1/gradients", "text/plain", b"415"),
        ("POST", "/nope", "application/json", b"404"),
        ("DELETE", "/v1/gradients", "application/json", b"405"),
    ],
)
def test_an_answer_before_the_body_is_read_is_not_reset(live_server, method, path, content_type, status):
    for _ in range(3):
        response = exchange(live_server.url, method, path, content_type, BODY)
        assert response.split(b" ", 2)[1] == status, response[:200]
