"""serve's own HTTP protocol (pull_protocol.py) on a raw socket: what HTTP clients may send it.

Pulls are answered by the protocol itself; any other request hands the connection to uvicorn.
Each test speaks HTTP/1.1 bytes to a real server on 127.0.0.1 and reads what comes back.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.helpers_app import (
    BASE32,
    SKYVERN_KEY,
    add_secret,
    expected_code,
    make_settings,
    running_service,
    wait_for_window_phase,
)
from totp_service import signing
from totp_service.store.open import open_store

IDENTIFIER = "alice@example.com"


def _pull_bytes(path: str = "/totp/alice%40example.com", body: bytes = b'{"task_id":"tsk_1"}',
                extra: str = "") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-skyvern-timestamp: {int(time.time())}\r\n"
            f"x-skyvern-signature: {signing.sign(body, SKYVERN_KEY)}\r\n{extra}\r\n")
    return head.encode() + body


class RawConnection:
    """One TCP connection; reads whole HTTP responses (content-length framed) as they come."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        while len(self.buffer) < size:
            self._read()
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def service(tmp_path):
    settings = make_settings(tmp_path)
    settings.server.max_body_bytes = 1024
    add_secret(settings, IDENTIFIER)
    with running_service(settings, timeout_keep_alive=1) as svc:
        yield svc


def _assert_code(status: int, body: bytes, before: float) -> None:
    assert status == 200, body
    code = json.loads(body)["verification_code"]
    assert code in {expected_code(BASE32, before), expected_code(BASE32, time.time())}


def test_keep_alive_pulls_then_other_requests_then_pulls_on_one_connection(service) -> None:
    conn = RawConnection(service.url)
    try:
        for _ in range(3):
            before = time.time()
            conn.send(_pull_bytes())
            status, headers, body = conn.response()
            _assert_code(status, body, before)
            assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"
            assert "date" in headers and "connection" not in headers
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")  # handed to uvicorn
        status, _, body = conn.response()
        assert status == 200 and json.loads(body) == {"status": "ok"}
        before = time.time()
        conn.send(_pull_bytes())  # uvicorn serves the connection from now on, through the ASGI handler
        status, _, body = conn.response()
        _assert_code(status, body, before)
    finally:
        conn.close()
    assert [r.outcome for r in service.store.read_audit(identifier=IDENTIFIER)] == ["served"] * 4


def test_a_connection_that_starts_with_another_request_is_uvicorn_s(service) -> None:
    with httpx.Client(base_url=service.url) as client:
        assert client.get("/totp/alice%40example.com").status_code == 405  # Starlette's answer, as JSON
        assert client.get("/nowhere").json()["error"] == "not_found"
        response = client.post("/totp/alice%40example.com", content=b'{"task_id":"t"}',
                               headers={"x-skyvern-signature": signing.sign(b'{"task_id":"t"}', SKYVERN_KEY)})
        assert response.status_code == 200 and response.json()["verification_code"]


def test_many_pipelined_pulls_in_one_write_are_all_answered(service) -> None:
    conn = RawConnection(service.url)
    try:
        conn.send(_pull_bytes() * 600)  # ~146 KB: reads end in the middle of request heads
        assert [conn.response()[0] for _ in range(600)] == [200] * 600
    finally:
        conn.close()


def test_long_targets_of_other_requests_are_uvicorn_s_to_judge(service) -> None:
    conn = RawConnection(service.url)
    try:
        conn.send(b"GET /healthz?q=" + b"a" * 9000 + b" HTTP/1.1\r\nhost: t\r\n\r\n")
        assert conn.response()[0] == 200
    finally:
        conn.close()


def test_pipelined_pulls_are_answered_in_order(service) -> None:
    add_secret(service.settings, "bob@example.com", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")
    conn = RawConnection(service.url)
    try:
        before = time.time()
        conn.send(_pull_bytes() + _pull_bytes("/totp/bob%40example.com") + _pull_bytes("/totp/nobody"))
        first, second, third = conn.response(), conn.response(), conn.response()
        _assert_code(first[0], first[2], before)
        assert second[0] == 200
        assert json.loads(second[2])["verification_code"] in {
            expected_code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", before),
            expected_code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", time.time())}
        assert third[0] == 404 and json.loads(third[2])["error"] == "unknown_identifier"
    finally:
        conn.close()


def test_a_request_pipelined_behind_a_pull_is_refused_not_guessed_at(service) -> None:
    conn = RawConnection(service.url)
    try:
        before = time.time()
        conn.send(_pull_bytes() + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        status, _, body = conn.response()
        _assert_code(status, body, before)
        status, headers, body = conn.response()
        assert status == 400 and headers["connection"] == "close"
        assert "pipelined" in json.loads(body)["detail"]
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_oversize_body_is_refused_at_once_and_the_connection_closed(service) -> None:
    conn = RawConnection(service.url)
    try:  # the header says too much: 413 before the body is even sent
        conn.send(b"POST /totp/alice%40example.com HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n")
        status, headers, body = conn.response()
        assert status == 413 and json.loads(body)["error"] == "body_too_large"
        assert headers["connection"] == "close" and conn.closed_by_server()
    finally:
        conn.close()
    conn = RawConnection(service.url)
    try:  # a chunked body that grows past the limit
        conn.send(b"POST /totp/alice%40example.com HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(3):
            conn.send(b"200\r\n" + b" " * 512 + b"\r\n")
        status, _, body = conn.response()
        assert status == 413 and json.loads(body)["error"] == "body_too_large"
    finally:
        conn.close()
    outcomes = [r.outcome for r in service.store.read_audit(identifier=IDENTIFIER)]
    assert outcomes == ["refused:body_too_large"]  # the repeat goes into the window's aggregate row


def test_malformed_http_gets_400_and_the_connection_closes(service) -> None:
    conn = RawConnection(service.url)
    try:
        conn.send(b"POST /totp/alice HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nabc")
        status, headers, _ = conn.response()
        assert status == 400 and headers["connection"] == "close"
        assert conn.closed_by_server()
    finally:
        conn.close()
    conn = RawConnection(service.url)
    try:  # a request head over 64 KiB, in one read
        conn.send(_pull_bytes("/totp/" + "a" * 70_000))
        status, headers, _ = conn.response()
        assert status == 400 and headers["connection"] == "close"
    finally:
        conn.close()
    with httpx.Client(base_url=service.url) as client:  # the server is fine
        assert client.get("/healthz").status_code == 200


def test_expect_100_continue_connection_close_and_absolute_form(service) -> None:
    body = b'{"task_id":"tsk_1"}'
    conn = RawConnection(service.url)
    try:
        head = _pull_bytes(body=body, extra="expect: 100-continue\r\n")[: -len(body)]
        conn.send(head)
        status, _, _ = conn.response()
        assert status == 100
        before = time.time()
        conn.send(body)
        status, _, payload = conn.response()
        _assert_code(status, payload, before)
        conn.send(_pull_bytes(f"http://{service.url[7:]}/totp/alice%40example.com", extra="connection: close\r\n"))
        status, headers, payload = conn.response()
        _assert_code(status, payload, before)
        assert headers["connection"] == "close" and conn.closed_by_server()
    finally:
        conn.close()


def test_http_1_0_gets_one_answer_then_the_connection_closes(service) -> None:
    conn = RawConnection(service.url)
    try:  # as uvicorn: no HTTP/1.0 keep-alive, whatever the request asks
        request = _pull_bytes(extra="connection: keep-alive\r\n").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        conn.send(request)
        status, headers, _ = conn.response()
        assert status == 200 and headers["connection"] == "close" and conn.closed_by_server()
    finally:
        conn.close()


def test_idle_keep_alive_connections_are_closed(service) -> None:
    conn = RawConnection(service.url)
    try:
        conn.send(_pull_bytes())
        assert conn.response()[0] == 200
        conn.sock.settimeout(5)
        started = time.monotonic()
        assert conn.closed_by_server()  # timeout_keep_alive=1 in the fixture
        assert time.monotonic() - started < 4
    finally:
        conn.close()


def _holding_settings(tmp_path, single_use: bool = False):
    """A 2 s window and min_validity 1.9 s: a pull sent by _send_held is held until the next window."""
    settings = make_settings(tmp_path, min_validity_seconds=1.9, max_hold_seconds=5, single_use=single_use)
    add_secret(settings, IDENTIFIER, period=2)
    return settings


def _send_held(conn: RawConnection, data: bytes) -> None:
    wait_for_window_phase(2, 0.3, 1.5)  # under 1.9 s left: held for 0.5 to 1.7 s
    conn.send(data)


def test_a_held_pull_is_answered_before_the_server_stops(tmp_path) -> None:
    with running_service(_holding_settings(tmp_path)) as svc:
        conn = RawConnection(svc.url)
        _send_held(conn, _pull_bytes())
        time.sleep(0.05)
        # leaving the block stops the server: it must finish the held pull first
    try:
        status, headers, body = conn.response()
        assert status == 200 and json.loads(body)["verification_code"]
        assert headers["connection"] == "close" and conn.closed_by_server()
    finally:
        conn.close()


def test_an_endless_request_head_is_cut_off(service) -> None:
    conn = RawConnection(service.url)
    try:
        conn.send(b"POST /totp/alice%40example.com HTTP/1.1\r\nhost: t\r\n")
        sent = 0
        with pytest.raises(OSError):  # the server closes the connection: a later send fails
            for _ in range(1000):  # 1,000 x 1 KiB of headers, never ending
                conn.send(b"x-filler: " + b"a" * 1000 + b"\r\n")
                sent += 1
                time.sleep(0.0005)
        assert 60 <= sent < 1000  # cut off after 64 KiB, not at once
    finally:
        conn.close()


def test_requests_split_into_tiny_reads_are_parsed_whole(service) -> None:
    conn = RawConnection(service.url)
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for request in (_pull_bytes(), b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n", _pull_bytes()):
            before = time.time()
            for i in range(0, len(request), 7):
                conn.send(request[i:i + 7])
                time.sleep(0.001)
            status, _, body = conn.response()
            if request.startswith(b"GET"):
                assert status == 200 and json.loads(body) == {"status": "ok"}
            else:
                _assert_code(status, body, before)
    finally:
        conn.close()


def test_100_continue_behind_a_held_pull_comes_after_its_answer(tmp_path) -> None:
    body = b'{"task_id":"tsk_1"}'
    with running_service(_holding_settings(tmp_path)) as svc:
        conn = RawConnection(svc.url)
        try:
            _send_held(conn, _pull_bytes())
            time.sleep(0.1)
            conn.send(_pull_bytes(body=body, extra="expect: 100-continue\r\n")[: -len(body)])
            assert conn.response()[0] == 200  # the held answer first
            assert conn.response()[0] == 100  # then the go-ahead for the body
            conn.send(body)
            assert conn.response()[0] == 200
        finally:
            conn.close()


def test_stopping_answers_every_pull_already_received(tmp_path) -> None:
    settings = _holding_settings(tmp_path, single_use=True)
    with running_service(settings) as svc:
        conn = RawConnection(svc.url)
        _send_held(conn, _pull_bytes() * 3)  # the first is held; two wait behind it
        time.sleep(0.1)
    try:  # leaving the block stopped the server
        answers = [conn.response() for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 200]
        assert "connection" not in answers[0][1] and answers[2][1]["connection"] == "close"
        codes = [json.loads(a[2])["verification_code"] for a in answers]
        assert len(set(codes)) == 3  # single use: three windows, three codes
        assert conn.closed_by_server()
    finally:
        conn.close()
    with open_store(settings) as store:
        assert [r.outcome for r in store.read_audit(identifier=IDENTIFIER)] == ["served"] * 3
