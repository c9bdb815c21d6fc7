"""A listening socket that hands each connection to a protocol, as loop.create_server does.

Not asyncio.Server: a Server closed while a connection it already accepted is
still being wrapped in its transport logs an AssertionError from the event
loop (CPython #109564, "assert self._sockets is not None" in
Server._attach). The emulated cameras close their servers whenever a test
reboots one, often while a client is connecting, and Home Assistant's test
plugin fails a test on any error the loop logs. Here accepting is our own:
close() stops it before the socket is closed, a connection accepted just
before is wrapped with no Server to attach to, and one whose wrapping is
cancelled is closed.
"""

import asyncio
from collections.abc import Callable
import socket
import ssl

# Connections taken per readiness callback (the rest wait for the next one).
_ACCEPTS_PER_WAKEUP = 64


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
        self._loop: asyncio.AbstractEventLoop | None = None
        # Each accepted socket until its transport owns it.
        self._wrapping: dict[asyncio.Task[None], socket.socket] = {}
        self._transports: set[asyncio.BaseTransport] = set()

    def start(self) -> None:
        """Begin accepting connections.

        A readiness callback that accepts synchronously, not a task awaiting
        loop.sock_accept: a cancelled sock_accept may already have taken a
        connection from the kernel, which then belongs to nobody and is
        never closed.
        """
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)

    def _accept_ready(self) -> None:
        assert self._loop is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError, InterruptedError:
                return
            except OSError:
                return  # ECONNABORTED, EMFILE...: try again when the socket is ready again
            conn.setblocking(False)
            task = self._loop.create_task(self._wrap(conn))
            self._wrapping[task] = conn
            task.add_done_callback(self._wrapped)

    def _wrapped(self, task: asyncio.Task[None]) -> None:
        self._wrapping.pop(task, None)

    async def _wrap(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError:  # ssl.SSLError too: a client that left or failed the handshake
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        self._transports = {t for t in self._transports if not t.is_closing()}
        self._transports.add(transport)

    async def close(self) -> None:
        """Stop accepting; connections already served stay open (abort_clients ends them)."""
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()
        pending = dict(self._wrapping)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task, conn in pending.items():
            # A task cancelled before it ran never reached its own close.
            if task.cancelled():
                conn.close()

    def abort_clients(self) -> None:
        """Abort every connection still open."""
        for transport in list(self._transports):
            if not transport.is_closing():
                transport.abort()
        self._transports.clear()
