"""An emulated Cast receiver: a Nest Hub as Home Assistant's cast integration meets it.

It speaks the Cast v2 protocol pychromecast speaks to a real device (protobuf
CastMessages with JSON payloads, length-prefixed, over TLS on port 8009): the
connection, heartbeat, receiver and media namespaces, with the Default Media
Receiver as the one app it can launch. It answers the ``/setup/eureka_info``
HTTP(S) queries pychromecast's known-hosts browser makes (ports 8008 and
8443), so Home Assistant finds it without mDNS.

A LOAD starts what the receiver's web player would do with the URL: fetch it
and decode it. A JPEG is decoded once; an HLS playlist is followed (init
section, then every new media segment, decoded with one persistent H.264
decoder as a player's would be) until the media is stopped or replaced, the
URL stops answering, or a bound runs out. Each LOAD becomes a `Playback`
that records when the first picture decoded, the colour at its centre (which
virtual camera it came from), how many pictures and fetches followed, and why
it ended. Status goes back to the sender as a device's would: BUFFERING, then
PLAYING at the first picture, IDLE with an idle reason at the end.

Fetching is limited to loopback and private addresses (the receiver sits on
a LAN namespace or on 127.0.0.0/8); any other URL is refused, recorded, and
never fetched. Every loop here is bounded in time and count.
"""

import asyncio
from collections.abc import Callable
import contextlib
from dataclasses import dataclass, field
import io
import ipaddress
import json
from pathlib import Path
import ssl
import struct
import tempfile
import time
from typing import Any, Final
from urllib.parse import urljoin, urlsplit
import uuid

import aiohttp
from aiohttp import web

from .tls import self_signed

NS_CONNECTION: Final = "urn:x-cast:com.google.cast.tp.connection"
NS_HEARTBEAT: Final = "urn:x-cast:com.google.cast.tp.heartbeat"
NS_RECEIVER: Final = "urn:x-cast:com.google.cast.receiver"
NS_MEDIA: Final = "urn:x-cast:com.google.cast.media"
PLATFORM: Final = "receiver-0"
APP_MEDIA_RECEIVER: Final = "CC1AD845"
APP_BACKDROP: Final = "E8C28D3C"

MAX_MESSAGE: Final = 64 * 1024
# pychromecast pings every 5 s; a connection silent for longer than this is gone.
READ_IDLE: Final = 30.0
MAX_MESSAGES_PER_CONNECTION: Final = 1_000_000
MAX_BODY: Final = 16 * 1024 * 1024
FETCH_TIMEOUT: Final = 12.0
# A player gives up on a playlist that errors this many times in a row.
MAX_PLAYLIST_FAILURES: Final = 5
MAX_PLAY_SECONDS: Final = 3600.0
MAX_POLLS: Final = 100_000
LOAD_ATTEMPTS: Final = 3
LOAD_RETRY_DELAY: Final = 1.0
# Where a receiver's player may fetch from: loopback and the private LAN ranges.
LAN: Final = tuple(
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
    )
)


def fetch_allowed(url: str) -> bool:
    """Whether the receiver may fetch `url`: http(s) to a loopback or private IP literal."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return False
    # Named ranges, not ipaddress's is_private: that also holds the documentation
    # and benchmarking ranges (203.0.113.0/24, 198.18.0.0/15 ...), which are not a LAN.
    return any(address in network for network in LAN if network.version == address.version)


# -- the CastMessage wire format ------------------------------------------------------------


def _cast_message() -> Any:
    """The CastMessage class pychromecast generated from the protobuf schema."""
    from pychromecast.generated.cast_channel_pb2 import CastMessage  # noqa: PLC0415

    return CastMessage


def encode_message(source: str, destination: str, namespace: str, data: dict[str, Any]) -> bytes:
    """One length-prefixed CastMessage with a JSON payload."""
    message_class = _cast_message()
    message = message_class()
    message.protocol_version = message_class.CASTV2_1_0
    message.source_id = source
    message.destination_id = destination
    message.namespace = namespace
    message.payload_type = message_class.STRING
    message.payload_utf8 = json.dumps(data)
    body: bytes = message.SerializeToString()
    return struct.pack(">I", len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> tuple[str, str, str, dict[str, Any]]:
    """Read one CastMessage; return (source, destination, namespace, payload)."""
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if not 0 < length <= MAX_MESSAGE:
        raise ValueError(f"message length {length} out of bounds")
    message = _cast_message()()
    message.ParseFromString(await reader.readexactly(length))
    try:
        data = json.loads(message.payload_utf8) if message.payload_utf8 else {}
    except json.JSONDecodeError as err:
        raise ValueError("payload is not JSON") from err
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")  # noqa: TRY004 - a protocol error
    return message.source_id, message.destination_id, message.namespace, data


# -- the player ------------------------------------------------------------------------------


@dataclass
class Playback:
    """What the receiver's player did with one LOAD."""

    session: int
    content_id: str
    content_type: str
    loaded_at: float  # time.monotonic() at LOAD
    first_picture_at: float | None = None
    colour: tuple[int, int, int] | None = None
    colours: list[tuple[int, int, int]] = field(default_factory=list)
    pictures: int = 0
    fetches: int = 0
    errors: list[str] = field(default_factory=list)
    ended: str | None = None  # stopped, replaced, not_found, error, refused, finished


def _centre_colour(rgb: Any) -> tuple[int, int, int]:
    """Mean colour of the centre quarter of an RGB array (H x W x 3)."""
    height, width = rgb.shape[:2]
    centre = rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4]
    mean = centre.reshape(-1, 3).mean(axis=0)
    return (int(mean[0]), int(mean[1]), int(mean[2]))


def decode_jpeg_colour(data: bytes) -> tuple[int, int, int]:
    """Centre colour of a JPEG (raises ValueError if it does not decode)."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"not a decodable image: {err}") from err
    return _centre_colour(rgb)


class FragmentDecoder:
    """One H.264 decoder fed fMP4 fragments in order, as an HLS player's would be.

    The init section gives the codec and its parameters; each fragment
    (moof + mdat) is demuxed against it and its packets go to the same
    decoder, so a fragment that does not start with a keyframe decodes once
    an earlier one did. Runs in a worker thread (PyAV releases the GIL).
    """

    def __init__(self) -> None:
        """No codec until the first init section."""
        self._init: bytes | None = None
        self._codec: Any = None

    def feed(self, init: bytes, fragment: bytes) -> list[tuple[int, int, int]]:
        """Decode one fragment; return the centre colour of each picture in it."""
        import av  # noqa: PLC0415

        if init != self._init:
            self._init, self._codec = init, None
        colours: list[tuple[int, int, int]] = []
        try:
            with av.open(io.BytesIO(init + fragment), format="mp4") as container:
                if not container.streams.video:
                    raise ValueError("no video track")
                stream = container.streams.video[0]
                if self._codec is None:
                    self._codec = av.CodecContext.create(stream.codec_context.name, "r")
                    self._codec.extradata = stream.codec_context.extradata
                for packet in container.demux(stream):
                    if packet.size == 0:
                        continue
                    colours.extend(
                        _centre_colour(frame.to_ndarray(format="rgb24"))
                        for frame in self._codec.decode(packet)
                    )
        except av.error.FFmpegError as err:
            raise ValueError(f"fragment does not decode: {err}") from err
        return colours


def parse_media_playlist(text: str, base: str) -> tuple[str | None, list[tuple[int, str]], float]:
    """(init URL, [(media sequence number, segment URL)], target duration) of a playlist."""
    if not text.startswith("#EXTM3U"):
        raise ValueError("not an HLS playlist")
    init: str | None = None
    sequence = 0
    target = 1.0
    segments: list[tuple[int, str]] = []
    pending = False
    for raw in text.splitlines()[:10_000]:
        line = raw.strip()
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target = float(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            for attr in line.split(":", 1)[1].split(","):
                key, _, value = attr.partition("=")
                if key.strip() == "URI":
                    init = urljoin(base, value.strip().strip('"'))
        elif line.startswith("#EXTINF:"):
            pending = True
        elif line and not line.startswith("#") and pending:
            segments.append((sequence + len(segments), urljoin(base, line)))
            pending = False
    return init, segments, target


def master_variant(text: str, base: str) -> str | None:
    """The first variant URL of a master playlist (None if `text` is a media playlist)."""
    if "#EXT-X-STREAM-INF" not in text:
        return None
    lines = [line.strip() for line in text.splitlines()[:10_000]]
    for index, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF"):
            for candidate in lines[index + 1 :]:
                if candidate and not candidate.startswith("#"):
                    return urljoin(base, candidate)
    return None


class _Player:
    """Plays one LOAD until told to stop, the URL dies, or its bound runs out."""

    def __init__(
        self,
        playback: Playback,
        http: aiohttp.ClientSession,
        on_first_picture: Callable[[], None],
        max_seconds: float,
    ) -> None:
        self.playback = playback
        self._http = http
        self._on_first_picture = on_first_picture
        self._deadline = playback.loaded_at + max_seconds
        self._decoder = FragmentDecoder()

    async def _get(self, url: str) -> tuple[int, bytes, str]:
        """GET one URL (bounded); return status, body and content type."""
        self.playback.fetches += 1
        async with asyncio.timeout(FETCH_TIMEOUT):
            async with self._http.get(url, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    raise ValueError("body too large")
                return resp.status, body, resp.headers.get("Content-Type", "")

    def _pictures(self, colours: list[tuple[int, int, int]]) -> None:
        if not colours:
            return
        playback = self.playback
        if playback.first_picture_at is None:
            playback.first_picture_at = time.monotonic()
            playback.colour = colours[0]
            self._on_first_picture()
        playback.pictures += len(colours)
        # Keep a bounded sample of what was shown: every new colour is kept.
        for colour in colours:
            if len(playback.colours) < 64 and colour not in playback.colours[-1:]:
                playback.colours.append(colour)

    def _end(self, reason: str, error: str | None = None) -> None:
        if error:
            self.playback.errors.append(error)
        if self.playback.ended is None:
            self.playback.ended = reason

    async def run(self) -> None:
        """Play; every exit records why."""
        url = self.playback.content_id
        if not fetch_allowed(url):
            self._end("refused", f"refused to fetch {urlsplit(url).hostname}")
            return
        try:
            # Players retry a media URL that does not answer yet (hls.js, Shaka:
            # a few times, about a second apart) before they give up.
            for attempt in range(LOAD_ATTEMPTS):
                status, body, content_type = await self._get(url)
                if status == 200 or attempt == LOAD_ATTEMPTS - 1:
                    break
                await asyncio.sleep(LOAD_RETRY_DELAY)
            if status == 404:
                self._end("not_found")
                return
            if status != 200:
                self._end("error", f"HTTP {status}")
                return
            if content_type.startswith("image/") or body.startswith(b"\xff\xd8"):
                colour = await asyncio.to_thread(decode_jpeg_colour, body)
                self._pictures([colour])
                # A still stays on screen until the sender loads something else.
                return
            await self._follow(url, body.decode("utf-8", "replace"))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
            self._end("error", f"{type(err).__name__}: {err}"[:200])

    async def _follow(self, url: str, text: str) -> None:
        """Follow a live HLS playlist: decode every new segment, in order."""
        if (variant := master_variant(text, url)) is not None:
            if not fetch_allowed(variant):
                self._end("refused", "variant outside the allowed networks")
                return
            url = variant
            status, body, _ = await self._get(url)
            if status != 200:
                self._end("not_found" if status == 404 else "error", f"HTTP {status}")
                return
            text = body.decode("utf-8", "replace")
        inits: dict[str, bytes] = {}
        next_sequence: int | None = None
        failures = 0
        for _ in range(MAX_POLLS):
            init_url, segments, target = parse_media_playlist(text, url)
            if init_url is None:
                raise ValueError("playlist without an init section (EXT-X-MAP)")
            if next_sequence is None and segments:
                # Start near the live edge, as players do (one segment back).
                next_sequence = segments[max(0, len(segments) - 2)][0]
            for number, segment_url in segments:
                if next_sequence is None or number < next_sequence:
                    continue
                if not (fetch_allowed(init_url) and fetch_allowed(segment_url)):
                    self._end("refused", "segment outside the allowed networks")
                    return
                if init_url not in inits:
                    status, inits[init_url], _ = await self._get(init_url)
                    if status != 200:
                        del inits[init_url]
                        break
                status, fragment, _ = await self._get(segment_url)
                if status != 200:
                    break
                next_sequence = number + 1
                colours = await asyncio.to_thread(self._decoder.feed, inits[init_url], fragment)
                self._pictures(colours)
            if self.playback.ended is not None or time.monotonic() > self._deadline:
                self._end("finished")
                return
            await asyncio.sleep(max(0.2, min(target / 2, 2.0)))
            status, body, _ = await self._get(url)
            if status == 404:
                self._end("not_found")
                return
            if status != 200:
                failures += 1
                if failures >= MAX_PLAYLIST_FAILURES:
                    self._end("error", f"HTTP {status} {failures} times")
                    return
                continue
            failures = 0
            text = body.decode("utf-8", "replace")
        self._end("finished")


# -- the device ------------------------------------------------------------------------------


class _Connection:
    """One sender's TLS connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.peers: set[str] = set()  # sender ids seen on this connection

    def send(self, source: str, destination: str, namespace: str, data: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_message(source, destination, namespace, data))


def _refuse(
    connection: _Connection, source: str, destination: str, namespace: str, request_id: Any
) -> None:
    """Answer a command this receiver does not know, as a device does."""
    refusal = {"type": "INVALID_REQUEST", "reason": "INVALID_COMMAND", "requestId": request_id}
    connection.send(source, destination, namespace, refusal)


class CastReceiver:
    """A Cast device on `host`: Cast v2 over TLS, eureka_info over HTTP and HTTPS.

    `playbacks` lists every LOAD and what its player did. `max_play_seconds`
    bounds how long one LOAD is played.
    """

    def __init__(
        self,
        host: str,
        *,
        name: str = "Kitchen display",
        cast_port: int = 8009,
        http_port: int = 8008,
        https_port: int = 8443,
        device_uuid: uuid.UUID | None = None,
        max_play_seconds: float = MAX_PLAY_SECONDS,
    ) -> None:
        """Remember where to listen; nothing listens until start()."""
        self.host = host
        self.name = name
        self.cast_port = cast_port
        self.http_port = http_port
        self.https_port = https_port
        self.uuid = device_uuid or uuid.uuid4()
        self.max_play_seconds = max_play_seconds
        self.playbacks: list[Playback] = []
        self.connections_accepted = 0
        self.protocol_errors: list[str] = []
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._app: dict[str, Any] | None = None
        self._session_counter = 0
        self._request_counter = 0
        self._player_task: asyncio.Task[None] | None = None
        self._playback: Playback | None = None
        self._player_state = "IDLE"
        self._idle_reason: str | None = None
        self._volume = 1.0
        self._muted = False
        self._changed = asyncio.Event()

    # -- lifecycle --

    async def start(self) -> None:
        """Listen for Cast v2 and eureka_info."""
        self._tmp = tempfile.TemporaryDirectory(prefix="virtualcast-")
        cert, key = await asyncio.to_thread(self_signed, Path(self._tmp.name), self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8),
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
        )
        self._servers.append(
            await asyncio.start_server(self._serve, self.host, self.cast_port, ssl=context)
        )
        app = web.Application()
        app.router.add_get("/setup/eureka_info", self._eureka)
        for port, tls in ((self.http_port, None), (self.https_port, context)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.host, port, ssl_context=tls).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        """Close everything: servers, connections, the player."""
        await self._stop_player("stopped")
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.writer.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.wait_closed()
        for runner in self._runners:
            await runner.cleanup()
        if self._http is not None:
            await self._http.close()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._servers, self._runners, self._http, self._tmp = [], [], None, None

    # -- what a test or soak reads --

    @property
    def playing(self) -> Playback | None:
        """The current LOAD's playback, if any."""
        return self._playback

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until `predicate()` holds; it is checked on every change."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self._changed.wait()
        return predicate()

    def _notify(self) -> None:
        self._changed.set()

    # -- eureka_info --

    async def _eureka(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": self.name,
                "device_info": {
                    "name": self.name,
                    "manufacturer": "LocalCam virtual",
                    "model_name": "Virtual Hub",
                    "ssdp_udn": str(self.uuid),
                    "capabilities": {"display_supported": True, "multizone_supported": False},
                },
            }
        )

    # -- Cast v2 --

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        self.connections_accepted += 1
        try:
            for _ in range(MAX_MESSAGES_PER_CONNECTION):
                async with asyncio.timeout(READ_IDLE):
                    source, destination, namespace, data = await read_message(reader)
                connection.peers.add(source)
                self._handle(connection, source, destination, namespace, data)
                await writer.drain()
        except asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError:
            pass
        except ValueError as err:
            # Protocol error from the sender: drop the connection, as a device does.
            self.protocol_errors.append(str(err)[:200])
        except Exception as err:  # noqa: BLE001 - e.g. protobuf's DecodeError
            self.protocol_errors.append(f"{type(err).__name__}: {err}"[:200])
        finally:
            self._connections.discard(connection)
            writer.close()

    def _handle(
        self,
        connection: _Connection,
        source: str,
        destination: str,
        namespace: str,
        data: dict[str, Any],
    ) -> None:
        kind = data.get("type")
        request_id = data.get("requestId")
        if namespace == NS_HEARTBEAT:
            if kind == "PING":
                connection.send(destination, source, NS_HEARTBEAT, {"type": "PONG"})
            return
        if namespace == NS_CONNECTION:
            return
        if namespace == NS_RECEIVER and destination == PLATFORM:
            self._receiver_message(connection, source, kind, request_id, data)
            return
        if namespace == NS_MEDIA and self._app and destination == self._app["transportId"]:
            self._media_message(connection, source, kind, request_id, data)

    def _receiver_status(self) -> dict[str, Any]:
        if self._app is not None:
            applications = [self._app]
        else:
            applications = [
                {
                    "appId": APP_BACKDROP,
                    "displayName": "Backdrop",
                    "isIdleScreen": True,
                    "namespaces": [],
                    "sessionId": "backdrop",
                    "statusText": "",
                    "transportId": "backdrop",
                }
            ]
        return {
            "applications": applications,
            "isActiveInput": True,
            "isStandBy": False,
            "volume": {
                "controlType": "attenuation",
                "level": self._volume,
                "muted": self._muted,
                "stepInterval": 0.05,
            },
        }

    def _broadcast(self, source: str, namespace: str, data: dict[str, Any]) -> None:
        for connection in list(self._connections):
            connection.send(source, "*", namespace, data)

    def _reply(
        self,
        connection: _Connection,
        source: str,
        destination: str,
        namespace: str,
        data: dict[str, Any],
        request_id: Any,
    ) -> None:
        """Answer the sender (with its requestId), and tell every other sender."""
        connection.send(source, destination, namespace, {**data, "requestId": request_id})
        for other in list(self._connections):
            if other is not connection:
                other.send(source, "*", namespace, {**data, "requestId": 0})

    def _receiver_message(
        self,
        connection: _Connection,
        source: str,
        kind: Any,
        request_id: Any,
        data: dict[str, Any],
    ) -> None:
        if kind == "LAUNCH":
            if data.get("appId") != APP_MEDIA_RECEIVER:
                connection.send(
                    PLATFORM,
                    source,
                    NS_RECEIVER,
                    {"type": "LAUNCH_ERROR", "reason": "NOT_FOUND", "requestId": request_id},
                )
                return
            if self._app is None:
                self._session_counter += 1
                self._app = {
                    "appId": APP_MEDIA_RECEIVER,
                    "displayName": "Default Media Receiver",
                    "isIdleScreen": False,
                    "namespaces": [{"name": NS_MEDIA}],
                    "sessionId": str(uuid.uuid4()),
                    "statusText": "Ready To Cast",
                    "transportId": f"web-{self._session_counter}",
                }
        elif kind == "STOP":
            self._app = None
            self._spawn_stop("stopped")
        elif kind == "SET_VOLUME":
            volume = data.get("volume") or {}
            if isinstance(volume.get("level"), (int, float)):
                self._volume = min(1.0, max(0.0, float(volume["level"])))
            if isinstance(volume.get("muted"), bool):
                self._muted = volume["muted"]
        elif kind != "GET_STATUS":
            _refuse(connection, PLATFORM, source, NS_RECEIVER, request_id)
            return
        status = {"type": "RECEIVER_STATUS", "status": self._receiver_status()}
        self._reply(connection, PLATFORM, source, NS_RECEIVER, status, request_id)
        self._notify()

    def _media_status(self) -> list[dict[str, Any]]:
        playback = self._playback
        if playback is None:
            return []
        status: dict[str, Any] = {
            "mediaSessionId": playback.session,
            "playbackRate": 1,
            "playerState": self._player_state,
            "currentTime": round(time.monotonic() - playback.loaded_at, 3),
            "supportedMediaCommands": 15,
            "volume": {"level": self._volume, "muted": self._muted},
            "media": {
                "contentId": playback.content_id,
                "contentType": playback.content_type,
                "streamType": "LIVE",
            },
            "repeatMode": "REPEAT_OFF",
        }
        if self._idle_reason is not None:
            status["idleReason"] = self._idle_reason
        return [status]

    def _media_message(
        self,
        connection: _Connection,
        source: str,
        kind: Any,
        request_id: Any,
        data: dict[str, Any],
    ) -> None:
        assert self._app is not None
        transport = self._app["transportId"]
        if kind == "LOAD":
            media = data.get("media") or {}
            content_id = media.get("contentId")
            if not isinstance(content_id, str) or not content_id:
                connection.send(
                    transport,
                    source,
                    NS_MEDIA,
                    {"type": "LOAD_FAILED", "requestId": request_id},
                )
                return
            self._load(content_id, str(media.get("contentType", "")))
        elif kind == "STOP":
            self._spawn_stop("stopped")
        elif kind == "PAUSE" and self._playback is not None:
            self._player_state = "PAUSED"
        elif kind == "PLAY" and self._playback is not None:
            self._player_state = "PLAYING"
        elif kind != "GET_STATUS":
            _refuse(connection, transport, source, NS_MEDIA, request_id)
            return
        status = {"type": "MEDIA_STATUS", "status": self._media_status()}
        self._reply(connection, transport, source, NS_MEDIA, status, request_id)
        self._notify()

    # -- playing --

    def _load(self, content_id: str, content_type: str) -> None:
        previous, previous_task = self._playback, self._player_task
        if previous is not None and previous.ended is None:
            previous.ended = "replaced"
        if previous_task is not None:
            previous_task.cancel()
        playback = Playback(
            session=len(self.playbacks) + 1,
            content_id=content_id,
            content_type=content_type,
            loaded_at=time.monotonic(),
        )
        self.playbacks.append(playback)
        self._playback = playback
        self._player_state, self._idle_reason = "BUFFERING", None
        assert self._http is not None
        player = _Player(
            playback, self._http, lambda: self._first_picture(playback), self.max_play_seconds
        )
        self._player_task = asyncio.get_running_loop().create_task(self._play(player))

    async def _play(self, player: _Player) -> None:
        try:
            await player.run()
        finally:
            playback = player.playback
            if self._playback is playback and playback.ended in ("not_found", "error", "refused"):
                # The media ended by itself (a 404 or an error): IDLE, as a device reports.
                self._player_state = "IDLE"
                self._idle_reason = "FINISHED" if playback.ended == "not_found" else "ERROR"
                self._status_changed()

    def _first_picture(self, playback: Playback) -> None:
        if self._playback is playback:
            self._player_state = "PLAYING"
            self._status_changed()

    def _status_changed(self) -> None:
        if self._app is not None:
            status = {"type": "MEDIA_STATUS", "status": self._media_status(), "requestId": 0}
            self._broadcast(self._app["transportId"], NS_MEDIA, status)
        self._notify()

    def _spawn_stop(self, reason: str) -> None:
        playback, task = self._playback, self._player_task
        if playback is not None and playback.ended is None:
            playback.ended = reason
        if task is not None:
            task.cancel()
        self._player_task = None
        if playback is not None:
            self._player_state, self._idle_reason = "IDLE", "CANCELLED"

    async def _stop_player(self, reason: str) -> None:
        task = self._player_task
        self._spawn_stop(reason)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await task
