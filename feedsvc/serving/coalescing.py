"""Writing a connection's answer in one send(2): a transport that gathers a loop turn's writes."""

from __future__ import annotations

import asyncio
from typing import Any, cast


class CoalescingTransport:
    """A connection's transport whose writes within one loop turn leave in one send(2).

    Why: uvicorn writes an answer's status line and headers, then its body, with two
    writes, and on loopback each write is a send(2) that also runs the receiver's TCP
    path: under a flood of refusals the two were 30 % of a worker's CPU (py-spy). Writes
    are gathered and written together at the start of the loop's next turn (a
    `call_soon`); `close` and `write_eof` write what is gathered first.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop):
        # Any: uvloop's transports are not subclasses of asyncio's.
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        gathered = sum(len(d) for d in self._pending) if self._pending else 0
        return int(self._transport.get_write_buffer_size()) + gathered

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, flow control, extra info) is the transport's own.
        return getattr(self._transport, name)


class CoalescingProtocol(asyncio.Protocol):
    """`protocol`, given its transport as a `CoalescingTransport`."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        self.protocol.connection_made(cast(asyncio.BaseTransport, coalescing))

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()
