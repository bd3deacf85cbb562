"""One pipelined RESP connection for the rate-limit scripts, on the event loop.

redis-py's asyncio client pays for a task per send (its timeout), a pool checkout and
release and response callbacks on every command, more than the rest of the hot route's
rate limiting put together (figures: docs/benchmarks.md). Here a command is one
``transport.write`` and a future that ``data_received`` resolves: replies come back in
the order the commands went out, so every caller shares one connection and any number of
batches can be in flight. Timeouts and the breaker stay with the caller
(``AsyncRedisStore``); a connection that failed or timed out is closed, never reused,
so a late reply can never answer the wrong command.

URLs as redis-py reads them (``parse_url``): ``redis://``, ``rediss://`` (TLS, verified)
and ``unix://``, with user, password and database.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Command = Sequence[str | bytes | int | float]


def reply_error(message: str) -> ResponseError:
    """The redis-py exception for an error reply (NOSCRIPT is the one callers act on)."""
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Replies(asyncio.Protocol):
    """Parses the byte stream into replies and hands each to the oldest waiting future."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if not self.waiting:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                if isinstance(reply, hiredis.ReplyError):
                    reply = reply_error(str(reply))
                answer = self.waiting.popleft()
                if not answer.done():
                    answer.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def fail(self, exc: Exception) -> None:
        """Close the transport and fail every command still waiting for its reply."""
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(exc)


class RespConnection:
    """Send commands, get futures of their replies (error replies as exception values)."""

    def __init__(self, protocol: _Replies) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, options: dict[str, Any], timeout: float) -> RespConnection:
        """Connect, authenticate and select the database of ``options`` (a URL as
        ``redis.connection.parse_url`` reads it), all within ``timeout``."""
        async with asyncio.timeout(timeout):
            protocol = await _connect(options)
            connection = cls(protocol)
            setup = _setup_commands(options)
            if setup:
                for reply in await connection.replies(connection.send(setup)):
                    if isinstance(reply, Exception):
                        connection.close()
                        raise reply
        return connection

    @property
    def is_open(self) -> bool:
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing()

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Write ``commands`` in one write; one future per reply, in order."""
        transport = self._protocol.transport
        if transport is None or not self.is_open:
            raise RedisConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        answers = [loop.create_future() for _ in commands]
        transport.write(b"".join(_pack(command) for command in commands))
        self._protocol.waiting.extend(answers)
        return answers

    @staticmethod
    async def replies(answers: list[asyncio.Future[Any]]) -> list[Any]:
        """Await the replies of one ``send`` in order; error replies stay in place."""
        return [await answer for answer in answers]

    def close(self) -> None:
        self._protocol.fail(RedisConnectionError("the Redis connection was closed"))


def _pack(command: Command) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; any length is accepted.
    return hiredis.pack_command(tuple(command))  # type: ignore[arg-type]


async def _connect(options: dict[str, Any]) -> _Replies:
    loop = asyncio.get_running_loop()
    if "path" in options:
        _, protocol = await loop.create_unix_connection(_Replies, options["path"])
        return protocol
    host, port = options.get("host", "localhost"), options.get("port", 6379)
    tls = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
    _, protocol = await loop.create_connection(
        _Replies, host, port, ssl=tls, server_hostname=host if tls else None
    )
    return protocol


def _setup_commands(options: dict[str, Any]) -> list[Command]:
    commands: list[Command] = []
    password, username = options.get("password"), options.get("username")
    if password is not None:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    if options.get("db"):
        commands.append(("SELECT", int(options["db"])))
    return commands
