"""One virtual IP camera: configuration, faults, authentication and its RTSP and HTTP servers."""

import asyncio
import base64
from dataclasses import asdict, dataclass
from enum import StrEnum
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import time
from typing import TYPE_CHECKING, Any, Literal, Self
import uuid

from .media import MediaSource

if TYPE_CHECKING:
    from .http import HttpServer
    from .rtsp import RtspServer
    from .wsdiscovery import WsDiscoveryResponder

_LOGGER = logging.getLogger(__name__)

REALM = "LocalCam virtual camera"
#: How long a Digest nonce stays valid; older ones get a 401 with stale=true.
NONCE_LIFETIME = 300.0
_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class OnvifProfileSpec:
    """One ONVIF media profile the camera reports (GetProfiles)."""

    token: str
    name: str
    encoding: str = "H264"
    divisor: int = 1  # picture size divided by this, unless width/height are given
    width: int | None = None
    height: int | None = None
    path: str = "/stream"  # RTSP path of its stream URI (a sub profile may reuse /stream)
    # Path of its snapshot URI (None: the camera's reported_snapshot_path), and the video
    # source (an NVR's channel) it encodes, as GetProfiles reports its SourceToken.
    snapshot_path: str | None = None
    source: str = "video0"


#: A main profile at full size and a sub profile at half size (both on /stream).
DEFAULT_PROFILES: tuple[OnvifProfileSpec, ...] = (
    OnvifProfileSpec("main", "mainStream"),
    OnvifProfileSpec("sub", "subStream", divisor=2),
)


@dataclass(slots=True)
class CameraConfig:
    """Everything that defines a virtual camera."""

    name: str
    color: tuple[int, int, int]
    host: str = "127.0.0.1"
    rtsp_port: int = 0  # 0 = pick a free port
    http_port: int = 0  # 0 = pick a free port
    width: int = 640
    height: int = 360
    fps: float = 10.0
    gop_seconds: float = 1.0
    username: str | None = None
    password: str | None = None
    auth: Literal["digest", "basic"] = "digest"
    rtsp: bool = True
    http_snapshot: bool = True
    keyframe_on_connect: bool = False
    slow_delay: float = 3.0
    # ONVIF Device and Media services on the HTTP server (virtualcam/onvif.py).
    onvif: bool = False
    serial: str | None = None  # None: GetDeviceInformation reports an empty SerialNumber
    mac: str | None = None  # None: GetNetworkInterfaces reports no hardware address
    manufacturer: str = "LocalCam"
    model: str = "VirtualCam"
    firmware: str = "1.0.0"
    clock_offset: float = 0.0  # camera clock = real time + this many seconds
    profiles: tuple[OnvifProfileSpec, ...] = DEFAULT_PROFILES
    hevc_only: bool = False  # every profile reports H265
    # Host the camera writes into its stream/snapshot URIs (None: its real host), to
    # emulate a camera that reports a wrong self-address behind NAT.
    reported_host: str | None = None
    reported_xaddr_host: str | None = None  # the same for service XAddrs
    reported_userinfo: str | None = None  # "user:pass" embedded in reported URIs
    # The path GetSnapshotUri reports: another one (where nothing answers) emulates a
    # camera whose reported snapshot URI does not work while its stream does.
    reported_snapshot_path: str = "/snapshot.jpg"
    device_uuid: str | None = None  # None: a UUID derived from the name
    # WS-Discovery responder on host:port (None: none; 0: pick a free port).
    wsdiscovery_port: int | None = None
    scope_mix: str = "streaming"  # see virtualcam.wsdiscovery.ScopeMix
    # Where Fault.REDIRECT and Fault.REDIRECT_PLAYERS send RTSP clients (None: a loopback
    # port where nothing listens). Tests point it at another virtual camera.
    redirect_location: str | None = None
    # A band of noise at the bottom of the picture: a real camera's bit rate (benchmarks).
    noise: bool = False
    # RTSP over TLS (rtsps://) with this certificate chain and key (PEM paths; see
    # virtualcam.tls.self_signed), as cameras with "secure RTSP" serve it.
    tls_cert: str | None = None
    tls_key: str | None = None


class Fault(StrEnum):
    """Misbehaviours a camera can be switched into; the servers apply them per request."""

    # RTSP: new connections are accepted then reset at once (SO_LINGER 0 -> RST). HTTP: reset
    # right after the request head, except /status and /control (so the fault can be cleared).
    REFUSE = "refuse"
    # Requests are read and never answered (RTSP and HTTP snapshot); RTP to playing clients
    # pauses too and resumes at the next IDR. Hung handlers end when the client leaves or stop().
    HANG = "hang"
    # Every RTSP response and every snapshot is sent slow_delay seconds late.
    SLOW = "slow"
    # Snapshot: 200 image/jpeg carrying the first half of the JPEG (no FF D9 end marker).
    TRUNCATED_JPEG = "truncated_jpeg"
    # Snapshot: 200 text/html with a small HTML error page.
    WRONG_CONTENT_TYPE = "wrong_content_type"
    # 401 for DESCRIBE/SETUP/PLAY and snapshots whatever the credentials (even with none set).
    UNAUTHORIZED = "unauthorized"
    # RTSP: ~1 s after PLAY (or after the fault is set) the connection and UDP are closed.
    # Snapshot: headers with the full Content-Length, half the body, then the connection closes.
    DROP = "drop"
    # RTSP only: DESCRIBE answers 302 with a Location on a loopback port where nothing
    # listens (a camera sending its clients elsewhere; a client that follows finds nothing).
    REDIRECT = "redirect"
    # RTSP only: the same, but only for FFmpeg's DESCRIBE (User-Agent "Lavf..."); other
    # clients (LocalCam's own health check) are served normally. A camera that passes a
    # check but sends its players elsewhere.
    REDIRECT_PLAYERS = "redirect_players"

    @classmethod
    def parse(cls, value: Fault | str | None) -> Fault | None:
        """Accept a Fault, its value or name (any case), or None/''/'none' for no fault."""
        if value is None or isinstance(value, Fault):
            return value
        text = value.strip().lower()
        if text in ("", "none", "null"):
            return None
        return cls(text)


@dataclass(slots=True)
class CameraStats:
    """Counters kept across restarts."""

    rtsp_connections: int = 0
    describe_requests: int = 0
    play_sessions: int = 0
    active_play_sessions: int = 0
    snapshot_requests: int = 0
    unauthorized_responses: int = 0
    # RTSP and HTTP requests that carried an Authorization header (any scheme),
    # and ONVIF requests with a WS-Security UsernameToken: how a test sees that
    # a client sent this device credentials at all.
    credentialed_requests: int = 0
    onvif_requests: int = 0
    onvif_auth_failures: int = 0
    http_connections: int = 0
    refused_connections: int = 0
    dropped_sessions: int = 0
    udp_setups: int = 0  # SETUPs that asked for RTP over UDP (the rest are interleaved)
    udp_client_port: int = 0  # the RTP port the latest UDP SETUP asked to be sent to
    udp_datagrams_received: int = 0  # datagrams from clients (RTCP reports, NAT punches)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for JSON)."""
        return asdict(self)


class Authenticator:
    """Basic or Digest (RFC 2617, MD5) checks shared by the RTSP and HTTP servers."""

    def __init__(self, config: CameraConfig) -> None:
        """Remember the credentials; nonces are HMACs so no per-client state is kept."""
        self._config = config
        self._secret = os.urandom(16)

    @property
    def required(self) -> bool:
        """Whether requests must carry credentials."""
        return bool(self._config.username)

    def _nonce(self) -> str:
        """A nonce that proves its own age: hex time plus an HMAC of it."""
        stamp = f"{int(time.time()):x}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}{mac}"

    def _nonce_ok(self, nonce: str) -> bool:
        """Whether the nonce is one of ours and still fresh."""
        stamp, mac = nonce[:-24], nonce[-24:]
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not stamp or not hmac.compare_digest(mac, good):
            return False
        try:
            return time.time() - int(stamp, 16) < NONCE_LIFETIME
        except ValueError:
            return False

    def challenge(self, *, qop: bool, stale: bool = False) -> str:
        """The WWW-Authenticate value for the configured scheme."""
        if self._config.auth == "basic":
            return f'Basic realm="{REALM}"'
        value = f'Digest realm="{REALM}", nonce="{self._nonce()}", algorithm=MD5'
        if qop:
            value += ', qop="auth"'
        if stale:
            value += ", stale=true"
        return value

    def check(self, method: str, authorization: str | None) -> bool:
        """Whether the Authorization header carries this camera's credentials."""
        cfg = self._config
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, rest = authorization.strip().partition(" ")
        user, password = cfg.username or "", cfg.password or ""
        # Only the configured scheme is accepted, like a digest-only camera.
        if cfg.auth == "basic":
            if scheme.lower() != "basic":
                return False
            try:
                got = base64.b64decode(rest.strip(), validate=True)
            except ValueError:
                return False
            return hmac.compare_digest(got, f"{user}:{password}".encode())
        if scheme.lower() != "digest":
            return False
        params = {
            m[1].lower(): m[2] if m[2] is not None else m[3] for m in _DIGEST_PARAM.finditer(rest)
        }
        nonce, uri, response = params.get("nonce"), params.get("uri"), params.get("response")
        if params.get("username") != user or params.get("realm") != REALM:
            return False
        if not nonce or not uri or not response or not self._nonce_ok(nonce):
            return False
        if params.get("algorithm", "MD5").upper() != "MD5":
            return False
        ha1 = _md5(f"{user}:{REALM}:{password}")
        ha2 = _md5(f"{method}:{uri}")
        if qop := params.get("qop"):
            if qop != "auth" or not params.get("nc") or not params.get("cnonce"):
                return False
            expected = _md5(f"{ha1}:{nonce}:{params['nc']}:{params['cnonce']}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return hmac.compare_digest(expected, response.lower())

    def is_stale(self, authorization: str | None) -> bool:
        """Whether a Digest header failed only because its (genuine) nonce expired."""
        if not authorization or self._config.auth != "digest":
            return False
        match = re.search(r'nonce="([^"]*)"', authorization)
        if not match:
            return False
        nonce = match[1]
        stamp, mac = nonce[:-24], nonce[-24:]
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return bool(stamp) and hmac.compare_digest(mac, good) and not self._nonce_ok(nonce)


def _md5(text: str) -> str:
    """Hex MD5 of UTF-8 text (Digest's H())."""
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (SO_REUSEADDR, so restart() can rebind at once)."""
    sock = socket.create_server((host, port), backlog=256, reuse_port=False)
    sock.setblocking(False)
    return sock


def _check_loopback(host: str) -> None:
    """Refuse to bind anywhere but IPv4 loopback: the emulator must never leave the host."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback IPv4 address, got {host!r}") from None
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"host must be a loopback IPv4 address, got {host!r}")


class VirtualCamera:
    """An IP camera on loopback: RTSP (H.264 over RTP) and an HTTP JPEG snapshot endpoint."""

    def __init__(self, config: CameraConfig) -> None:
        """Build the camera; nothing listens until start()."""
        _check_loopback(config.host)
        self.config = config
        self.stats = CameraStats()
        self.auth = Authenticator(config)
        self.media = MediaSource(
            config.name,
            config.color,
            width=config.width,
            height=config.height,
            fps=config.fps,
            gop_seconds=config.gop_seconds,
            noise=config.noise,
        )
        self._fault: Fault | None = None
        self._rtsp_port = config.rtsp_port
        self._http_port = config.http_port
        self._rtsp: RtspServer | None = None
        self._http: HttpServer | None = None
        self._wsd: WsDiscoveryResponder | None = None
        self._wsd_port = config.wsdiscovery_port or 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> Self:
        """Start on entering `async with`."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop on leaving `async with`."""
        await self.stop()

    @property
    def name(self) -> str:
        """The camera's name (also burned into its picture)."""
        return self.config.name

    @property
    def color(self) -> tuple[int, int, int]:
        """The camera's fill colour."""
        return self.config.color

    @property
    def running(self) -> bool:
        """Whether start() has completed and stop() has not been called since."""
        return self._running

    @property
    def rtsp_port(self) -> int:
        """The RTSP port actually bound (0 before the first start() when auto-allocated)."""
        return self._rtsp_port

    @property
    def http_port(self) -> int:
        """The HTTP port actually bound (0 before the first start() when auto-allocated)."""
        return self._http_port

    @property
    def rtsp_scheme(self) -> str:
        """Rtsps with a TLS certificate configured, else rtsp."""
        return "rtsps" if self.config.tls_cert else "rtsp"

    @property
    def rtsp_url(self) -> str:
        """rtsp(s)://host:port/stream, without credentials."""
        return f"{self.rtsp_scheme}://{self.config.host}:{self._rtsp_port}/stream"

    @property
    def snapshot_url(self) -> str:
        """http://host:port/snapshot.jpg, without credentials."""
        return f"http://{self.config.host}:{self._http_port}/snapshot.jpg"

    @property
    def onvif_url(self) -> str:
        """http://host:port/onvif/device_service (served only when config.onvif)."""
        return f"http://{self.config.host}:{self._http_port}/onvif/device_service"

    @property
    def device_uuid(self) -> str:
        """The camera's device UUID (ONVIF endpoint reference), stable per name."""
        if self.config.device_uuid:
            return self.config.device_uuid
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtualcam:{self.config.name}"))

    @property
    def clock(self) -> float:
        """The camera's own clock: real time plus clock_offset (UNIX seconds)."""
        return time.time() + self.config.clock_offset

    @property
    def wsdiscovery_port(self) -> int:
        """The WS-Discovery UDP port actually bound (0 when there is no responder)."""
        return self._wsd_port

    @property
    def encoder_running(self) -> bool:
        """Whether this camera's encoder thread is running (only while someone plays)."""
        return self.media.encoder_running

    @property
    def fault(self) -> Fault | None:
        """The active fault, or None for a healthy camera."""
        return self._fault

    @fault.setter
    def fault(self, value: Fault | str | None) -> None:
        """Switch fault; takes effect on the next request (DROP also ends current streams)."""
        self._fault = Fault.parse(value)
        if self._loop is not None and self._rtsp is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fault_changed)

    def set_fault(self, fault: Fault | str | None) -> None:
        """Same as assigning `fault`."""
        self.fault = fault

    def _fault_changed(self) -> None:
        """Event-loop side of a fault switch."""
        if self._rtsp is not None:
            self._rtsp.fault_changed(self._fault)

    def status(self) -> dict[str, Any]:
        """What GET /status returns."""
        return {
            "name": self.config.name,
            "color": list(self.config.color),
            "fault": self._fault.value if self._fault else None,
            "running": self._running,
            "encoder_running": self.media.encoder_running,
            "rtsp_url": self.rtsp_url if self.config.rtsp else None,
            "snapshot_url": self.snapshot_url if self.config.http_snapshot else None,
            "onvif_url": self.onvif_url if self.config.onvif else None,
            **self.stats.as_dict(),
        }

    async def start(self) -> None:
        """Bind the ports and serve; no encoder runs until a client plays."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._running:
                return
            # Imported here: both servers import this module for Fault and VirtualCamera.
            from .http import HttpServer  # noqa: PLC0415
            from .rtsp import RtspServer  # noqa: PLC0415
            from .wsdiscovery import Announcement, WsDiscoveryResponder  # noqa: PLC0415

            self._loop = asyncio.get_running_loop()
            cfg = self.config
            try:
                if cfg.rtsp:
                    await self.media.prepare()
                    sock = _bind(cfg.host, self._rtsp_port)
                    self._rtsp_port = sock.getsockname()[1]
                    self._rtsp = RtspServer(self)
                    await self._rtsp.start(sock)
                if cfg.http_snapshot or cfg.onvif:
                    sock = _bind(cfg.host, self._http_port)
                    self._http_port = sock.getsockname()[1]
                    self._http = HttpServer(self)
                    await self._http.start(sock)
                if cfg.wsdiscovery_port is not None:
                    self._wsd = WsDiscoveryResponder(
                        [Announcement.for_camera(self)], host=cfg.host, port=self._wsd_port
                    )
                    await self._wsd.start()
                    self._wsd_port = self._wsd.port
            except BaseException:
                await self._shutdown()
                raise
            self._running = True

    async def stop(self) -> None:
        """Close every connection, listener and thread; safe to call twice."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._running = False
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Tear down servers then media (servers first so no one resubscribes)."""
        rtsp, http = self._rtsp, self._http
        self._rtsp = self._http = None
        if self._wsd is not None:
            self._wsd.stop()
            self._wsd = None
        results = await asyncio.gather(
            *(s.stop() for s in (rtsp, http) if s is not None), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                _LOGGER.warning("%s: error while stopping: %r", self.config.name, result)
        await self.media.close()
        self.stats.active_play_sessions = 0

    async def restart(self) -> None:
        """Reboot: drop every client and listen again on the same ports."""
        await self.stop()
        await self.start()

    def __repr__(self) -> str:
        """Name, ports and fault, for test output."""
        return (
            f"<VirtualCamera {self.config.name} rtsp={self._rtsp_port} "
            f"http={self._http_port} fault={self._fault}>"
        )
