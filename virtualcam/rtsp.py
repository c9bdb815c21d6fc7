"""RTSP/1.0 server (RFC 2326) streaming H.264 over RTP (RFC 6184) via TCP-interleaved or UDP."""

import asyncio
import contextlib
from dataclasses import dataclass, field
from email.utils import formatdate
import ipaddress
import logging
import secrets
import socket
import ssl
import struct
import time
from urllib.parse import urlsplit

from .camera import Fault, VirtualCamera
from .listener import Listener
from .media import AccessUnit, rtp_header

_LOGGER = logging.getLogger(__name__)

#: Advertised in `Session: id;timeout=N`; a connection silent for longer is closed.
SESSION_TIMEOUT = 60
#: Grace on top of SESSION_TIMEOUT before an idle connection is closed.
_IDLE_GRACE = 15.0
#: A TCP client this far behind loses frames until the next keyframe (a real camera's choice).
MAX_TCP_BACKLOG = 1 << 20
#: How long after PLAY (or after the fault is set) Fault.DROP cuts the connection.
DROP_AFTER = 1.0
_STOP_TIMEOUT = 2.0
_MAX_BODY = 64 * 1024
SERVER_HEADER = "LocalCam-VirtualCam/1.0"
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, GET_PARAMETER, SET_PARAMETER, TEARDOWN"

# Where Fault.REDIRECT sends clients: loopback (tests send packets nowhere else), the
# discard port, where nothing listens.
REDIRECT_LOCATION = "rtsp://127.0.0.1:9/elsewhere"
_REASONS = {
    200: "OK",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    413: "Request Entity Too Large",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "RTSP Version Not Supported",
}


@dataclass(slots=True)
class RtspRequest:
    """A parsed RTSP request."""

    method: str
    url: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def cseq(self) -> str:
        """The CSeq to echo (0 when the client sent none)."""
        return self.headers.get("cseq", "0")


@dataclass(slots=True)
class _Transport:
    """The transport chosen at SETUP."""

    tcp: bool
    channels: tuple[int, int] = (0, 1)
    client_ports: tuple[int, int] = (0, 0)
    raw: list[str] = field(default_factory=list)


def parse_request(head: bytes) -> RtspRequest:
    """Parse the request line and headers (header names lower-cased)."""
    lines = head.decode("utf-8", "replace").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError(f"bad request line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return RtspRequest(parts[0].upper(), parts[1], parts[2], headers)


def parse_transport(value: str) -> _Transport | None:
    """Pick the first unicast RTP/AVP transport we support from a Transport header."""
    for spec in value.split(","):
        parts = [p.strip() for p in spec.split(";") if p.strip()]
        if not parts or "multicast" in (p.lower() for p in parts):
            continue
        params = dict(p.partition("=")[::2] for p in parts[1:])
        proto = parts[0].upper()
        try:
            if proto == "RTP/AVP/TCP":
                lo, _, hi = params.get("interleaved", "0-1").partition("-")
                return _Transport(True, channels=(int(lo), int(hi or int(lo) + 1)), raw=parts)
            if proto in ("RTP/AVP", "RTP/AVP/UDP") and "client_port" in params:
                lo, _, hi = params["client_port"].partition("-")
                ports = (int(lo), int(hi or int(lo) + 1))
                if all(0 < p < 65536 for p in ports):
                    return _Transport(False, client_ports=ports, raw=parts)
        except ValueError:
            continue
    return None


def reset_connection(transport: asyncio.WriteTransport) -> None:
    """Close a TCP connection with RST (SO_LINGER 0) instead of FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _UdpEndpoint(asyncio.DatagramProtocol):
    """Server side of one UDP port: incoming datagrams (RTCP RR, NAT punches) mean liveness."""

    def __init__(self, conn: _Connection) -> None:
        """Remember whom to tell about activity."""
        self._conn = conn

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Any datagram from the client keeps its session alive."""
        self._conn.camera.stats.udp_datagrams_received += 1
        self._conn.touch()

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable and the like: the client is gone or not listening yet."""


class _Connection:
    """One RTSP control connection, carrying at most one session with one H.264 track."""

    def __init__(
        self, server: RtspServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Per-connection RTP state with random initial sequence number, timestamp and SSRC."""
        self.server = server
        self.camera = server.camera
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer_host: str = peer[0] if peer else ""
        self.session_id: str | None = None
        self.transport: _Transport | None = None
        self.udp: list[asyncio.DatagramTransport] = []
        self.server_ports = (0, 0)
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts_offset = secrets.randbits(32)
        self.playing = False
        self.need_key = True
        self.last_activity = time.monotonic()
        self.drop_handle: asyncio.TimerHandle | None = None
        self.closed = False

    def touch(self) -> None:
        """Note client activity (requests, interleaved RTCP, UDP datagrams)."""
        self.last_activity = time.monotonic()

    # -- request loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Read requests and interleaved frames until EOF, error or idle timeout."""
        reader = self.reader
        while not self.closed:
            try:
                async with asyncio.timeout(SESSION_TIMEOUT + _IDLE_GRACE):
                    first = await reader.readexactly(1)
            except TimeoutError:
                if time.monotonic() - self.last_activity > SESSION_TIMEOUT + _IDLE_GRACE:
                    return
                continue
            self.touch()
            if first == b"$":
                # Interleaved binary data from the client (RTCP receiver reports): discard.
                header = await reader.readexactly(3)
                await reader.readexactly(int.from_bytes(header[1:3]))
                continue
            if first in b"\r\n":
                continue
            head = first + await reader.readuntil(b"\r\n\r\n")
            try:
                request = parse_request(head[:-4])
            except ValueError:
                self.respond(RtspRequest("", "", "", {}), 400)
                return
            length = int(request.headers.get("content-length", "0") or 0)
            if length > _MAX_BODY:
                self.respond(request, 413)
                return
            if length:
                request.body = await reader.readexactly(length)
            await self.handle(request)

    async def handle(self, request: RtspRequest) -> None:
        """Apply faults, then dispatch by method."""
        fault = self.camera.fault
        if fault is Fault.HANG:
            return  # read, never answered; the loop keeps reading so EOF still ends us
        if fault is Fault.SLOW:
            await asyncio.sleep(self.camera.config.slow_delay)
        if request.version != "RTSP/1.0":
            self.respond(request, 505)
            return
        handler = {
            "OPTIONS": self.on_options,
            "DESCRIBE": self.on_describe,
            "SETUP": self.on_setup,
            "PLAY": self.on_play,
            "PAUSE": self.on_pause,
            "TEARDOWN": self.on_teardown,
            "GET_PARAMETER": self.on_parameter,
            "SET_PARAMETER": self.on_parameter,
        }.get(request.method)
        if handler is None:
            self.respond(request, 501, {"Public": PUBLIC})
            return
        await handler(request)

    def respond(
        self,
        request: RtspRequest,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        """Write one response (never awaits, so RTP can't interleave inside it)."""
        if self.writer.transport.is_closing():
            return
        lines = [
            f"RTSP/1.0 {status} {_REASONS.get(status, 'Error')}",
            f"CSeq: {request.cseq}",
            f"Server: {SERVER_HEADER}",
            f"Date: {formatdate(usegmt=True)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    # -- helpers ------------------------------------------------------------------------------

    def _path_ok(self, request: RtspRequest) -> bool:
        """Whether the URL names our stream (/stream or a control URL below it)."""
        path = urlsplit(request.url).path.rstrip("/")
        return path == "/stream" or path.startswith("/stream/")

    def _authorized(self, request: RtspRequest) -> bool:
        """Check credentials (and Fault.UNAUTHORIZED); answer 401 when they fail."""
        cam = self.camera
        header = request.headers.get("authorization")
        if header:
            cam.stats.credentialed_requests += 1
        if cam.fault is not Fault.UNAUTHORIZED and cam.auth.check(request.method, header):
            return True
        cam.stats.unauthorized_responses += 1
        challenge = cam.auth.challenge(qop=False, stale=cam.auth.is_stale(header))
        self.respond(request, 401, {"WWW-Authenticate": challenge})
        return False

    def _session_ok(self, request: RtspRequest) -> bool:
        """Check the Session header against ours; answer 454/455 when it is wrong."""
        if self.session_id is None:
            self.respond(request, 455)
            return False
        given = request.headers.get("session", "").split(";")[0].strip()
        if given and given != self.session_id:
            self.respond(request, 454)
            return False
        return True

    def _session_header(self) -> dict[str, str]:
        """Session header with the timeout parameter."""
        return {"Session": f"{self.session_id};timeout={SESSION_TIMEOUT}"}

    @property
    def base_url(self) -> str:
        """Aggregate URL of the stream."""
        return self.server.base_url

    # -- methods ------------------------------------------------------------------------------

    async def on_options(self, request: RtspRequest) -> None:
        """OPTIONS: no authentication, lists methods."""
        self.respond(request, 200, {"Public": PUBLIC})

    async def on_describe(self, request: RtspRequest) -> None:
        """DESCRIBE: the SDP with SPS/PPS."""
        self.camera.stats.describe_requests += 1
        if not self._path_ok(request):
            self.respond(request, 404)
            return
        fault = self.camera.fault
        if fault is Fault.REDIRECT or (
            fault is Fault.REDIRECT_PLAYERS
            and request.headers.get("user-agent", "").startswith("Lavf")
        ):
            location = self.camera.config.redirect_location or REDIRECT_LOCATION
            self.respond(request, 302, {"Location": location})
            return
        if not self._authorized(request):
            return
        headers = {"Content-Type": "application/sdp", "Content-Base": f"{self.base_url}/"}
        self.respond(request, 200, headers, self.server.sdp().encode())

    async def on_setup(self, request: RtspRequest) -> None:
        """SETUP: TCP interleaved or UDP unicast (to the loopback peer only)."""
        if not self._path_ok(request):
            self.respond(request, 404)
            return
        if not self._authorized(request):
            return
        given = request.headers.get("session", "").split(";")[0].strip()
        if given and given != self.session_id:
            self.respond(request, 454)
            return
        if self.playing:
            self.respond(request, 455)
            return
        transport = parse_transport(request.headers.get("transport", ""))
        if transport is None:
            self.respond(request, 461)
            return
        if not transport.tcp:
            self.camera.stats.udp_setups += 1
            self.camera.stats.udp_client_port = transport.client_ports[0]
            try:
                peer_is_loopback = ipaddress.ip_address(self.peer_host).is_loopback
            except ValueError:
                peer_is_loopback = False
            # UDP only ever goes back to the (loopback) peer of this TCP connection.
            if not peer_is_loopback:
                self.respond(request, 461)
                return
            self._close_udp()
            try:
                await self._open_udp()
            except OSError:
                _LOGGER.exception("%s: cannot open UDP ports", self.camera.name)
                self.respond(request, 500)
                return
        self.transport = transport
        if self.session_id is None:
            self.session_id = secrets.token_hex(8).upper()
        if transport.tcp:
            lo, hi = transport.channels
            reply = f"RTP/AVP/TCP;unicast;interleaved={lo}-{hi};ssrc={self.ssrc:08X}"
        else:
            c_lo, c_hi = transport.client_ports
            s_lo, s_hi = self.server_ports
            reply = (
                f"RTP/AVP;unicast;client_port={c_lo}-{c_hi};server_port={s_lo}-{s_hi};"
                f"source={self.camera.config.host};ssrc={self.ssrc:08X}"
            )
        self.respond(request, 200, {"Transport": reply, **self._session_header()})

    async def _open_udp(self) -> None:
        """Bind an RTP/RTCP port pair (RTCP = RTP + 1, which FFmpeg assumes) on loopback."""
        loop = asyncio.get_running_loop()
        host = self.camera.config.host
        for _ in range(20):
            rtp, _proto = await loop.create_datagram_endpoint(
                lambda: _UdpEndpoint(self), local_addr=(host, 0)
            )
            port = rtp.get_extra_info("sockname")[1]
            try:
                rtcp, _proto = await loop.create_datagram_endpoint(
                    lambda: _UdpEndpoint(self), local_addr=(host, port + 1)
                )
            except OSError:
                rtp.close()
                continue
            self.udp = [rtp, rtcp]
            self.server_ports = (port, port + 1)
            return
        raise OSError("no free UDP port pair")

    async def on_play(self, request: RtspRequest) -> None:
        """PLAY: start sending at the next keyframe (or force one with keyframe_on_connect)."""
        if not self._path_ok(request):
            self.respond(request, 404)
            return
        if not self._authorized(request) or not self._session_ok(request):
            return
        if self.transport is None:
            self.respond(request, 455)
            return
        if self.playing:
            self.respond(request, 200, {**self._session_header(), "Range": "npt=0.000-"})
            return
        cam = self.camera
        rtptime = (self.ts_offset + cam.media.current_ts90k()) & 0xFFFFFFFF
        self.respond(
            request,
            200,
            {
                **self._session_header(),
                "Range": "npt=0.000-",
                "RTP-Info": f"url={self.base_url}/trackID=0;seq={self.seq};rtptime={rtptime}",
            },
        )
        self.playing = True
        self.need_key = True
        cam.stats.play_sessions += 1
        cam.stats.active_play_sessions += 1
        cam.media.subscribe(self.on_access_unit, keyframe_now=cam.config.keyframe_on_connect)
        if cam.fault is Fault.DROP:
            self.schedule_drop()

    async def on_pause(self, request: RtspRequest) -> None:
        """PAUSE: stop sending; a later PLAY resumes at a keyframe."""
        if self._session_ok(request):
            self._stop_playing()
            self.respond(request, 200, self._session_header())

    async def on_teardown(self, request: RtspRequest) -> None:
        """TEARDOWN: end the session (the connection may stay for another SETUP)."""
        if self._session_ok(request):
            self.respond(request, 200, self._session_header())
            self._end_session()

    async def on_parameter(self, request: RtspRequest) -> None:
        """GET_PARAMETER / SET_PARAMETER: keep-alive, always 200."""
        headers = self._session_header() if self.session_id else {}
        self.respond(request, 200, headers)

    # -- media --------------------------------------------------------------------------------

    def on_access_unit(self, au: AccessUnit) -> None:
        """Packetize one access unit for this session (event loop, called by MediaSource)."""
        if not self.playing or self.closed or self.transport is None:
            return
        if self.camera.fault is Fault.HANG:
            self.need_key = True  # a hung camera sends nothing; resume cleanly at an IDR
            return
        if self.need_key:
            if not au.keyframe:
                return
            self.need_key = False
        ts = (self.ts_offset + au.ts90k) & 0xFFFFFFFF
        last = len(au.payloads) - 1
        seq = self.seq
        if self.transport.tcp:
            transport = self.writer.transport
            if transport.is_closing():
                return
            if transport.get_write_buffer_size() > MAX_TCP_BACKLOG:
                self.need_key = True
                return
            channel = self.transport.channels[0]
            chunks: list[bytes] = []
            for i, payload in enumerate(au.payloads):
                chunks.append(struct.pack("!cBH", b"$", channel, 12 + len(payload)))
                chunks.append(rtp_header(i == last, seq, ts, self.ssrc))
                chunks.append(payload)
                seq = (seq + 1) & 0xFFFF
            transport.write(b"".join(chunks))
        else:
            rtp = self.udp[0] if self.udp else None
            if rtp is None or rtp.is_closing():
                return
            dest = (self.peer_host, self.transport.client_ports[0])
            for i, payload in enumerate(au.payloads):
                rtp.sendto(rtp_header(i == last, seq, ts, self.ssrc) + payload, dest)
                seq = (seq + 1) & 0xFFFF
        self.seq = seq

    def schedule_drop(self) -> None:
        """Fault.DROP: cut this connection DROP_AFTER seconds from now."""
        if self.drop_handle is None and not self.closed:
            loop = asyncio.get_running_loop()
            self.drop_handle = loop.call_later(DROP_AFTER, self.drop)

    def drop(self) -> None:
        """Close the TCP connection and stop UDP, like a camera losing the stream."""
        self.drop_handle = None
        if not self.closed:
            self.camera.stats.dropped_sessions += 1
            self.close()

    def _stop_playing(self) -> None:
        """Unsubscribe from the encoder."""
        if self.playing:
            self.playing = False
            self.camera.media.unsubscribe(self.on_access_unit)
            self.camera.stats.active_play_sessions -= 1

    def _close_udp(self) -> None:
        """Close the UDP port pair."""
        for udp in self.udp:
            udp.close()
        self.udp = []

    def _end_session(self) -> None:
        """Forget the session and its transport."""
        self._stop_playing()
        self._close_udp()
        self.session_id = None
        self.transport = None

    def close(self, *, abort: bool = False) -> None:
        """End everything this connection owns; idempotent."""
        if self.drop_handle is not None:
            self.drop_handle.cancel()
            self.drop_handle = None
        if self.closed:
            return
        self.closed = True
        self._end_session()
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.transport.close()


class RtspServer:
    """The RTSP listener of one camera."""

    def __init__(self, camera: VirtualCamera) -> None:
        """Bind nothing yet; start() takes an already-bound socket."""
        self.camera = camera
        self._server: Listener | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sdp_session = secrets.randbits(31)

    @property
    def base_url(self) -> str:
        """rtsp://host:port/stream."""
        return self.camera.rtsp_url

    def sdp(self) -> str:
        """Session description with the H.264 parameters (RFC 6184 section 8)."""
        cfg = self.camera.config
        params = self.camera.media.params
        if params is None:
            raise RuntimeError("media not prepared")
        fmtp = (
            f"packetization-mode=1;profile-level-id={params.profile_level_id};"
            f"sprop-parameter-sets={params.sprop_parameter_sets}"
        )
        lines = [
            "v=0",
            f"o=- {self._sdp_session} 1 IN IP4 {cfg.host}",
            f"s={cfg.name}",
            "i=LocalCam virtual camera",
            "c=IN IP4 0.0.0.0",
            "t=0 0",
            "a=tool:virtualcam",
            "a=type:broadcast",
            "a=control:*",
            "a=range:npt=0-",
            "m=video 0 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            f"a=fmtp:96 {fmtp}",
            f"a=framerate:{cfg.fps:g}",
            f"a=x-dimensions:{cfg.width},{cfg.height}",
            "a=control:trackID=0",
        ]
        return "\r\n".join(lines) + "\r\n"

    async def start(self, sock: socket.socket) -> None:
        """Serve on a bound listening socket (over TLS when the camera has a certificate)."""
        cfg = self.camera.config
        context: ssl.SSLContext | None = None
        if cfg.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            await asyncio.to_thread(context.load_cert_chain, cfg.tls_cert, cfg.tls_key)
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            # What asyncio.start_server builds for each connection.
            reader = asyncio.StreamReader(limit=_MAX_BODY, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._on_client, loop=loop)

        self._server = Listener(sock, protocol, ssl_context=context)
        self._server.start()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Per-connection task."""
        if writer.transport.is_closing():
            # Closed before this handler ran (the camera stopping as the client
            # connected): asyncio's TLS transport cannot even be asked its peer.
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        cam = self.camera
        cam.stats.rtsp_connections += 1
        conn: _Connection | None = None
        try:
            if cam.fault is Fault.REFUSE:
                cam.stats.refused_connections += 1
                reset_connection(writer.transport)
                return
            conn = _Connection(self, reader, writer)
            self._connections.add(conn)
            await conn.run()
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ssl.SSLError,
        ):
            pass
        except ValueError:  # garbage in place of a Content-Length, an over-long line...
            pass
        finally:
            if conn is not None:
                conn.close()
                self._connections.discard(conn)
            else:
                writer.transport.close()
            self._tasks.discard(task)

    def fault_changed(self, fault: Fault | None) -> None:
        """A new fault: DROP cuts every playing session DROP_AFTER seconds later."""
        for conn in self._connections:
            if fault is Fault.DROP and conn.playing:
                conn.schedule_drop()
            elif fault is not Fault.DROP and conn.drop_handle is not None:
                conn.drop_handle.cancel()
                conn.drop_handle = None

    async def stop(self) -> None:
        """Stop listening, abort every connection and wait (bounded) for their tasks."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.close()
        for conn in list(self._connections):
            conn.close(abort=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
        server.abort_clients()
