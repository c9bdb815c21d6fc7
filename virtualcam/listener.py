"""A listening socket that hands each connection to a protocol, as loop.create_server does.

Not asyncio.Server: a Server closed while a connection it already accepted is
still being wrapped in its transport logs an AssertionError from the event
loop (CPython #109564, "assert self._sockets is not None" in
Server._attach). The emulated cameras close their servers whenever a test
reboots one, often while a client is connecting, and Home Assistant's test
plugin fails a test on any error the loop logs. Here the accept loop is a task
of our own: close() ends it before the socket is closed, and a connection
accepted just before is wrapped with no Server to attach to.
"""

import asyncio
from collections.abc import Callable
import contextlib
import socket
import ssl


class Listener:
    """Accept on a bound, listening socket; each connection gets a new protocol."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Take the socket (bound and listening); start() begins accepting."""
        self._sock = sock
        self._sock.setblocking(False)
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._accepting: asyncio.Task[None] | None = None
        self._wrapping: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.BaseTransport] = set()

    def start(self) -> None:
        """Begin accepting connections."""
        self._accepting = asyncio.get_running_loop().create_task(self._take_connections())

    async def _take_connections(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError:
                # ECONNABORTED, EMFILE...: as asyncio's own accept loop, go on
                # after a moment rather than spin.
                await asyncio.sleep(0.05)
                continue
            task = loop.create_task(self._wrap(conn))
            self._wrapping.add(task)
            task.add_done_callback(self._wrapping.discard)

    async def _wrap(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except asyncio.CancelledError:
            conn.close()
            raise
        except OSError:  # ssl.SSLError too: a client that left or failed the handshake
            conn.close()
            return
        self._transports = {t for t in self._transports if not t.is_closing()}
        self._transports.add(transport)

    async def close(self) -> None:
        """Stop accepting; connections already served stay open (abort_clients ends them)."""
        if self._accepting is not None:
            # sock_accept unregisters the socket from the selector when
            # cancelled: close the socket only after, never while registered.
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        self._sock.close()
        for task in list(self._wrapping):
            task.cancel()
        await asyncio.gather(*self._wrapping, return_exceptions=True)

    def abort_clients(self) -> None:
        """Abort every connection still open."""
        for transport in list(self._transports):
            if not transport.is_closing():
                transport.abort()
        self._transports.clear()
