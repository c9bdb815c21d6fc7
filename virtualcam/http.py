"""HTTP side of a virtual camera: JPEG snapshots, status and fault control (aiohttp)."""

import asyncio
import contextlib
import logging
import socket

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .camera import Fault, VirtualCamera
from .listener import Listener
from .onvif import OnvifService
from .rtsp import reset_connection

_LOGGER = logging.getLogger(__name__)

_STOP_TIMEOUT = 1.0
WRONG_CONTENT_HTML = (
    "<!DOCTYPE html><html><head><title>Error</title></head>"
    "<body><h1>500 Internal Error</h1><p>Snapshot unavailable.</p></body></html>"
)


class HttpServer:
    """The HTTP listener of one camera: /snapshot.jpg, /status, POST /control and /onvif/*."""

    def __init__(self, camera: VirtualCamera) -> None:
        """Bind nothing yet; start() takes an already-bound socket."""
        self.camera = camera
        self._closing = asyncio.Event()
        self._web = web.Server(
            self._handle,
            handler_cancellation=True,  # a hung handler ends when its client goes away
            access_log=None,
            keepalive_timeout=75.0,
            lingering_time=0.5,
        )
        self._server: Listener | None = None
        self._onvif = OnvifService(camera, self._closing)

    async def start(self, sock: socket.socket) -> None:
        """Serve on a bound listening socket."""
        self._server = Listener(sock, self._protocol)
        self._server.start()

    def _protocol(self) -> RequestHandler:
        """Protocol factory: count the connection, hand it to aiohttp."""
        self.camera.stats.http_connections += 1
        return self._web()

    async def stop(self) -> None:
        """Wake hung handlers, stop listening, close every connection (bounded)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        await server.close()
        # Idle keep-alive connections (a client's pooled one) end now; one
        # answering a request ends after it. Otherwise shutdown waited its
        # whole timeout for each, and never under a test's frozen clock.
        for handler in self._web.connections:
            handler.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_TIMEOUT * 2):
                await self._web.shutdown(_STOP_TIMEOUT)
        server.abort_clients()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route by path (the low-level server has no router)."""
        path = request.path
        if path == "/status":
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, headers={"Allow": "GET, HEAD"})
            return web.json_response(self.camera.status())
        if path == "/control":
            if request.method != "POST":
                return web.Response(status=405, headers={"Allow": "POST"})
            return await self._control(request)
        if path.startswith("/onvif/") and self.camera.config.onvif:
            return await self._onvif.handle(request)
        if path != "/snapshot.jpg" or not self.camera.config.http_snapshot:
            return web.Response(status=404, text="404 Not Found")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        return await self._snapshot(request)

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        """POST /control {"fault": name-or-null}: switch the camera's fault (no auth)."""
        try:
            data = await request.json()
            self.camera.fault = Fault.parse(data.get("fault"))
        except (ValueError, AttributeError, TypeError) as err:
            return web.json_response({"error": str(err)}, status=400)
        return web.json_response(self.camera.status())

    def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        """Reset the connection; the response returned afterwards is never sent."""
        if request.transport is not None:
            reset_connection(request.transport)
        return web.Response(status=503)

    async def _snapshot(self, request: web.BaseRequest) -> web.StreamResponse:
        """GET /snapshot.jpg with faults and authentication applied."""
        cam = self.camera
        cam.stats.snapshot_requests += 1
        fault = cam.fault
        if fault is Fault.REFUSE:
            # The listener must stay up so POST /control can clear the fault: reset instead.
            cam.stats.refused_connections += 1
            return self._reset(request)
        if fault is Fault.HANG:
            await self._closing.wait()
            return self._reset(request)
        if fault is Fault.SLOW:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cam.config.slow_delay):
                    await self._closing.wait()
            if self._closing.is_set():
                return self._reset(request)
        header = request.headers.get("Authorization")
        if header:
            cam.stats.credentialed_requests += 1
        if fault is Fault.UNAUTHORIZED or not cam.auth.check(request.method, header):
            cam.stats.unauthorized_responses += 1
            challenge = cam.auth.challenge(qop=True, stale=cam.auth.is_stale(header))
            return web.Response(
                status=401, text="401 Unauthorized", headers={"WWW-Authenticate": challenge}
            )
        jpeg = await cam.media.snapshot()
        headers = {"Cache-Control": "no-store"}
        if fault is Fault.TRUNCATED_JPEG:
            return web.Response(
                body=jpeg[: len(jpeg) // 2], content_type="image/jpeg", headers=headers
            )
        if fault is Fault.WRONG_CONTENT_TYPE:
            return web.Response(text=WRONG_CONTENT_HTML, content_type="text/html", headers=headers)
        if fault is Fault.DROP:
            return await self._drop(request, jpeg)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)

    async def _drop(self, request: web.BaseRequest, jpeg: bytes) -> web.StreamResponse:
        """Fault.DROP: full Content-Length, half the body, then close the connection."""
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = len(jpeg)
        response.force_close()
        await response.prepare(request)
        if request.method != "HEAD":
            with contextlib.suppress(ConnectionError):
                await response.write(jpeg[: len(jpeg) // 2])
        if request.transport is not None:
            request.transport.close()
        # aiohttp's write_eof now fails on the closed transport; it treats that as a disconnect.
        return response
