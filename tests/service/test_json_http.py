"""JsonHttp, the worker's HTTP client: kept connections, one more try, proxies, failures.

The server here is a few lines of HTTP/1.1 on loopback that records what reached it and
can close connections the way a server's keep-alive timeout does.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from service.kit.json_http import HttpTransportError, JsonHttp


@dataclass
class Seen:
    """What reached the server: each request's connection number, target, headers, body."""

    requests: list[tuple[int, str, dict[str, str], bytes]] = field(default_factory=list)
    connections: list[socket.socket] = field(default_factory=list)
    closed_by_client: threading.Event = field(default_factory=threading.Event)
    mode: str = "answer"  # answer | close (no answer) | last (answer, Connection: close)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close_idle(self) -> None:
        """Close every connection from the server's side, as a keep-alive timeout does."""
        with self.lock:
            for connection in self.connections:
                connection.shutdown(socket.SHUT_RDWR)


class Handler(socketserver.StreamRequestHandler):
    server: Server

    def handle(self) -> None:
        seen = self.server.seen
        with seen.lock:
            seen.connections.append(self.connection)
            number = len(seen.connections)
        while line := self.rfile.readline():
            target = line.split()[1].decode()
            headers = self._headers()
            body = self.rfile.read(int(headers.get("content-length", 0)))
            with seen.lock:
                seen.requests.append((number, target, headers, body))
            if seen.mode == "close":
                return
            self._answer(target, close=seen.mode == "last")
            if seen.mode == "last":
                return
        seen.closed_by_client.set()

    def _headers(self) -> dict[str, str]:
        headers = {}
        while (line := self.rfile.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _answer(self, target: str, close: bool) -> None:
        body = json.dumps({"data": {"target": target}}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        head += "\r\nConnection: close" if close else ""
        self.wfile.write(head.encode() + b"\r\n\r\n" + body)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen = Seen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


@pytest.fixture(autouse=True)
def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def client(url: str, timeout: float = 5.0) -> JsonHttp:
    return JsonHttp(url, {"X-API-Key": "key", "User-Agent": "test"}, timeout)


def test_requests_share_one_kept_connection_under_the_base_path(server: Server) -> None:
    http = client(server.url + "/api/")
    answers = [http.post("/events/confirm-delivery", {"n": n}) for n in range(3)]
    answers.append(http.get("/events/last-delivered", {"customer_ids": ["a", "b"], "x": "1 2"}))
    http.close()
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].json()["data"]["target"] == "/api/events/confirm-delivery"
    requests = server.seen.requests
    assert {number for number, *_ in requests} == {1}
    assert [json.loads(body) for *_, body in requests[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    headers = requests[0][2]
    assert headers["x-api-key"] == "key" and headers["content-type"] == "application/json"
    assert requests[3][1] == "/api/events/last-delivered?customer_ids=a&customer_ids=b&x=1+2"


def test_a_kept_connection_the_server_closed_is_replaced_and_the_request_sent_once(
    server: Server,
) -> None:
    http = client(server.url)
    http.post("/first", {})
    server.seen.close_idle()
    answer = http.post("/second", {"once": True})
    assert answer.status_code == 200
    assert [(number, target) for number, target, *_ in server.seen.requests] == [
        (1, "/first"),
        (2, "/second"),
    ]


def test_a_fresh_connection_closed_unanswered_fails_without_a_second_try(server: Server) -> None:
    server.seen.mode = "close"
    with pytest.raises(HttpTransportError):
        client(server.url).post("/events/confirm-delivery", {})
    assert len(server.seen.requests) == 1


def test_a_kept_connection_gets_one_more_try_only(server: Server) -> None:
    http = client(server.url)
    http.post("/first", {})
    server.seen.close_idle()
    server.seen.mode = "close"
    with pytest.raises(HttpTransportError):
        http.post("/second", {})
    assert [target for _, target, *_ in server.seen.requests] == ["/first", "/second"]


def test_an_answer_with_connection_close_is_not_reused(server: Server) -> None:
    server.seen.mode = "last"
    http = client(server.url)
    for _ in range(3):
        assert http.post("/x", {}).status_code == 200
    assert [number for number, *_ in server.seen.requests] == [1, 2, 3]


def test_nothing_listening_and_no_answer_in_time_are_transport_errors(server: Server) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(HttpTransportError):
        client(f"http://127.0.0.1:{port}").post("/x", {})
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(HttpTransportError, match="timed out"):
            client(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3).post("/x", {})


def test_threads_share_the_kept_connections(server: Server) -> None:
    http = client(server.url)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: http.post("/x", {"n": n}).status_code, range(200)))
    assert statuses == [200] * 200
    assert len(server.seen.requests) == 200
    assert len(server.seen.connections) <= 8


def test_closing_closes_the_kept_connections(server: Server) -> None:
    http = client(server.url)
    http.post("/x", {})
    assert not server.seen.closed_by_client.wait(0.2)
    http.close()
    assert server.seen.closed_by_client.wait(5)


def test_a_proxy_named_by_the_environment_is_followed_unless_bypassed(
    monkeypatch: pytest.MonkeyPatch, server: Server
) -> None:
    proxy = Server()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client(server.url).post("/through", {})
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        client(server.url).post("/direct", {})
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert [target for _, target, *_ in proxy.seen.requests] == [f"{server.url}/through"]
    assert [target for _, target, *_ in server.seen.requests] == ["/direct"]


def test_a_base_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        client("amqp://127.0.0.1:5672")
