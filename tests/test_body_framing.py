"""A body whose HTTP framing breaks is the client's error, answered as problem+json, never computed or a 500.

Raw sockets, because `requests` cannot send a malformed chunked encoding or stop short of its Content-Length.
gunicorn's de-chunking stream raises its own exceptions (InvalidChunkSize, ChunkMissingTerminator, NoMoreData) on
a malformed encoding, and returns what arrived of a Content-Length body when the client closes early; a client that
stalls holds the worker until the request's deadline, which is the client's delay (408), not a computation (503).
"""

from __future__ import annotations

import gzip
import json
import socket
import time

import pytest

from conftest import TUTORIAL_NEURON, GunicornServer

pytestmark = pytest.mark.live

BODY = json.dumps(TUTORIAL_NEURON).encode()
PROBLEM = b"application/problem+json"
WALL = 2.0
SLACK = 3.0


def exchange(url: str, head: str, body: bytes, half_close: bool = False) -> tuple[int, bytes, bytes]:
    """(status, raw headers, body) of one request sent as raw bytes; `half_close`: the client stops sending."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WALL + 20) as sock:
        sock.sendall(f"{head}Host: {host}\r\nConnection: close\r\n\r\n".encode() + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + WALL + 20
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    headers, _, payload = data.partition(b"\r\n\r\n")
    return int(headers.split(b" ", 2)[1]), headers, payload


def chunked(path: str) -> str:
    return f"POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"


def with_length(path: str, length: int) -> str:
    return f"POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


MALFORMED_CHUNKS = {
    "size not hex": b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
    "negative size": b"-5\r\n" + BODY + b"\r\n0\r\n\r\n",
    "no CRLF after the data": b"%x\r\n%sXX0\r\n\r\n" % (len(BODY), BODY),
    "100 KB chunk extension": b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(BODY), b"e" * 100_000, BODY),
}


@pytest.mark.parametrize("path", ["/v1/gradients", "/v1/check", "/v1/batch"])
@pytest.mark.parametrize("case", sorted(MALFORMED_CHUNKS))
def test_a_malformed_chunked_body_is_a_400(live_server, path, case):
    status, headers, payload = exchange(live_server.url, chunked(path), MALFORMED_CHUNKS[case])
    assert status == 400, payload
    assert PROBLEM in headers
    problem = json.loads(payload)
    assert problem["type"] == "/problems/incomplete-body"
    assert "could not be read" in problem["detail"]


def test_a_chunked_body_cut_off_by_the_client_is_a_400(live_server):
    status, headers, payload = exchange(
        live_server.url, chunked("/v1/gradients"), b"%x\r\n%s" % (len(BODY) * 2, BODY), half_close=True
    )
    assert status == 400, payload
    assert json.loads(payload)["type"] == "/problems/incomplete-body"


def test_a_body_shorter_than_its_content_length_is_a_400_not_computed(live_server):
    """The first bytes alone would be valid JSON: computing them would answer a request never sent."""
    status, headers, payload = exchange(
        live_server.url, with_length("/v1/gradients", len(BODY) + 100), BODY, half_close=True
    )
    assert status == 400, payload
    problem = json.loads(payload)
    assert problem["type"] == "/problems/incomplete-body"
    assert (
        problem["detail"]
        == f"The body ended after {len(BODY)} of the {len(BODY) + 100} bytes its Content-Length announced."
    )


def test_a_whole_chunked_body_still_computes(live_server):
    status, _, payload = exchange(
        live_server.url, chunked("/v1/gradients"), chunk(BODY[:20]) + chunk(BODY[20:]) + b"0\r\n\r\n"
    )
    assert status == 200, payload
    assert round(json.loads(payload)["loss"], 4) == 6.7012


@pytest.mark.parametrize("path", ["/v1/gradients", "/v1/check", "/v1/batch", "/v1/grade"])
@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate, chunked", "GZip,chunked"])
def test_a_transfer_coding_other_than_chunked_is_a_415_before_the_body_is_read(live_server, path, coding):
    """gunicorn removes the chunking and hands the gzip bytes on: they were parsed as text (a 400 about
    surrogates). Refused as a Content-Encoding is, naming the header, with the request id."""
    head = f"POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: {coding}\r\n"
    status, headers, payload = exchange(live_server.url, head, chunk(gzip.compress(BODY)) + b"0\r\n\r\n")
    assert status == 415, payload
    assert PROBLEM in headers and b"x-request-id:" in headers.lower()
    problem = json.loads(payload)
    assert problem["type"] == "/problems/unsupported-media-type"
    assert problem["detail"].startswith(f"Transfer-Encoding {coding!r} is not supported"), problem["detail"]


def test_identity_before_chunked_changes_nothing(live_server):
    head = "POST /v1/gradients HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: identity, chunked\r\n"
    status, _, payload = exchange(live_server.url, head, chunk(BODY) + b"0\r\n\r\n")
    assert status == 200, payload
    assert round(json.loads(payload)["loss"], 4) == 6.7012


@pytest.fixture(scope="module")
def short_deadline_server():
    """One worker (the same process must answer after the stalled body), a 2 s deadline; stopped however it ends."""
    with GunicornServer(workers=1, env={"MAX_WALL_SECONDS": str(WALL)}) as server:
        server.wait_workers(1)
        yield server


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (with_length("/v1/gradients", len(BODY) + 100), BODY),  # the rest never comes; the connection stays open
        (chunked("/v1/gradients"), b"fffffff\r\n" + BODY),  # a chunk announced far larger than what is sent
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_that_stalls_is_a_408_at_the_deadline_and_the_worker_lives(short_deadline_server, head, body):
    start = time.monotonic()
    status, headers, payload = exchange(short_deadline_server.url, head, body)
    assert status == 408, payload
    assert PROBLEM in headers
    problem = json.loads(payload)
    assert problem["type"] == "/problems/body-timeout"
    assert "did not arrive within the wall-time limit" in problem["detail"]
    assert WALL - 0.5 <= time.monotonic() - start < WALL + SLACK
    ok = exchange(short_deadline_server.url, with_length("/v1/gradients", len(BODY)), BODY)
    assert ok[0] == 200
