"""HTTP views a Cast receiver fetches: ``/api/localcam/cast/{token}/{camera}/…``.

The token is the credential (Cast receivers cannot log in), so the views need
no Home Assistant auth. Every request resolves the token again, bound to the
camera named in the path and to the mode of the route, and once more after
anything it waits for (a still from the camera, a playlist's next part), so a
cast that ended meanwhile is not served; anything else (unknown, expired,
revoked, another camera, another mode, a malformed path) gets the same empty
404.

Live mode re-publishes Home Assistant's own HLS output of that camera as a
plain playlist: no low-latency tags, because Cast receivers play HLS with
their own players (the Cast framework's, or Shaka) and Chromium's native HLS
does not parse LL-HLS. To stay close to live anyway, each finished fMP4 part
of Home Assistant's stream (about one second) is listed as a media segment of
its own, so the first one is playable about a second after the stream starts
instead of a whole segment (six seconds) later.

A reload of the playlist by a cast that was already served the newest part
waits, bounded, for the next part (what LL-HLS calls a blocking reload, here
without the client asking for it). Chromium's native live HLS needs this: it
counts its preroll as a pause, reloads the playlist the moment it starts
playing, and quits ("segment queue never had any data") when the reload lists
no segment it has not seen. With parts of about a second that reload came
milliseconds after the first load and found nothing new. Other players reload
after about a target duration, when a new part is there anyway.
"""

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
import hmac
from http import HTTPStatus
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_interface
import math
import re
import time
from typing import Final, NamedTuple
from weakref import WeakKeyDictionary

from aiohttp import web
from homeassistant.components.camera.const import DATA_COMPONENT as CAMERA_DATA_COMPONENT
from homeassistant.components.stream import Stream
from homeassistant.components.stream.const import HLS_PROVIDER
from homeassistant.components.stream.core import Part, Segment, StreamOutput
from homeassistant.components.stream.fmp4utils import transform_init
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.http import KEY_HASS, HomeAssistantView
from homeassistant.helpers.network import is_cloud_connection
from homeassistant.util.hass_dict import HassKey
import ifaddr

from .camera import LocalCamCamera
from .cast import (
    CAST_PATH,
    DATA_CAST,
    HLS_CONTENT_TYPE,
    JPEG_CONTENT_TYPE,
    LocalCamCastManager,
    async_create_cast_manager,
    async_prepare_live,
)
from .const import SNAPSHOT_TIMEOUT
from .core.cast_links import CastMode, token_digest
from .core.errors import InvalidNetworksError
from .core.netpolicy import NetPolicy
from .helpers import policy_from_options

# How long a playlist request waits for the stream's first part (the stream may
# have stopped while idle and be starting again).
PLAYLIST_WAIT: Final = 10.0
# Parts listed in the playlist: several target durations, enough for a player
# that starts three target durations behind the live edge to find its start.
PLAYLIST_PARTS: Final = 8
# Where a player starts, behind the end of the playlist, in target durations
# (as Home Assistant does for its non-LL playlists).
START_OFFSET_TARGETS: Final = 1.5
# Bound on how long a reload waits for a part newer than the cast was served
# (parts come about every second; a stalled stream answers with what it has).
RELOAD_WAIT: Final = 3.0
# Casts whose newest served part is remembered, per camera stream (one
# receiver per cast; the oldest is forgotten first).
SERVED_MEMORY: Final = 16

_ENTITY_RE: Final = re.compile(r"^camera\.[a-z0-9_]{1,255}$")
_INIT_RE: Final = re.compile(r"^live/init/(\d{1,9})\.mp4$")
_SEGMENT_RE: Final = re.compile(r"^live/segment/(\d{1,12})\.(\d{1,4})\.m4s$")
_PLAYLIST: Final = "live/playlist.m3u8"
_SNAPSHOT: Final = "snapshot.jpg"
# Also for init sections and parts: their URLs name HA's run and part numbers,
# which start again from 0 when HA's stream restarts, so a cached copy could
# replay old video under a URL that now means a new picture.
_NO_STORE: Final = {"Cache-Control": "no-store"}


def _not_found() -> web.Response:
    """Return the one 404 every refused request gets: empty, uncacheable."""
    return web.Response(status=HTTPStatus.NOT_FOUND, headers=_NO_STORE)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One part of HA's HLS output, numbered as a segment of our playlist."""

    number: int
    segment: Segment
    index: int
    part: Part
    # Its Discontinuity Sequence Number (RFC 8216 6.2.2): one more for each
    # restart of the camera's stream before it, counted as listed.
    discontinuity: int


class PartNumbers:
    """Stable, gapless media sequence numbers for the parts of one HLS output.

    HLS requires consecutive numbers for consecutive segments. Parts of Home
    Assistant's segments are only ever appended (to the last segment, or as a
    new segment), so numbering them in order as they are first seen gives
    every part the same number on every reload of the playlist.
    """

    __slots__ = (
        "_assigned",
        "_discontinuity",
        "_last_stream",
        "_next",
        "_served",
        "target_duration",
    )

    def __init__(self) -> None:
        """Start numbering at zero."""
        # (segment sequence, part index) -> (media sequence, discontinuity sequence)
        self._assigned: dict[tuple[int, int], tuple[int, int]] = {}
        self._next = 0
        # HA raises a segment's stream_id at every failed reconnection too, so
        # a restart can skip several ids: the playlist counts the restarts it
        # shows instead, so a part keeps its discontinuity number on every
        # reload (a jump re-times the new run in strict players).
        self._discontinuity = 0
        self._last_stream: int | None = None
        # EXT-X-TARGETDURATION must not change between reloads (RFC 8216
        # 4.3.3.1): the longest part seen so far, in whole seconds, only grows.
        self.target_duration = 1
        # Hash of a cast token -> number of the newest part its last playlist listed.
        self._served: dict[bytes, int] = {}

    def entries(self, segments: Sequence[Segment]) -> list[_Entry]:
        """Number the parts HA's output holds now, in playback order."""
        entries: list[_Entry] = []
        for segment in segments:
            for index, part in enumerate(segment.parts):
                key = (segment.sequence, index)
                numbered = self._assigned.get(key)
                if numbered is None:
                    if self._last_stream not in (None, segment.stream_id):
                        self._discontinuity += 1
                    self._last_stream = segment.stream_id
                    numbered = self._assigned[key] = (self._next, self._discontinuity)
                    self._next += 1
                entries.append(_Entry(numbered[0], segment, index, part, numbered[1]))
        # Forget parts HA no longer holds, so memory stays bounded.
        held = {(entry.segment.sequence, entry.index) for entry in entries}
        for key in self._assigned.keys() - held:
            del self._assigned[key]
        return entries

    def newest(self, segments: Iterable[Segment]) -> int | None:
        """Return the number of the newest part HA's output holds, if any."""
        entries = self.entries(list(segments))
        return entries[-1].number if entries else None

    def served(self, token: str) -> int | None:
        """Return the newest part the cast's last playlist listed, if any."""
        return self._served.get(token_digest(token))

    def note_served(self, token: str, number: int) -> None:
        """Remember what the cast's playlist listed last (bounded)."""
        key = token_digest(token)
        self._served.pop(key, None)
        self._served[key] = number
        while len(self._served) > SERVED_MEMORY:
            del self._served[next(iter(self._served))]


def part_numbers(track: StreamOutput) -> PartNumbers:
    """Return the numbering of one HLS output (created on first use)."""
    numbers = _NUMBERS.get(track)
    if numbers is None:
        numbers = _NUMBERS[track] = PartNumbers()
    return numbers


async def async_wait_for_newer_part(track: StreamOutput, served: int) -> None:
    """Wait, at most RELOAD_WAIT, until the output holds a part numbered above ``served``."""
    numbers = part_numbers(track)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELOAD_WAIT
    while (newest := numbers.newest(track.get_segments())) is not None and newest <= served:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await track.part_recv(timeout=remaining)


# Keyed by HA's output object: a new output (after the stream idled out)
# starts a new numbering, and a dropped output drops its numbers.
_NUMBERS: WeakKeyDictionary[StreamOutput, PartNumbers] = WeakKeyDictionary()


class Playlist(NamedTuple):
    """A rendered media playlist and the number of the newest part it lists."""

    text: str
    newest: int


def render_playlist(track: StreamOutput) -> Playlist | None:
    """Render a plain HLS media playlist of the output's latest parts."""
    numbers = part_numbers(track)
    entries = numbers.entries(list(track.get_segments()))[-PLAYLIST_PARTS:]
    if not entries:
        return None
    longest = math.ceil(max(entry.part.duration for entry in entries) - 1e-6)
    target = numbers.target_duration = max(numbers.target_duration, longest)
    first = entries[0]
    start = first.segment.start_time + timedelta(
        seconds=sum(part.duration for part in first.segment.parts[: first.index])
    )
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{first.number}",
        f"#EXT-X-DISCONTINUITY-SEQUENCE:{first.discontinuity}",
        f"#EXT-X-START:TIME-OFFSET=-{START_OFFSET_TARGETS * target:.3f}",
        f'#EXT-X-MAP:URI="init/{first.segment.stream_id}.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:" + start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    ]
    discontinuity = first.discontinuity
    for entry in entries:
        if entry.discontinuity != discontinuity:
            # The camera's stream restarted: new timeline, maybe a new init.
            discontinuity = entry.discontinuity
            lines.extend(
                ["#EXT-X-DISCONTINUITY", f'#EXT-X-MAP:URI="init/{entry.segment.stream_id}.mp4"']
            )
        lines.extend(
            [
                f"#EXTINF:{entry.part.duration:.3f},",
                f"segment/{entry.segment.sequence}.{entry.index}.m4s",
            ]
        )
    return Playlist("\n".join(lines) + "\n", entries[-1].number)


class LocalCamCastView(HomeAssistantView):
    """Serve a cast token's camera, and nothing else, to a Cast receiver."""

    url = f"{CAST_PATH}/{{path:.*}}"
    name = "api:localcam:cast"
    # The token in the path is the credential.
    requires_auth = False
    # Receivers' players fetch playlists and segments with XHR.
    cors_allowed = True

    async def get(self, request: web.Request, path: str) -> web.StreamResponse:
        """Resolve the token, then serve the playlist, init, segment or still."""
        hass = request.app[KEY_HASS]
        if (remote := _remote(hass, request)) is None:
            return _not_found()
        manager = hass.data.get(DATA_CAST)
        token, _, rest = path.partition("/")
        entity_id, _, resource = rest.partition("/")
        if manager is None or not _ENTITY_RE.match(entity_id):
            return _not_found()
        mode = CastMode.SNAPSHOT if resource == _SNAPSHOT else CastMode.LIVE
        camera = _local_camera(hass, entity_id)
        if camera is None or not _grants(manager, token, camera, mode):
            # The id may name the cast's camera as it was called when the
            # cast started, and another camera now (two cameras' ids swapped).
            camera = _renamed_camera(hass, manager, token, entity_id)
            if camera is None or not _grants(manager, token, camera, mode):
                return _not_found()
        if not await _async_from_lan(hass, remote, camera):
            return _not_found()
        if mode is CastMode.SNAPSHOT:
            return await _async_snapshot(manager, camera, token)
        if resource == _PLAYLIST:
            return await _async_playlist(manager, camera, token)
        if match := _INIT_RE.match(resource):
            return _init(camera, int(match.group(1)))
        if match := _SEGMENT_RE.match(resource):
            return _segment(camera, int(match.group(1)), int(match.group(2)))
        return _not_found()


def _remote(hass: HomeAssistant, request: web.Request) -> IPv4Address | IPv6Address | None:
    """The request's client address; None through Nabu Casa's remote UI (no display)."""
    if is_cloud_connection(hass) or request.remote is None:
        return None
    try:
        return ip_address(request.remote)
    except ValueError:
        return None


async def _async_from_lan(
    hass: HomeAssistant, remote: IPv4Address | IPv6Address, camera: LocalCamCamera
) -> bool:
    """Whether the request comes from the LAN, as a display sent to the internal URL does.

    The URL is no secret kept by LocalCam alone: Home Assistant's cast entity
    shows it (token included) as the display's ``media_content_id`` to every
    user who may read the display, and the recorder stores it. A request
    from a public address (``request.remote`` is the client's real address
    behind a trusted proxy) or through Nabu Casa's remote UI is no display.
    The LAN: its address ranges, the networks Home Assistant's own
    interfaces are on, and those the user allowed for the camera's entry.
    """
    if _LAN.classify(remote) is None or await _async_on_ha_link(hass, remote):
        return True
    try:
        policy = policy_from_options(camera.coordinator.config_entry.options)
    except InvalidNetworksError:
        return False
    return policy.classify(remote) is None


async def _async_on_ha_link(hass: HomeAssistant, remote: IPv4Address | IPv6Address) -> bool:
    """Whether ``remote`` is in a network one of Home Assistant's own interfaces is on.

    An IPv6 LAN's displays have global addresses in its delegated prefix
    (often no ULA at all): no address class tells them from the internet,
    but an address on HA's own link reached it through no router.
    """
    if isinstance(remote, IPv6Address) and remote.ipv4_mapped is not None:
        remote = remote.ipv4_mapped
    return any(remote in own for own in await _async_link_networks(hass))


# HA's network integration reads the interfaces once, when HA starts: the
# prefix an ISP hands out anew on each reconnect (or the global address SLAAC
# gave after HA started) is not in it, and the one before stays. Read here
# again, at most this often.
_LINK_TTL: Final = 30.0
_LINKS_KEY: Final[HassKey[tuple[float, tuple[IPv4Network | IPv6Network, ...]]]] = HassKey(
    "localcam_link_networks"
)


async def _async_link_networks(hass: HomeAssistant) -> tuple[IPv4Network | IPv6Network, ...]:
    """The networks HA's interfaces are on now, as narrow as an allowed network must be."""
    now = time.monotonic()
    cached = hass.data.get(_LINKS_KEY)
    if cached is not None and now - cached[0] < _LINK_TTL:
        return cached[1]
    networks: list[IPv4Network | IPv6Network] = []
    for adapter in await hass.async_add_executor_job(ifaddr.get_adapters):
        for configured in adapter.ips:
            address = configured.ip[0] if isinstance(configured.ip, tuple) else configured.ip
            try:
                own = ip_interface(f"{address}/{configured.network_prefix}").network
                # The breadth NetPolicy allows an allowed network (6to4 and
                # NAT64 prefixes, which carry all of IPv4, included).
                NetPolicy(extra_networks=(own,))
            except ValueError:
                continue
            networks.append(own)
    hass.data[_LINKS_KEY] = (now, tuple(networks))
    return tuple(networks)


# The addresses a display on the LAN may have: those the cast's base URL is
# checked against (core.netpolicy's LAN ranges).
_LAN: Final = NetPolicy()


def _grants(
    manager: LocalCamCastManager, token: str, camera: LocalCamCamera, mode: CastMode
) -> bool:
    """Whether a live token opens this camera's stream (this entity), in this mode."""
    grant = manager.links.resolve(
        token, camera_id=camera.camera_id, mode=mode, stream=camera.unique_id or ""
    )
    return grant is not None


def _renamed_camera(
    hass: HomeAssistant, manager: LocalCamCastManager, token: str, entity_id: str
) -> LocalCamCamera | None:
    """The cast's camera under its new entity id, for the URL of a camera renamed mid-cast.

    The URL names the entity id the cast was started with; a rename keeps
    the entity (and the token's grant, which names its unique id), not the
    id; another camera may have taken the old id meanwhile. Only that exact
    old id of that very cast is followed: any other path stays a 404, and
    the grant is checked next, as for any request.
    """
    grant = manager.links.resolve(token)
    session = manager.session_for(grant.receiver) if grant is not None else None
    if (
        session is None
        or session.camera_entity_id != entity_id
        or not hmac.compare_digest(session.token.encode(), token.encode())
    ):
        return None
    camera = session.camera
    # Still loaded (a rename re-adds the same entity; an unload ends the cast).
    return camera if _local_camera(hass, camera.entity_id) is camera else None


def _local_camera(hass: HomeAssistant, entity_id: str) -> LocalCamCamera | None:
    """Return the loaded LocalCam camera entity of an entity id."""
    component = hass.data.get(CAMERA_DATA_COMPONENT)
    entity = component.get_entity(entity_id) if component is not None else None
    return entity if isinstance(entity, LocalCamCamera) else None


def _live_track(camera: LocalCamCamera) -> tuple[Stream, StreamOutput] | None:
    """Return the camera's stream and running HLS output, without starting anything."""
    if (stream := camera.stream) is None or (track := stream.outputs().get(HLS_PROVIDER)) is None:
        return None
    # Receivers fetching media are viewers: keep HA's stream running.
    track.idle_timer.awake()
    return stream, track


async def _async_playlist(
    manager: LocalCamCastManager, camera: LocalCamCamera, token: str
) -> web.StreamResponse:
    """Serve the plain playlist, starting the stream when it idled out."""
    try:
        track = await async_prepare_live(camera, wait=PLAYLIST_WAIT)
    except HomeAssistantError:
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, headers=_NO_STORE)
    numbers = part_numbers(track)
    if (served := numbers.served(token)) is not None:
        # A reload: list something this cast has not seen (module docstring).
        await async_wait_for_newer_part(track, served)
    # The cast may have ended while this request waited.
    if not _grants(manager, token, camera, CastMode.LIVE):
        return _not_found()
    if (playlist := render_playlist(track)) is None:
        # HA dropped the output's parts while this request waited (stream gone).
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, headers=_NO_STORE)
    numbers.note_served(token, playlist.newest)
    return web.Response(
        body=playlist.text.encode(),
        headers={"Content-Type": HLS_CONTENT_TYPE, "Cache-Control": "no-cache"},
    )


def _init(camera: LocalCamCamera, stream_id: int) -> web.StreamResponse:
    """Serve the fMP4 init section of one run of the camera's stream."""
    if (live := _live_track(camera)) is None:
        return _not_found()
    stream, track = live
    for segment in track.get_segments():
        if segment.stream_id == stream_id:
            return web.Response(
                body=transform_init(segment.init, stream.dynamic_stream_settings.orientation),
                headers={"Content-Type": "video/mp4", **_NO_STORE},
            )
    return _not_found()


def _segment(camera: LocalCamCamera, sequence: int, index: int) -> web.StreamResponse:
    """Serve one fMP4 part (moof + mdat) of the camera's stream."""
    if (live := _live_track(camera)) is None:
        return _not_found()
    segment = live[1].get_segment(sequence)
    if segment is None or index >= len(segment.parts):
        return _not_found()
    return web.Response(
        body=segment.parts[index].data,
        headers={"Content-Type": "video/iso.segment", **_NO_STORE},
    )


async def _async_snapshot(
    manager: LocalCamCastManager, camera: LocalCamCamera, token: str
) -> web.StreamResponse:
    """Serve a fresh still of the camera (through its snapshot cache)."""
    try:
        # The entity bounds its own fetch; this only guards against a bug.
        async with asyncio.timeout(SNAPSHOT_TIMEOUT + 1):
            image = await camera.async_camera_image()
    except HomeAssistantError, TimeoutError:
        image = None
    # The cast may have ended (a stop, its duration, an unload) while the
    # camera answered, which can take seconds: no picture for an ended cast.
    if not _grants(manager, token, camera, CastMode.SNAPSHOT):
        return _not_found()
    if not image:
        # The camera failed: an error, never an older picture.
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, headers=_NO_STORE)
    return web.Response(body=image, headers={"Content-Type": JPEG_CONTENT_TYPE, **_NO_STORE})


@callback
def async_setup_cast(hass: HomeAssistant) -> None:
    """Create the cast manager and register the cast views (once)."""
    if DATA_CAST in hass.data:
        return
    async_create_cast_manager(hass)
    hass.http.register_view(LocalCamCastView())
