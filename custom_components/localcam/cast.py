"""Cast a LocalCam camera to Cast receivers: LAN-only URLs and a real cast lifecycle.

Safety properties and the layer that guarantees each:

- what a cast URL opens (one camera, one receiver, one mode, until the cast
  ends): ``core.cast_links``, checked again by ``cast_views`` on every request;
- that the URL dies at once when its cast ends (a stop, the duration, a
  replacement, an unload), even while a slow LOAD holds the receiver (its
  first LOAD included), and that no cast started before an unload outlives it:
  the manager below, which registers a cast before its first LOAD, revokes
  before it waits for a receiver's lock and refuses a cast whose camera's
  entry unloaded while it started;
- that the URL stays home: ``LocalCamCastManager.async_base_url`` takes only
  Home Assistant's internal address, prefers an IP literal (Cast devices ignore
  the LAN's DNS) and has ``core.netpolicy`` approve the address, and every URL
  is absolute and carries a query, so Cast neither resolves it with
  ``get_url`` (which may pick the cloud) nor signs it for 24 hours;
- that a person's media is not interrupted without ``force``, that a dropped
  receiver is re-cast with bounded retries, and that the receiver is left as it
  was found: the manager below;
- that tokens never reach a log: the manager never logs URLs, and a filter on
  the root handlers masks the token of any cast URL that Home Assistant's cast
  integration or pychromecast write.
"""

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
import hmac
from ipaddress import IPv4Address, IPv6Address
import logging
from math import ceil
import re
import time
from typing import TYPE_CHECKING, Any, Final, override
import uuid

from homeassistant.auth.permissions.const import POLICY_CONTROL
from homeassistant.components.media_player.browse_media import BrowseMedia
from homeassistant.components.media_player.const import (
    ATTR_MEDIA_CONTENT_ID,
    ATTR_MEDIA_CONTENT_TYPE,
    ATTR_MEDIA_EXTRA,
    DATA_COMPONENT as MP_DATA_COMPONENT,
    DOMAIN as MP_DOMAIN,
    SERVICE_PLAY_MEDIA,
    MediaPlayerState,
    MediaType,
)
from homeassistant.components.stream import Stream
from homeassistant.components.stream.const import HLS_PROVIDER
from homeassistant.components.stream.core import StreamOutput
from homeassistant.const import (
    ATTR_AREA_ID,
    ATTR_DEVICE_ID,
    ATTR_DOMAIN,
    ATTR_ENTITY_ID,
    ATTR_FLOOR_ID,
    ATTR_LABEL_ID,
    ATTR_SERVICE,
    ATTR_SERVICE_DATA,
    ENTITY_MATCH_ALL,
    EVENT_CALL_SERVICE,
    EVENT_HOMEASSISTANT_STOP,
    SERVICE_MEDIA_STOP,
    SERVICE_TURN_OFF,
    STATE_UNAVAILABLE,
    STATE_UNKNOWN,
)
from homeassistant.core import (
    CALLBACK_TYPE,
    Context,
    Event,
    EventStateChangedData,
    HomeAssistant,
    State,
    callback,
)
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.event import (
    async_call_later,
    async_track_entity_registry_updated_event,
    async_track_state_change_event,
    async_track_time_interval,
)
from homeassistant.helpers.network import NoURLAvailableError, get_url
from homeassistant.helpers.target import TargetSelection, async_extract_referenced_entity_ids
from homeassistant.util import dt as dt_util
from homeassistant.util.hass_dict import HassKey
import yarl

from .camera import LocalCamCamera
from .const import DOMAIN, LOGGER
from .core.cast_links import DEFAULT_LEASE, CastGrant, CastLinkLimitError, CastLinks, CastMode
from .core.errors import CameraTimeoutError, CannotConnectError, LocalCamError
from .core.netpolicy import REDACTED, NetPolicy, Target, is_loopback_literal
from .core.snapshot import SERVING_INTERVAL
from .helpers import entry_is_running

if TYPE_CHECKING:
    # Only for the cast platform hook's signature: pychromecast is installed
    # with Home Assistant's cast integration, which LocalCam does not require.
    from pychromecast import Chromecast

# Actions and their fields.
SERVICE_CAST: Final = "cast"
SERVICE_STOP_CAST: Final = "stop_cast"
ATTR_MEDIA_PLAYER: Final = "media_player"
ATTR_MODE: Final = "mode"
ATTR_DURATION: Final = "duration"
ATTR_KEEP_ALIVE: Final = "keep_alive"
ATTR_REFRESH: Final = "refresh"
ATTR_FORCE: Final = "force"
ATTR_REASON: Final = "reason"
DEFAULT_DURATION: Final = 300
MAX_DURATION: Final = 24 * 3600
DEFAULT_REFRESH: Final = 5
# A Cast receiver takes about a second to swap one image for the next; faster
# refreshes would only queue LOADs.
MIN_REFRESH: Final = 2
MAX_REFRESH: Final = 3600

EVENT_CAST_STARTED: Final = "localcam_cast_started"
EVENT_CAST_ENDED: Final = "localcam_cast_ended"

ISSUE_NO_INTERNAL_URL: Final = "no_internal_url"

CAST_PATH: Final = "/api/localcam/cast"
HLS_CONTENT_TYPE: Final = "application/vnd.apple.mpegurl"
JPEG_CONTENT_TYPE: Final = "image/jpeg"
# The Default Media Receiver, which Home Assistant's cast integration launches
# for a URL. A receiver found idle in it is left idle in it (media_stop, no quit).
DEFAULT_MEDIA_RECEIVER_APP_ID: Final = "CC1AD845"
# The ambient screen ("Backdrop"): where a display goes when media drops.
BACKDROP_APP_ID: Final = "E8C28D3C"
# Cast MediaMetadata types (Cast SDK): generic for video, photo for stills.
METADATA_GENERIC: Final = 0
METADATA_PHOTO: Final = 4

# How long a live cast waits for the camera's first HLS part before it gives up.
# Home Assistant's stream worker probes the RTSP stream (about 2 to 3 s) and the
# first part follows one part duration later.
LIVE_READY_TIMEOUT: Final = 15.0
# How often a live start looks whether HA dropped the output it started, and
# how many times it starts a dropped one again (see _async_wait_for_part).
LIVE_RECHECK: Final = 0.5
LIVE_RESTARTS: Final = 3
# pychromecast waits up to 30 s for the receiver's answer to a LOAD.
PLAY_TIMEOUT: Final = 35.0
# Stopping the app at the end is best effort; a receiver that is gone must not
# hold up unload.
STOP_TIMEOUT: Final = 10.0
# Renew the token well before its lease runs out.
RENEW_INTERVAL: Final = DEFAULT_LEASE / 3
# After a LOAD the receiver reports the old media as interrupted and the new one
# as buffering; judging the receiver during that window would read our own
# LOAD as a drop.
RECAST_SETTLE: Final = 2.0
# Keep-alive: waits before each consecutive re-cast attempt (s); the count is
# the bound on consecutive attempts. A receiver seen playing again resets it.
RECAST_BACKOFF: Final[tuple[float, ...]] = (2.0, 4.0, 8.0, 16.0, 30.0)
# How long a display HA cannot reach may stay away before its cast ends
# (receiver_lost): a connection blip, or a Nest Hub rebooting, comes back
# within it and is judged then.
RECEIVER_GRACE: Final = 120.0
# And an absolute bound per cast, for a receiver that keeps flapping.
MAX_RECASTS: Final = 30
# Snapshot mode: a failing camera ends the cast after this many refreshes in a
# row, so the receiver does not keep showing an ever older picture.
MAX_REFRESH_FAILURES: Final = 2
STATE_HISTORY: Final = 20
MAX_RECORDS: Final = 64

_FREE_STATES: Final = frozenset(
    {
        MediaPlayerState.OFF,
        MediaPlayerState.IDLE,
        MediaPlayerState.ON,
        STATE_UNKNOWN,
    }
)
_BUSY_STATES: Final = frozenset(
    {MediaPlayerState.PLAYING, MediaPlayerState.PAUSED, MediaPlayerState.BUFFERING}
)
_TOKEN_IN_URL_RE: Final = re.compile(rf"({re.escape(CAST_PATH)}/)[A-Za-z0-9_-]{{43}}")


# A person stopping the display through Home Assistant (a dashboard's stop
# button, an automation, a voice assistant) ends the cast: keep-alive re-casts
# after drops and player errors, never after a stop someone asked for.
_USER_STOP_SERVICES: Final = frozenset({SERVICE_MEDIA_STOP, SERVICE_TURN_OFF})


@callback
def _is_stop_call(data: Any) -> bool:
    """Event filter: a media_player stop or turn-off call."""
    return data.get(ATTR_DOMAIN) == MP_DOMAIN and data.get(ATTR_SERVICE) in _USER_STOP_SERVICES


_TARGET_KEYS: Final = (ATTR_ENTITY_ID, ATTR_DEVICE_ID, ATTR_AREA_ID, ATTR_FLOOR_ID, ATTR_LABEL_ID)


def _target_ids(value: Any) -> list[str]:
    """One target field of raw service data as a list of ids."""
    # The event carries the data before the service's schema ran, so a
    # comma-separated string or a single id is as likely as a list.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [str(item).strip() for item in value]
    return []


@callback
def _called_entities(hass: HomeAssistant, data: Any) -> frozenset[str] | None:
    """The entity ids a service call targets (None: all of them).

    The call_service event carries the raw target: a stop aimed at the
    display's device, area, floor or label names no entity id, yet reaches the
    display; expand it as Home Assistant's entity services do.
    """
    service_data = data.get(ATTR_SERVICE_DATA)
    if not isinstance(service_data, dict):
        return frozenset()
    if service_data.get(ATTR_ENTITY_ID) == ENTITY_MATCH_ALL:
        return None
    target = {key: _target_ids(service_data.get(key)) for key in _TARGET_KEYS}
    # As the services' schema does: entity ids are matched in lower case.
    target[ATTR_ENTITY_ID] = [entity_id.lower() for entity_id in target[ATTR_ENTITY_ID]]
    selected = async_extract_referenced_entity_ids(hass, TargetSelection(target))
    return frozenset(selected.referenced | selected.indirectly_referenced)


# What a Cast device reports when a person stopped its media (the display's
# touchscreen, the Google Home app); ERROR and FINISHED are not a person.
_IDLE_BY_PERSON: Final = "CANCELLED"
# ... and when its player could not play the media (a still that failed to load).
_IDLE_BY_ERROR: Final = "ERROR"
# pychromecast's player states of media being played (not idle).
_DEVICE_PLAYING: Final = frozenset({"PLAYING", "BUFFERING", "PAUSED"})


def _device_media_status(hass: HomeAssistant, receiver: str) -> object:
    """The Cast device's last media status, as HA's cast entity keeps it (None if it does not).

    Home Assistant's state says only "idle" or "off"; its cast entity keeps
    the device's last media status (pychromecast's MediaStatus), which says
    why, and what still plays. Read defensively: on any other media_player,
    or if the cast integration keeps it elsewhere one day, the readers below
    see None and keep-alive acts as it would without them.
    """
    component = hass.data.get(MP_DATA_COMPONENT)
    entity = component.get_entity(receiver) if component is not None else None
    return getattr(entity, "media_status", None)


def _device_playing(hass: HomeAssistant, receiver: str) -> str | None:
    """The content id of the media the Cast device still plays, if any."""
    status = _device_media_status(hass, receiver)
    if getattr(status, "player_state", None) not in _DEVICE_PLAYING:
        return None
    content_id = getattr(status, "content_id", None)
    return content_id if isinstance(content_id, str) else None


def _device_idle_reason(hass: HomeAssistant, receiver: str) -> str | None:
    """The Cast device's own idle reason for its media, if any."""
    reason = getattr(_device_media_status(hass, receiver), "idle_reason", None)
    return reason if isinstance(reason, str) else None


class EndReason(StrEnum):
    """Why a cast ended, as reported in ``localcam_cast_ended``."""

    DURATION = "duration"
    STOPPED = "stopped"
    REPLACED = "replaced"
    RECEIVER_LOST = "receiver_lost"
    UNLOAD = "unload"
    ERROR = "error"


def redact_cast_urls(text: str) -> str:
    """Mask the token of every LocalCam cast URL in a text."""
    return _TOKEN_IN_URL_RE.sub(rf"\g<1>{REDACTED}", text)


class _TokenRedactingFilter(logging.Filter):
    """Mask cast tokens in records that other code writes (cast, pychromecast).

    Home Assistant's cast integration logs the URL it loads at debug level and
    the failing URL at error level; pychromecast puts it in exception texts.
    """

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record when it carries a cast URL; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is the handler's to report
            return True
        if CAST_PATH in message:
            record.msg = redact_cast_urls(message)
            record.args = None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if CAST_PATH in text:
                record.exc_text = redact_cast_urls(text)
        return True


_REDACTING_FILTER: Final = _TokenRedactingFilter()


@callback
def async_install_log_filter() -> None:
    """Add the token filter to every root handler (idempotent)."""
    for handler in logging.getLogger().handlers:
        if _REDACTING_FILTER not in handler.filters:
            handler.addFilter(_REDACTING_FILTER)


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """The checked LAN base URL a receiver reaches Home Assistant at."""

    url: str
    host_is_ip: bool
    scheme: str


@dataclass(frozen=True, slots=True)
class ReceiverView:
    """What a media_player shows right now, as far as casting cares."""

    state: str | None
    app_id: str | None
    app_name: str | None
    content_id: str | None

    @classmethod
    def of(cls, state: State | None) -> ReceiverView:
        """Read the view from a media_player state."""
        if state is None:
            return cls(None, None, None, None)
        attrs = state.attributes
        return cls(
            state=state.state,
            app_id=attrs.get("app_id"),
            app_name=attrs.get("app_name"),
            content_id=attrs.get(ATTR_MEDIA_CONTENT_ID),
        )

    @property
    def unavailable(self) -> bool:
        """Return whether the receiver cannot be reached."""
        return self.state is None or self.state == STATE_UNAVAILABLE

    @property
    def shows_cast(self) -> bool:
        """Return whether the receiver shows some LocalCam cast (ours or older)."""
        return is_cast_url(self.content_id)


def _cast_path(content_id: str | None) -> str | None:
    """Return the path of a LocalCam cast URL, or None for any other content."""
    if not content_id:
        return None
    try:
        path = yarl.URL(content_id).path
    except ValueError:
        return None
    return path if path.startswith(f"{CAST_PATH}/") else None


def is_cast_url(content_id: str | None) -> bool:
    """Return whether a content id is a LocalCam cast URL."""
    return _cast_path(content_id) is not None


@dataclass(slots=True)
class ReceiverRecord:
    """Diagnostics of the last cast to one receiver (no token, no URL)."""

    camera_entity_id: str
    camera_id: str
    mode: str
    started: str
    internal_host: bool
    host_is_ip: bool
    scheme: str
    app_at_start: str | None
    state_at_start: str | None
    ended: str | None = None
    end_reason: str | None = None
    recasts: int = 0
    last_idle_reason: str | None = None
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=STATE_HISTORY))

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able view, the token and the camera's entity id redacted."""
        return {
            # Not the entity id: a camera added by URL is named after its
            # address (camera.192_168_1_20), which diagnostics redact.
            "camera": REDACTED,
            "mode": self.mode,
            "token": REDACTED,
            "path": f"{CAST_PATH}/{REDACTED}/{REDACTED}/…",
            "internal_host": self.internal_host,
            "host_is_ip": self.host_is_ip,
            "scheme": self.scheme,
            "started": self.started,
            "ended": self.ended,
            "end_reason": self.end_reason,
            "app_at_start": self.app_at_start,
            "state_at_start": self.state_at_start,
            "recasts": self.recasts,
            "last_idle_reason": self.last_idle_reason,
            "state_history": list(self.history),
        }


@dataclass(slots=True, repr=False)
class CastSession:
    """One running cast of one camera to one receiver."""

    camera: LocalCamCamera
    # The entity id the cast started with: its URLs keep it when the entity
    # is renamed meanwhile (cast_views follows it to the same entity).
    camera_entity_id: str
    camera_name: str
    receiver: str
    mode: CastMode
    duration: float | None
    keep_alive: bool
    refresh: float
    token: str  # secret: never logged, never in a repr or diagnostics
    base: BaseUrl
    found: ReceiverView
    context: Context | None
    record: ReceiverRecord
    started_at: float  # when the first LOAD returned, on the token table's clock
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    version: int = 0
    loading: bool = False
    settle_until: float = 0.0
    attempts: int = 0
    refresh_failures: int = 0
    # The first LOAD is in flight (under the receiver's lock): whoever stops
    # the cast meanwhile only revokes it and leaves the end to its starter.
    starting: bool = True
    # The token is revoked; the rest of the end waits for the receiver's lock.
    revoked: bool = False
    # How the first revocation asked the cast to end (what a starter ends it with).
    end_reason: EndReason = EndReason.STOPPED
    end_restore: bool = True
    ended: bool = False
    unsubs: list[CALLBACK_TYPE] = field(default_factory=list)
    check_unsub: CALLBACK_TYPE | None = None
    # The end armed while the display is unreachable (RECEIVER_GRACE).
    lost_unsub: CALLBACK_TYPE | None = None
    refresh_task: asyncio.Task[None] | None = None
    recast_task: asyncio.Task[None] | None = None

    @override
    def __repr__(self) -> str:
        """Describe the cast without its token or URL."""
        return (
            f"CastSession({self.camera_entity_id} -> {self.receiver}, {self.mode}, "
            f"id={self.session_id})"
        )

    @property
    def recasting(self) -> bool:
        """Return whether a keep-alive re-cast is pending."""
        return self.recast_task is not None and not self.recast_task.done()

    @property
    def camera_id(self) -> str:
        """Return the camera's stable id (the grant's camera)."""
        return self.camera.camera_id

    @property
    def ends_at(self) -> float | None:
        """Return when the cast ends (token clock), or None until stopped."""
        return None if self.duration is None else self.started_at + self.duration

    def over(self, now: float) -> bool:
        """Return whether the cast is ending or ended, or its duration ran out by ``now``."""
        ends_at = self.ends_at
        return self.ended or self.revoked or (ends_at is not None and now >= ends_at)

    def path(self) -> str:
        """Return the URL path for this cast's mode."""
        kind = "live/playlist.m3u8" if self.mode is CastMode.LIVE else "snapshot.jpg"
        return f"{CAST_PATH}/{self.token}/{self.camera_entity_id}/{kind}"

    def url(self) -> str:
        """Return the absolute URL of the current LOAD (secret)."""
        # The query keeps Cast from signing the URL and busts the receiver's
        # cache on each snapshot refresh; it carries nothing secret.
        return f"{self.base.url}{self.path()}?v={self.version}"

    def owns(self, content_id: str | None) -> bool:
        """Return whether a content id is one of this cast's URLs."""
        path = _cast_path(content_id)
        return path is not None and hmac.compare_digest(path.encode(), self.path().encode())


DATA_CAST: HassKey[LocalCamCastManager] = HassKey(f"{DOMAIN}_cast")
# localcam.cast's response for a display that shows the camera (the others
# name the translation key of why not).
CAST_STARTED: Final = "started"


@callback
def async_get_cast_manager(hass: HomeAssistant) -> LocalCamCastManager:
    """Return the cast manager (created by ``async_setup_cast``)."""
    return hass.data[DATA_CAST]


_BASE_SCHEMES: Final = frozenset({"http", "https"})


def _link_local(address: IPv4Address | IPv6Address) -> bool:
    """Whether an address needs a zone (an interface of this machine) to be reached."""
    return isinstance(address, IPv6Address) and (
        address.is_link_local or address.scope_id is not None
    )


def _reason(err: LocalCamError) -> str:
    """Return a short, secret-free reason for a refused base URL."""
    return err.placeholders.get("reason") or str(err)


async def async_prepare_live(camera: LocalCamCamera, *, wait: float) -> StreamOutput:
    """Start the camera's HLS output and wait, bounded, until its first part exists.

    While nobody streams the camera, its worker starts only once the camera
    answers (a camera that is down, then back a moment later, plays then,
    not after the worker's 10 s retry wait); one that stays down within
    ``wait`` is the camera's own error (could not connect, or no answer).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    stream: Stream | None = await camera.async_create_stream()
    if stream is None:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_no_stream",
            translation_placeholders={"entity_id": camera.entity_id},
        )
    if not stream.outputs() and (left := deadline - loop.time()) > SERVING_INTERVAL:
        await camera.async_wait_until_serving(left)

    def owned() -> bool:
        # The entity still holds this stream: an unload (or a source
        # change) meanwhile stopped it for good, and no request waiting
        # here may start the removed camera's stream again.
        return camera.stream is stream

    if not owned():
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_no_stream",
            translation_placeholders={"entity_id": camera.entity_id},
        )
    if (track := await _async_wait_for_part(stream, deadline - loop.time(), owned)) is None:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_stream_timeout",
            translation_placeholders={"entity_id": camera.entity_id, "seconds": str(round(wait))},
        )
    return track


async def _async_start_hls(stream: Stream) -> StreamOutput:
    """Return the stream's HLS output, its worker started and its idle timer re-armed."""
    track = stream.add_provider(HLS_PROVIDER)
    await stream.start()
    # The receiver's requests keep the output awake from here on. Not an
    # output HA dropped meanwhile: its re-armed timer would fire on its own
    # and drop whatever output the stream then has (the replacement).
    if stream.outputs().get(HLS_PROVIDER) is track:
        track.idle_timer.awake()
    return track


def has_part(track: StreamOutput) -> bool:
    """Return whether the output holds at least one finished part."""
    return any(segment.parts for segment in track.get_segments())


async def _async_stop_settled(stream: Stream) -> None:
    """Wait until a stop of ``stream`` under way has ended.

    In HA 2026.10 a stop (and its cleanup) holds the stream's start/stop
    lock, which has no public wait: once it is free, the stop is over. A
    later HA without that lock gets one recheck interval instead of an
    AttributeError; the restarts that follow are bounded (LIVE_RESTARTS).
    """
    lock = getattr(stream, "_start_stop_lock", None)
    if isinstance(lock, asyncio.Lock):
        async with lock:
            return
    await asyncio.sleep(LIVE_RECHECK)


async def _async_wait_for_part(
    stream: Stream, timeout: float, owned: Callable[[], bool]
) -> StreamOutput | None:
    """Wait, bounded, until the stream's HLS output holds a finished part; return that output.

    Home Assistant drops an output OUTPUT_IDLE_TIMEOUT (30 s) after its
    last request and stops the worker with it, from a task its idle timer
    starts. A cast that comes just then gets the doomed output: it is
    dropped after the worker was (re)started for it, and nothing ever fills
    it. So the output is looked at again every LIVE_RECHECK seconds, and one
    the stream no longer holds is replaced (the worker started again), at
    most LIVE_RESTARTS times, once the stop that dropped it has ended, and
    only while the camera entity still ``owned`` the stream (an unload stops
    it for good: nothing is started again, the wait ends with None).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    track = await _async_start_hls(stream)
    restarts = 0
    for _ in range(ceil(timeout / LIVE_RECHECK) + LIVE_RESTARTS + 1):
        if has_part(track):
            return track
        if stream.outputs().get(HLS_PROVIDER) is not track:
            if not owned() or restarts >= LIVE_RESTARTS:
                return None
            restarts += 1
            LOGGER.debug("The stream dropped its HLS output while it started; starting it again")
            # The stop that dropped it first ends: an output added while the
            # old worker still runs is dropped again by that worker's own
            # cleanup (worker_finished drops every output there is), which
            # stops the new worker in turn. Stop and cleanup both end before
            # the stream's start/stop lock is free again.
            await _async_stop_settled(stream)
            if not owned():
                return None
            track = await _async_start_hls(stream)
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await track.part_recv(timeout=min(remaining, LIVE_RECHECK))
    return None


class LocalCamCastManager:
    """Every LocalCam cast of one Home Assistant instance."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Create the manager with an empty token table."""
        self.hass = hass
        # Monotonic time (CastLinks' default): a wall-clock step must neither
        # kill a running cast nor keep an ended one open.
        self.links = CastLinks()
        self._sessions: dict[str, CastSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._records: dict[str, ReceiverRecord] = {}
        # Bumped each time a camera's casts are stopped for its entry's unload;
        # a cast started before the bump must not outlive it. One int per
        # camera ever unloaded.
        self._generations: dict[str, int] = {}
        # Bumped by each stop_cast for a receiver: a cast asked for before the
        # stop, still checking its camera or waiting for the receiver's lock,
        # must not start after it. One int per receiver ever stopped.
        self._stops: dict[str, int] = {}

    @override
    def __repr__(self) -> str:
        """Show counts only."""
        return f"LocalCamCastManager(casts={len(self._sessions)}, links={self.links!r})"

    def _lock(self, receiver: str) -> asyncio.Lock:
        """Return the lock that serialises casts to one receiver."""
        return self._locks.setdefault(receiver, asyncio.Lock())

    def _generation(self, camera_id: str) -> int:
        """Return how many times the camera's casts were stopped for an unload."""
        return self._generations.get(camera_id, 0)

    def _camera_closed(self, camera: LocalCamCamera, generation: int) -> bool:
        """Return whether the camera's entry unloaded (or is unloading) since ``generation``."""
        if self._generation(camera.camera_id) != generation:
            return True
        return not entry_is_running(camera.coordinator.config_entry)

    @staticmethod
    def _closed_error(camera: LocalCamCamera) -> HomeAssistantError:
        """Return the error for a cast whose camera's entry unloaded."""
        return HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_camera_unavailable",
            translation_placeholders={"entity_id": camera.entity_id},
        )

    @callback
    def session_for(self, receiver: str) -> CastSession | None:
        """Return the running cast on a receiver."""
        return self._sessions.get(receiver)

    # ---- URL ---------------------------------------------------------------

    async def async_base_url(self) -> BaseUrl:
        """Return the checked LAN base URL, or raise (and raise a repair issue)."""
        try:
            internal = get_url(
                self.hass, allow_external=False, allow_cloud=False, prefer_external=False
            )
        except NoURLAvailableError:
            raise self._no_url("Home Assistant has no local network URL") from None
        parsed = yarl.URL(internal)
        api = self.hass.config.api
        if parsed.scheme == "http" and api is not None and api.use_ssl and parsed.port == api.port:
            # HA's get_url refuses an IP literal under ``http: ssl``, not a
            # name: a display sent there would speak plain HTTP to a TLS port.
            # (Another port may be a plain-HTTP proxy in front of HA.)
            raise self._no_url(
                "the local network URL is http://, but Home Assistant serves HTTPS "
                f"on port {api.port}"
            )
        policy = NetPolicy()
        try:
            target = await policy.check(parsed, schemes=_BASE_SCHEMES)
        except (CannotConnectError, CameraTimeoutError) as err:
            # The internal URL names a host this machine cannot resolve. Cast
            # devices ignore the LAN's DNS anyway: over plain HTTP, HA's own
            # detected LAN address serves the same instance.
            parsed, target = await self._detected_lan(policy, parsed, _reason(err))
        except LocalCamError as err:
            # A public or otherwise refused address: never cast it, never guess.
            raise self._no_url(_reason(err)) from None
        if target.address.is_loopback and self._has_lan_address():
            # An internal URL of 127.0.0.1 or localhost reaches only this
            # machine, and a Cast device that opened it would ask itself. Where
            # Home Assistant has a LAN address, that address serves the same
            # instance (plain HTTP). Without one, loopback is all there is, and
            # only a receiver on this machine could be cast to anyway.
            parsed, target = await self._detected_lan(
                policy, parsed, f"the local network URL {parsed.host} is this machine's loopback"
            )
        if parsed.scheme == "http" and _link_local(target.address):
            # fe80:: needs a zone (an interface of this machine, meaningless on
            # the display), which a URL cannot carry to a Cast device's player.
            parsed, target = await self._detected_lan(
                policy, parsed, f"{target.address} is a link-local address a display cannot open"
            )
            if _link_local(target.address):
                raise self._no_url(
                    f"{target.address} is a link-local address a display cannot open"
                )
        if parsed.scheme == "https":
            host_is_ip = target.host == str(target.address)
            if host_is_ip and _link_local(target.address):
                # The URL names the link-local address itself (no name the
                # display could resolve, a zone it cannot use), and a
                # certificate's host cannot be swapped for HA's LAN address.
                raise self._no_url(
                    f"{target.address} is a link-local address a display cannot open"
                )
            # A certificate names the host, so the receiver must use that name.
            url = str(parsed.with_path("").with_query(None).with_fragment(None))
        else:
            # Plain HTTP: the checked address itself, an IP literal. Without
            # the internal URL's path or query (HA serves from its root): the
            # cast view's path is appended to this base, and must stay a path.
            url = replace(target, url=target.url.with_path("").with_query(None)).pinned_url()
            host_is_ip = True
        ir.async_delete_issue(self.hass, DOMAIN, ISSUE_NO_INTERNAL_URL)
        return BaseUrl(url=url.rstrip("/"), host_is_ip=host_is_ip, scheme=parsed.scheme)

    async def _detected_lan(
        self, policy: NetPolicy, parsed: yarl.URL, reason: str
    ) -> tuple[yarl.URL, Target]:
        """Return HA's detected LAN address over plain HTTP, or raise ``_no_url(reason)``.

        Only for an ``http`` internal URL without ``ssl``: a certificate names
        its host, so an HTTPS URL is never swapped for an address.
        """
        api = self.hass.config.api
        if parsed.scheme != "http" or api is None or api.use_ssl or not api.local_ip:
            raise self._no_url(reason)
        if is_loopback_literal(api.host):
            # server_host is loopback: HA does not listen on the LAN address.
            raise self._no_url(f"{reason}; Home Assistant listens on {api.host} only")
        lan = yarl.URL.build(scheme="http", host=api.local_ip, port=api.port)
        try:
            return lan, await policy.check(lan, schemes=_BASE_SCHEMES)
        except LocalCamError as err:
            raise self._no_url(_reason(err)) from None

    def _has_lan_address(self) -> bool:
        """Whether HA detected an address of its own other than loopback."""
        api = self.hass.config.api
        return api is not None and bool(api.local_ip) and not is_loopback_literal(api.local_ip)

    def _no_url(self, reason: str) -> HomeAssistantError:
        """Raise the repair issue and return the error to raise."""
        ir.async_create_issue(
            self.hass,
            DOMAIN,
            ISSUE_NO_INTERNAL_URL,
            is_fixable=False,
            is_persistent=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key=ISSUE_NO_INTERNAL_URL,
            translation_placeholders={"reason": reason},
        )
        return HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_no_internal_url",
            translation_placeholders={"reason": reason},
        )

    # ---- starting ----------------------------------------------------------

    def _check_free(self, receiver: str, *, force: bool) -> ReceiverView:
        """Return the receiver's view, or raise when it may not be cast to now."""
        view = ReceiverView.of(self.hass.states.get(receiver))
        if view.unavailable:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="cast_receiver_unavailable",
                translation_placeholders={"entity_id": receiver},
            )
        if force or view.state in _FREE_STATES or view.shows_cast:
            # Free, or showing a LocalCam cast (ours, or one from before a
            # restart): casting replaces it.
            return view
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="cast_receiver_busy",
            translation_placeholders={
                "entity_id": receiver,
                "app": view.app_name or view.app_id or "media",
            },
        )

    async def async_cast(
        self,
        camera: LocalCamCamera,
        receivers: Iterable[str],
        *,
        mode: CastMode,
        duration: float | None,
        keep_alive: bool,
        refresh: float,
        force: bool,
        context: Context | None = None,
    ) -> dict[str, str]:
        """Cast a camera to receivers; raise a translated error when none shows it.

        Returns each receiver's outcome: ``started``, or the translation key
        of why it was left out or failed (the others show the camera).
        """
        receivers = list(dict.fromkeys(receivers))
        # Taken before the first wait: an unload from here on bumps it, and the
        # cast is then refused (see _async_start).
        generation = self._generation(camera.camera_id)
        # Likewise a stop_cast from here on for one of the receivers.
        stops = {receiver: self._stops.get(receiver, 0) for receiver in receivers}
        if self._camera_closed(camera, generation):
            raise self._closed_error(camera)
        # Refuse early, before a stream is started for nothing. With several
        # displays, one that is busy (force off) or unreachable is left out,
        # named in the log, and the others still show the camera (a doorbell
        # must not go unseen in the kitchen because of music in the hall);
        # only when no display is free is the refusal the call's error.
        asked = receivers
        free: list[str] = []
        refusals: list[HomeAssistantError] = []
        outcomes: dict[str, str] = {}
        for receiver in receivers:
            try:
                self._check_free(receiver, force=force)
            except HomeAssistantError as err:
                refusals.append(err)
                outcomes[receiver] = err.translation_key or "cast_failed"
                LOGGER.info("Not casting to %s: %s", receiver, err.translation_key)
            else:
                free.append(receiver)
        if not free:
            raise refusals[0]
        receivers = free
        base = await self.async_base_url()
        if mode is CastMode.LIVE:
            await async_prepare_live(camera, wait=LIVE_READY_TIMEOUT)
        else:
            await self._async_check_camera(camera)
        state = self.hass.states.get(camera.entity_id)
        name = state.name if state is not None else camera.entity_id
        results = await asyncio.gather(
            *(
                self._async_start(
                    camera,
                    name,
                    receiver,
                    base,
                    generation=generation,
                    stops=stops[receiver],
                    mode=mode,
                    duration=duration,
                    keep_alive=keep_alive,
                    refresh=refresh,
                    force=force,
                    context=context,
                )
                for receiver in receivers
            ),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if len(failures) == len(results) or any(
            not isinstance(failure, Exception) for failure in failures
        ):
            raise failures[0]  # nothing shows the camera (or the call was cancelled)
        for receiver, result in zip(receivers, results, strict=True):
            if isinstance(result, HomeAssistantError):
                outcomes[receiver] = result.translation_key or "cast_failed"
                LOGGER.warning(
                    "Cast to %s failed (%s); the other displays show %s",
                    receiver,
                    result.translation_key,
                    camera.entity_id,
                )
            elif isinstance(result, Exception):
                raise result
            else:
                outcomes[receiver] = CAST_STARTED
        return {receiver: outcomes[receiver] for receiver in asked}

    async def _async_check_camera(self, camera: LocalCamCamera) -> None:
        """Fetch a still before a LOAD: it proves the camera works.

        The receiver's request moments later is served from the same still by
        the camera's snapshot cache, so this costs no second camera fetch.
        """
        if not await camera.async_camera_image():
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="cast_no_image",
                translation_placeholders={"entity_id": camera.entity_id},
            )

    async def _async_start(
        self,
        camera: LocalCamCamera,
        name: str,
        receiver: str,
        base: BaseUrl,
        *,
        generation: int,
        stops: int,
        mode: CastMode,
        duration: float | None,
        keep_alive: bool,
        refresh: float,
        force: bool,
        context: Context | None,
    ) -> None:
        """Start one cast to one receiver (replacing the cast already there)."""
        async with self._lock(receiver):
            # A stop_cast for this receiver since this cast was asked for: it
            # found no session to end (this one had none yet), and said it
            # stopped the display's cast; starting now would undo it.
            if self._stops.get(receiver, 0) != stops:
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="cast_stopped",
                    translation_placeholders={"entity_id": receiver},
                )
            # The camera's entry may have unloaded while the stream started or
            # the lock was busy: its unload found no cast of ours to end and
            # revoked no token of ours, so no token may be issued now.
            if self._camera_closed(camera, generation):
                raise self._closed_error(camera)
            # Again, now: starting the stream took a while, and someone may
            # have started their own media meanwhile.
            view = found = self._check_free(receiver, force=force)
            if view.shows_cast and receiver not in self._sessions:
                # A LocalCam cast no session of ours runs (one from before a
                # restart, left on a dead URL): not what the display goes
                # back to; its ambient screen is.
                found = ReceiverView(MediaPlayerState.OFF, BACKDROP_APP_ID, None, None)
            if (previous := self._sessions.get(receiver)) is not None:
                # The receiver goes back to how it was before the first cast,
                # not to "showing the previous camera".
                found = previous.found
                await self._async_end(previous, EndReason.REPLACED, restore=False)
            try:
                # Its duration starts when the first LOAD returns (begin
                # below); until then the token lives on its lease, which
                # outlasts any LOAD (PLAY_TIMEOUT).
                token = self.links.issue(
                    CastGrant(
                        camera_id=camera.camera_id,
                        receiver=receiver,
                        mode=mode,
                        stream=camera.unique_id or "",
                    ),
                    duration=None,
                )
            except CastLinkLimitError as err:
                raise HomeAssistantError(
                    translation_domain=DOMAIN,
                    translation_key="cast_too_many",
                    translation_placeholders={"limit": str(err.limit)},
                ) from None
            record = ReceiverRecord(
                camera_entity_id=camera.entity_id,
                camera_id=camera.camera_id,
                mode=mode.value,
                started=dt_util.utcnow().isoformat(),
                internal_host=True,
                host_is_ip=base.host_is_ip,
                scheme=base.scheme,
                app_at_start=view.app_name or view.app_id,
                state_at_start=view.state,
            )
            session = CastSession(
                camera=camera,
                camera_entity_id=camera.entity_id,
                camera_name=name,
                receiver=receiver,
                mode=mode,
                duration=duration,
                keep_alive=keep_alive,
                refresh=refresh,
                token=token,
                base=base,
                found=found,
                context=context,
                record=record,
                started_at=self.links.now(),
            )
            self._store_record(receiver, record)
            # Registered before the LOAD, which may take pychromecast 30 s: a
            # stop meanwhile (stop_cast, a media_stop in HA, an unload, HA
            # stopping) finds the cast and revokes its URL at once.
            self._sessions[receiver] = session
            self._async_watch_stops(session)
            restored = False
            # Shielded: a cancelled start (its automation stopped or restarted)
            # cannot call back a LOAD Home Assistant's cast entity already
            # handed to pychromecast's thread; the LOAD runs to its end, and
            # _async_settle_cancelled then takes its dead URL off the screen.
            load = self.hass.async_create_task(
                self._async_load(session), f"{DOMAIN} cast load {receiver}", eager_start=True
            )
            try:
                await asyncio.shield(load)
                if self._camera_closed(camera, generation):
                    # Unloaded during the LOAD: its unload revoked the token
                    # already; take the dead URL off the screen and refuse.
                    record.ended = dt_util.utcnow().isoformat()
                    record.end_reason = EndReason.UNLOAD.value
                    self._async_discard(session)
                    restored = True
                    await self._async_restore(session)
                    raise self._closed_error(camera)
            except BaseException as err:
                # A failed or refused LOAD, or a cancelled one: the token must
                # not outlive this call, as no session will revoke it.
                self._async_discard(session)
                if record.ended is None:
                    record.ended = dt_util.utcnow().isoformat()
                    record.end_reason = EndReason.ERROR.value
                if not restored and isinstance(err, Exception):
                    # The replaced cast's URL is dead (or this one's, should
                    # the failed LOAD have landed after all): the display goes
                    # back to how the first cast found it rather than keep a
                    # picture that no longer answers.
                    await self._async_restore(session, also=previous, only_ours=previous is None)
                elif not restored:
                    # Cancelled: nothing more may be awaited here; a task waits
                    # for the LOAD and restores the display after it.
                    self.hass.async_create_background_task(
                        self._async_settle_cancelled(session, previous, load),
                        f"{DOMAIN} cast cancelled {receiver}",
                    )
                raise
            session.starting = False
            if not session.revoked:
                # The cast shows from now on: its end timer starts now
                # (_async_track), and so does its URL's duration.
                session.started_at = self.links.now()
                if not self.links.begin(token, duration=duration):
                    # Only a bug or a stalled loop gets here: the URL is gone.
                    self._async_revoke(session, EndReason.ERROR, restore=True)
            if session.revoked:
                # Stopped during the LOAD (or its URL lost), which then landed
                # the dead URL on the display: the cast started and ends now,
                # as the stop asked (a display restored as after any stop).
                self._async_fire_started(session)
                await self._async_end(session, session.end_reason, restore=session.end_restore)
                return
            self._async_track(session)
        self._async_fire_started(session)

    async def _async_settle_cancelled(
        self, session: CastSession, previous: CastSession | None, load: asyncio.Task[None]
    ) -> None:
        """Restore the display after a cancelled start, once its LOAD is over.

        Its URL (and a replaced cast's) no longer answers. Under the display's
        lock: a cast started meanwhile waits, and one that already runs there
        (it took the lock first) is left alone, as is the display when it
        shows anything but these two casts' URLs (only_ours).
        """
        async with self._lock(session.receiver):
            await asyncio.wait((load,))  # bounded by the LOAD's own PLAY_TIMEOUT
            if not load.cancelled():
                load.exception()  # retrieved: _async_load logged it
            if self.hass.is_stopping or session.receiver in self._sessions:
                return
            await self._async_restore(session, also=previous, only_ours=True)

    @callback
    def _async_fire_started(self, session: CastSession) -> None:
        """Report a cast whose first LOAD landed."""
        self.hass.bus.async_fire(
            EVENT_CAST_STARTED,
            {
                "entity_id": session.camera.entity_id,  # its id now (renamed mid-cast)
                ATTR_MEDIA_PLAYER: session.receiver,
                ATTR_MODE: session.mode.value,
                ATTR_DURATION: session.duration or 0,
                ATTR_KEEP_ALIVE: session.keep_alive,
            },
            context=session.context,
        )

    @callback
    def _async_discard(self, session: CastSession) -> None:
        """Drop a cast that never started (its first LOAD failed, was cancelled or refused)."""
        session.ended = True
        self._async_revoke(session, EndReason.ERROR, restore=False)
        if self._sessions.get(session.receiver) is session:
            del self._sessions[session.receiver]
        for unsub in session.unsubs:
            unsub()
        session.unsubs.clear()

    def _store_record(self, receiver: str, record: ReceiverRecord) -> None:
        """Keep the receiver's last cast, bounded in count."""
        self._records.pop(receiver, None)
        self._records[receiver] = record
        while len(self._records) > MAX_RECORDS:
            del self._records[next(iter(self._records))]

    async def _async_load(self, session: CastSession) -> None:
        """Send one LOAD of the session's URL to its receiver."""
        session.version += 1
        if session.mode is CastMode.LIVE:
            content_type = HLS_CONTENT_TYPE
            extra: dict[str, Any] = {
                "stream_type": "LIVE",
                # The Default Media Receiver assumes MPEG-TS segments in HLS
                # unless told otherwise; ours are fragmented MP4.
                "media_info": {"hlsVideoSegmentFormat": "fmp4"},
                "metadata": {"metadataType": METADATA_GENERIC, "title": session.camera_name},
            }
        else:
            content_type = JPEG_CONTENT_TYPE
            extra = {"metadata": {"metadataType": METADATA_PHOTO, "title": session.camera_name}}
        session.loading = True
        try:
            async with asyncio.timeout(PLAY_TIMEOUT):
                await self.hass.services.async_call(
                    MP_DOMAIN,
                    SERVICE_PLAY_MEDIA,
                    {
                        ATTR_ENTITY_ID: session.receiver,
                        ATTR_MEDIA_CONTENT_ID: session.url(),
                        ATTR_MEDIA_CONTENT_TYPE: content_type,
                        ATTR_MEDIA_EXTRA: extra,
                    },
                    blocking=True,
                    context=session.context,
                )
        except Exception as err:  # noqa: BLE001 - the edge LocalCam does not own
            # HA's cast entity turns pychromecast's own errors into
            # HomeAssistantError, but a device whose socket fails mid-LOAD can
            # raise anything through it (an OSError). Every failure to play is
            # the same translated cast_failed, so each caller (start, re-cast,
            # refresh) handles it as one. The error text may quote the URL
            # (pychromecast names the media in its timeouts): only its type is
            # logged.
            expected = isinstance(err, (HomeAssistantError, TimeoutError))
            LOGGER.log(
                logging.DEBUG if expected else logging.WARNING,
                "Cast to %s failed: %s",
                session.receiver,
                type(err).__name__,
            )
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="cast_failed",
                translation_placeholders={"entity_id": session.receiver},
            ) from None
        finally:
            session.loading = False
            session.settle_until = time.monotonic() + RECAST_SETTLE

    # ---- watching ----------------------------------------------------------

    @callback
    def _async_track(self, session: CastSession) -> None:
        """Start the timers and the receiver watch of a started cast."""
        hass = self.hass

        @callback
        def _duration_over(_now: Any) -> None:
            self._async_spawn(session, EndReason.DURATION, restore=True)

        @callback
        def _renew(_now: Any) -> None:
            self._async_renew(session)

        @callback
        def _receiver_changed(event: Event[EventStateChangedData]) -> None:
            self._async_receiver_changed(session, event)

        if session.duration is not None:
            session.unsubs.append(async_call_later(hass, session.duration, _duration_over))
        session.unsubs.append(
            async_track_time_interval(
                hass, _renew, timedelta(seconds=RENEW_INTERVAL), name=f"{DOMAIN} cast renewal"
            )
        )
        session.unsubs.append(
            async_track_state_change_event(hass, [session.receiver], _receiver_changed)
        )
        if session.mode is CastMode.SNAPSHOT and session.refresh > 0:
            session.refresh_task = hass.async_create_background_task(
                self._async_refresh_loop(session), f"{DOMAIN} cast refresh {session.receiver}"
            )
        self._async_schedule_check(session)

    @callback
    def _async_watch_stops(self, session: CastSession) -> None:
        """End the cast when its display is stopped or turned off through HA.

        From before the first LOAD on. LocalCam's own stop calls (restoring a
        display) come after the cast ended, when this listener is gone.
        """
        hass = self.hass

        @callback
        def _stop_called(event: Event[Any]) -> None:
            named = _called_entities(hass, event.data)
            if named is not None and session.receiver not in named:
                return
            if (user_id := event.context.user_id) is None:
                self._async_stopped_in_ha(session)
                return
            # HA fires call_service before its entity service checks the
            # caller's permissions: a user who may not control the display
            # (refused there, or skipped in an area target) must not end the
            # cast through the back door localcam.stop_cast refuses them.
            # Eager: with HA's user store loaded, this finishes at once.
            hass.async_create_task(
                self._async_stop_if_allowed(session, user_id),
                f"{DOMAIN} cast stop {session.receiver}",
                eager_start=True,
            )

        session.unsubs.append(
            hass.bus.async_listen(EVENT_CALL_SERVICE, _stop_called, event_filter=_is_stop_call)
        )

        @callback
        def _receiver_gone(event: Event[er.EventEntityRegistryUpdatedData]) -> None:
            # The display's entity was removed or renamed: the cast's id names
            # nothing any more (no state: it would read as unreachable and keep
            # its URL for RECEIVER_GRACE), and stop_cast cannot reach it (the
            # old id is no Cast entity; the new one has no cast). End it now.
            data = event.data
            if data["action"] == "remove" or (
                data["action"] == "update" and data.get("old_entity_id") == session.receiver
            ):
                session.record.last_idle_reason = "receiver_removed"
                self._async_spawn(session, EndReason.RECEIVER_LOST, restore=False)

        session.unsubs.append(
            async_track_entity_registry_updated_event(hass, session.receiver, _receiver_gone)
        )

    async def _async_stop_if_allowed(self, session: CastSession, user_id: str) -> None:
        """End the cast for a stop call by a user allowed to control its display."""
        user = await self.hass.auth.async_get_user(user_id)
        if user is None:
            return  # a deleted user's call: HA refuses it (UnknownUser)
        if user.is_admin or user.permissions.check_entity(session.receiver, POLICY_CONTROL):
            self._async_stopped_in_ha(session)

    @callback
    def _async_stopped_in_ha(self, session: CastSession) -> None:
        """End a cast whose display was stopped or turned off through HA."""
        session.record.last_idle_reason = "stopped_in_home_assistant"
        # A stop during a LOAD (the first, a refresh, a re-cast) comes before
        # the LOAD lands the URL: that display needs restoring; another one
        # stopped the cast's media itself.
        self._async_spawn(session, EndReason.STOPPED, restore=session.starting or session.loading)

    @callback
    def _async_renew(self, session: CastSession) -> None:
        """Renew the cast's token by one lease step."""
        if session.revoked:
            return  # revoked on purpose; its end is on the way
        if not self.links.renew(session.token):
            # Only a bug or a stalled loop gets here; the URL no longer works.
            self._async_spawn(session, EndReason.ERROR, restore=True)

    @callback
    def _async_receiver_changed(
        self, session: CastSession, event: Event[EventStateChangedData]
    ) -> None:
        """Record the receiver's new state and judge it (after any settle time)."""
        new_state = event.data["new_state"]
        view = ReceiverView.of(new_state)
        session.record.history.append(
            {
                "at": dt_util.utcnow().isoformat(),
                "state": view.state,
                "app": view.app_name or view.app_id,
                "ours": session.owns(view.content_id),
            }
        )
        self._async_schedule_check(session)

    @callback
    def _async_schedule_check(self, session: CastSession) -> None:
        """Judge the receiver once the current LOAD has settled."""
        if session.check_unsub is not None or session.ended:
            return
        delay = max(session.settle_until - time.monotonic(), 0.0)

        @callback
        def _run(_now: Any) -> None:
            session.check_unsub = None
            self._async_check(session)

        session.check_unsub = async_call_later(self.hass, delay, _run)

    @callback
    def _async_check(self, session: CastSession) -> None:
        """Judge what the receiver shows now; re-cast or end when needed."""
        if session.revoked or session.ended or session.loading:
            return
        view = ReceiverView.of(self.hass.states.get(session.receiver))
        if (taken_by := self._taken_over(session, view)) is not None:
            # Also while a keep-alive re-cast waits out its backoff or starts
            # the stream: the person's media or app is never loaded over, and
            # the cast's URL dies now, not when the re-cast would have looked.
            session.record.last_idle_reason = taken_by
            self._async_spawn(session, EndReason.REPLACED, restore=False)
            return
        if view.unavailable:
            # HA lost its connection to the display: pychromecast reconnects
            # by itself (a blip), and a rebooting Nest Hub is back within a
            # minute or two; the display may well go on showing the cast
            # meanwhile. Nothing is judged (no attempt counted, no URL
            # revoked) until it is back; a display that stays away ends the
            # cast after RECEIVER_GRACE.
            session.record.last_idle_reason = "receiver_unavailable"
            self._async_await_receiver(session)
            return
        if session.lost_unsub is not None:
            session.lost_unsub()
            session.lost_unsub = None
        if session.recasting:
            return  # the re-cast in progress decides the rest
        if view.state == MediaPlayerState.OFF and session.owns(
            _device_playing(self.hass, session.receiver)
        ):
            # Our media still plays, but HA says off: a TV switched to another
            # input or put in standby (a Chromecast reports its input
            # inactive; HA then hides the media from the state). A person
            # turned away; a re-cast would switch the TV back (HDMI-CEC).
            session.record.last_idle_reason = "display_off"
            self._async_spawn(session, EndReason.STOPPED, restore=False)
            return
        device_reason = _device_idle_reason(self.hass, session.receiver)
        if (
            view.state == MediaPlayerState.IDLE
            and session.owns(view.content_id)
            and device_reason == _IDLE_BY_PERSON
        ):
            # Stopped on the display itself: a person's choice, like a stop in HA.
            session.record.last_idle_reason = "stopped_on_display"
            self._async_spawn(session, EndReason.STOPPED, restore=False)
            return
        idle_reason = self._idle_reason(session, view, device_reason)
        if idle_reason is None:
            if view.state in _BUSY_STATES and view.content_id is None:
                # The media receiver busy with media that has no content id:
                # every LOAD of ours carries one, so this is another sender's.
                session.record.last_idle_reason = "other_media"
                self._async_spawn(session, EndReason.REPLACED, restore=False)
                return
            session.attempts = 0
            return
        session.record.last_idle_reason = idle_reason
        if (
            session.keep_alive
            and not session.over(self.links.now())
            and session.attempts < len(RECAST_BACKOFF)
            and session.record.recasts < MAX_RECASTS
        ):
            self._async_start_recast(session)
            return
        # Given up: a display left on the cast's dead URL (its player failed)
        # goes back to how the cast found it; one showing anything else is
        # left alone (_async_end restores only what shows this cast).
        self._async_spawn(session, EndReason.RECEIVER_LOST, restore=True)

    @callback
    def _async_await_receiver(self, session: CastSession) -> None:
        """End the cast if its display stays unreachable for RECEIVER_GRACE."""
        if session.lost_unsub is not None:
            return

        @callback
        def _gone(_now: Any) -> None:
            session.lost_unsub = None
            if ReceiverView.of(self.hass.states.get(session.receiver)).unavailable:
                self._async_spawn(session, EndReason.RECEIVER_LOST, restore=False)

        session.lost_unsub = async_call_later(self.hass, RECEIVER_GRACE, _gone)

    @staticmethod
    def _taken_over(session: CastSession, view: ReceiverView) -> str | None:
        """Return how a person (or another app) took the receiver over, if one did.

        Never fight them: the cast ends. Another app counts as soon as the
        device reports it running, even while HA still holds our media status:
        a Cast device reports the app switch and the media session's end as two
        messages, and keep-alive must not LOAD over the app in between.
        """
        if view.content_id and not session.owns(view.content_id):
            return "other_media"
        if view.app_id not in (None, DEFAULT_MEDIA_RECEIVER_APP_ID, BACKDROP_APP_ID):
            return "other_app"
        return None

    def _shows(self, session: CastSession, view: ReceiverView) -> bool:
        """Whether the display shows the cast now (playing it, or its still)."""
        device_reason = _device_idle_reason(self.hass, session.receiver)
        return (
            session.owns(view.content_id)
            and self._idle_reason(session, view, device_reason) is None
        )

    @staticmethod
    def _idle_reason(
        session: CastSession, view: ReceiverView, device_reason: str | None
    ) -> str | None:
        """Return why the receiver no longer shows the cast, or None if it does.

        ``device_reason`` is the device's own idle reason for its media.
        """
        if view.state in (None, STATE_UNAVAILABLE, STATE_UNKNOWN):
            return "receiver_unavailable"
        if view.state == MediaPlayerState.OFF:
            return "receiver_off"
        if view.state == MediaPlayerState.IDLE:
            if (
                session.mode is CastMode.SNAPSHOT
                and session.owns(view.content_id)
                and view.app_id in (None, DEFAULT_MEDIA_RECEIVER_APP_ID)
                and device_reason != _IDLE_BY_ERROR
            ):
                # A still on screen: the player has nothing to play and says
                # idle, yet the receiver shows our picture (unless it says
                # the picture failed to load).
                return None
            return "receiver_idle"
        return None

    @callback
    def _async_revoke(self, session: CastSession, reason: EndReason, *, restore: bool) -> bool:
        """Revoke a cast's token at once; False when it was revoked already.

        The rest of ending a cast waits for the receiver's lock, which a slow
        LOAD (the first one, a refresh, a keep-alive re-cast) can hold for tens
        of seconds; the URL must stop working now, not then. The first
        revocation's reason is how the cast ends.
        """
        if session.revoked:
            return False
        session.revoked = True
        session.end_reason = reason
        session.end_restore = restore
        self.links.revoke(session.token)
        return True

    @callback
    def _async_spawn(self, session: CastSession, reason: EndReason, *, restore: bool) -> None:
        """End a cast from a callback (once: the first reason wins)."""
        if not self._async_revoke(session, reason, restore=restore) or session.starting:
            return  # ending already, or its starter ends it when the first LOAD returns
        self.hass.async_create_background_task(
            self._async_end_locked(session, reason, restore=restore),
            f"{DOMAIN} cast end {session.receiver}",
        )

    @callback
    def _async_start_recast(self, session: CastSession) -> None:
        """Start one keep-alive re-cast attempt after its backoff."""
        delay = RECAST_BACKOFF[min(session.attempts, len(RECAST_BACKOFF) - 1)]
        session.attempts += 1
        session.recast_task = self.hass.async_create_background_task(
            self._async_recast(session, delay), f"{DOMAIN} cast keep-alive {session.receiver}"
        )

    async def _async_recast(self, session: CastSession, delay: float) -> None:
        """Re-cast after ``delay``, then judge the receiver again (whatever went wrong)."""
        await asyncio.sleep(delay)
        try:
            await self._async_recast_locked(session)
        except Exception as err:  # noqa: BLE001 - keep-alive must outlive one bad attempt
            # The attempt counts (attempts and recasts are bounded); the check
            # below decides on the next one.
            LOGGER.warning(
                "Keep-alive re-cast to %s failed unexpectedly: %s",
                session.receiver,
                type(err).__name__,
            )
        session.recast_task = None
        if not session.ended:
            self._async_schedule_check(session)

    async def _async_recast_locked(self, session: CastSession) -> None:
        """One keep-alive re-cast under the receiver's lock."""
        async with self._lock(session.receiver):
            if session.over(self.links.now()):
                return  # stopped meanwhile, or the duration timer is ending it
            view = ReceiverView.of(self.hass.states.get(session.receiver))
            if (taken_by := self._taken_over(session, view)) is not None:
                # Someone cast their own media or opened an app during the backoff.
                session.record.last_idle_reason = taken_by
                await self._async_end(session, EndReason.REPLACED, restore=False)
                return
            if self._shows(session, view):
                return  # back on the cast by itself (a connection blip): no LOAD
            session.record.recasts += 1
            try:
                self.links.renew(session.token)
                if session.mode is CastMode.LIVE:
                    await async_prepare_live(session.camera, wait=LIVE_READY_TIMEOUT)
                else:
                    await self._async_check_camera(session.camera)
                if session.over(self.links.now()):
                    return  # stopped while the stream started or the camera answered
                # Seconds have passed (the stream's start): look again, last thing.
                view = ReceiverView.of(self.hass.states.get(session.receiver))
                if (taken_by := self._taken_over(session, view)) is not None:
                    session.record.last_idle_reason = taken_by
                    await self._async_end(session, EndReason.REPLACED, restore=False)
                    return
                if not view.unavailable and not self._shows(session, view):
                    await self._async_load(session)
            except HomeAssistantError:
                LOGGER.debug("Keep-alive re-cast to %s failed", session.receiver)

    async def _async_refresh_loop(self, session: CastSession) -> None:
        """Snapshot mode: send a new picture every ``refresh`` seconds."""
        # Ending the cast cancels this task; a drop is the receiver check's
        # business (it ends the cast or re-casts). That check stands aside
        # while a LOAD is in flight (``session.loading``), so after each LOAD,
        # failed or not, it runs again, and a takeover seen here ends the
        # cast: a person who cast their own media during our LOAD is not
        # fought, and our URL stops working (404) at once.
        while True:
            await asyncio.sleep(session.refresh)
            async with self._lock(session.receiver):
                if session.over(self.links.now()):
                    return  # ending: never LOAD a revoked or expired URL
                view = ReceiverView.of(self.hass.states.get(session.receiver))
                if (taken_by := self._taken_over(session, view)) is not None:
                    # Someone else's media or app now: never load over it.
                    session.record.last_idle_reason = taken_by
                    await self._async_end(session, EndReason.REPLACED, restore=False)
                    return
                try:
                    await self._async_check_camera(session.camera)
                    if session.over(self.links.now()):
                        return  # stopped while the camera answered: no LOAD of a dead URL
                    view = ReceiverView.of(self.hass.states.get(session.receiver))
                    if (taken_by := self._taken_over(session, view)) is not None:
                        # Taken while the camera answered: look again, last thing.
                        session.record.last_idle_reason = taken_by
                        await self._async_end(session, EndReason.REPLACED, restore=False)
                        return
                    await self._async_load(session)
                except Exception as err:  # noqa: BLE001 - see below
                    # Whatever failed, this loop must go on to count it: a
                    # refresh loop that died would leave the display on its
                    # last picture, growing older, for the rest of the cast.
                    LOGGER.debug(
                        "Snapshot refresh on %s failed: %s", session.receiver, type(err).__name__
                    )
                    session.refresh_failures += 1
                    if session.refresh_failures >= MAX_REFRESH_FAILURES:
                        session.record.last_idle_reason = "refresh_failed"
                        await self._async_end(session, EndReason.ERROR, restore=True)
                        return
                else:
                    session.refresh_failures = 0
            self._async_schedule_check(session)

    # ---- ending ------------------------------------------------------------

    async def _async_end_locked(
        self, session: CastSession, reason: EndReason, *, restore: bool
    ) -> None:
        """End a cast under its receiver's lock, its token revoked before the wait."""
        self._async_revoke(session, reason, restore=restore)
        if session.starting:
            # Its starter holds the lock for the first LOAD and ends it when
            # the LOAD returns: a stop, an unload or HA's shutdown need not
            # wait up to 35 s for that.
            return
        async with self._lock(session.receiver):
            await self._async_end(session, reason, restore=restore)

    async def _async_end(self, session: CastSession, reason: EndReason, *, restore: bool) -> None:
        """End a cast: revoke its token, stop its timers, report it, restore the receiver."""
        if session.ended:
            return
        session.ended = True
        self._async_revoke(session, reason, restore=restore)
        if self._sessions.get(session.receiver) is session:
            del self._sessions[session.receiver]
        for unsub in session.unsubs:
            unsub()
        session.unsubs.clear()
        for timer in (session.check_unsub, session.lost_unsub):
            if timer is not None:
                timer()
        session.check_unsub = session.lost_unsub = None
        current = asyncio.current_task()
        for task in (session.refresh_task, session.recast_task):
            if task is not None and task is not current and not task.done():
                task.cancel()
        session.record.ended = dt_util.utcnow().isoformat()
        session.record.end_reason = reason.value
        self.hass.bus.async_fire(
            EVENT_CAST_ENDED,
            {
                "entity_id": session.camera.entity_id,  # its id now (renamed mid-cast)
                ATTR_MEDIA_PLAYER: session.receiver,
                ATTR_MODE: session.mode.value,
                ATTR_REASON: reason.value,
            },
            context=session.context,
        )
        if restore:
            await self._async_restore(session, only_ours=reason is EndReason.RECEIVER_LOST)

    async def _async_restore(
        self,
        session: CastSession,
        *,
        also: CastSession | None = None,
        only_ours: bool = False,
    ) -> None:
        """Leave the receiver as the cast found it, as far as Cast allows.

        ``also`` is the cast ``session`` replaced: its URL on the screen is
        ours too. With ``only_ours``, the receiver is touched only while it
        shows one of these casts' URLs.
        """
        view = ReceiverView.of(self.hass.states.get(session.receiver))
        casts = [session] if also is None else [session, also]
        if view.unavailable or all(self._taken_over(cast, view) is not None for cast in casts):
            return  # gone, or showing someone else's media or app now
        if only_ours and not any(cast.owns(view.content_id) for cast in casts):
            return
        if view.state == MediaPlayerState.OFF:
            return
        found = session.found
        services: list[str] = []
        if found.state == MediaPlayerState.IDLE and found.app_id == DEFAULT_MEDIA_RECEIVER_APP_ID:
            # It sat idle in the media receiver: stop the media, keep the app.
            services.append(SERVICE_MEDIA_STOP)
        # Otherwise it was off (ambient screen), in another app, or playing what
        # `force` interrupted and cannot be resumed: quit back to ambient.
        services.append(SERVICE_TURN_OFF)
        for service in services:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self.hass.services.async_call(
                        MP_DOMAIN,
                        service,
                        {ATTR_ENTITY_ID: session.receiver},
                        blocking=True,
                        context=session.context,
                    )
            except Exception as err:  # noqa: BLE001 - the device's edge, as in _async_load
                # A restore is best effort: whatever the device raises (an
                # OSError through HA's cast entity too) must not replace the
                # error or the end its caller reports.
                LOGGER.debug(
                    "Could not %s %s after a cast: %s",
                    service,
                    session.receiver,
                    type(err).__name__,
                )
                continue
            return

    async def async_stop(self, receivers: Iterable[str], context: Context | None = None) -> int:
        """Stop the casts on receivers (no cast there is not an error); return how many."""
        receivers = list(dict.fromkeys(receivers))
        for receiver in receivers:
            # Casts asked for earlier and not started yet give up (_async_start).
            self._stops[receiver] = self._stops.get(receiver, 0) + 1
        # Every URL dies now; each end then waits for its receiver's lock (a
        # cast in its first LOAD is ended by its starter, which holds it).
        running = [s for receiver in receivers if (s := self._sessions.get(receiver)) is not None]
        for session in running:
            session.context = context or session.context
            self._async_revoke(session, EndReason.STOPPED, restore=True)
        # Only the casts running when the stop was asked for, each under its
        # receiver's lock, all at once: a cast started on one display while
        # the stop waited for another's lock is not this stop's (a session
        # still in its first LOAD is ended by its starter).
        await asyncio.gather(
            *(self._async_end_locked(s, EndReason.STOPPED, restore=True) for s in running)
        )
        return len(running)

    async def async_stop_camera(self, camera_id: str, reason: EndReason = EndReason.UNLOAD) -> None:
        """End every cast of a camera and revoke its tokens (its entry unloads)."""
        # Before any wait: casts still starting see the bump and give up, and
        # every URL of the camera, even one whose LOAD is in flight, dies now.
        self._generations[camera_id] = self._generation(camera_id) + 1
        self.links.revoke_camera(camera_id)
        sessions = [s for s in self._sessions.values() if s.camera_id == camera_id]
        for session in sessions:
            # So no callback reads the revocation as a failure.
            self._async_revoke(session, reason, restore=True)
        await asyncio.gather(
            *(self._async_end_locked(session, reason, restore=True) for session in sessions)
        )
        self.links.revoke_camera(camera_id)

    async def async_stop_all(
        self, reason: EndReason = EndReason.UNLOAD, *, restore: bool = True
    ) -> None:
        """End every cast and revoke every token."""
        self.links.revoke_all()
        sessions = list(self._sessions.values())
        for session in sessions:
            # So no callback reads the revocation as a failure.
            self._async_revoke(session, reason, restore=restore)
        await asyncio.gather(
            *(self._async_end_locked(session, reason, restore=restore) for session in sessions)
        )
        self.links.revoke_all()

    # ---- diagnostics -------------------------------------------------------

    @callback
    def diagnostics(self, camera_id: str | None = None) -> dict[str, Any]:
        """Return the last cast per receiver (of one camera), tokens redacted."""
        return {
            receiver: record.as_dict()
            for receiver, record in self._records.items()
            if camera_id is None or record.camera_id == camera_id
        }


@callback
def async_create_cast_manager(hass: HomeAssistant) -> LocalCamCastManager:
    """Create the domain-wide manager; stop every cast when HA stops."""
    manager = hass.data[DATA_CAST] = LocalCamCastManager(hass)
    async_install_log_filter()

    async def _async_stop(_event: Event) -> None:
        # Receivers are disconnecting too; revoking is what matters now: their
        # players get 404s and go idle on their own.
        await manager.async_stop_all(EndReason.UNLOAD, restore=False)

    hass.bus.async_listen_once(EVENT_HOMEASSISTANT_STOP, _async_stop)
    return manager


# Home Assistant's cast integration loads every integration's ``cast`` module as
# a cast platform (media browsing and playing for Cast devices). LocalCam adds
# nothing there; these hooks keep the module a valid, inert platform.


async def async_get_media_browser_root_object(
    hass: HomeAssistant, cast_type: str
) -> list[BrowseMedia]:
    """Add no media browser entries to Cast devices."""
    return []


async def async_browse_media(
    hass: HomeAssistant,
    media_content_type: MediaType | str,
    media_content_id: str,
    cast_type: str,
) -> BrowseMedia | None:
    """Browse nothing: no media of Cast's browser belongs to LocalCam."""
    return None


async def async_play_media(
    hass: HomeAssistant,
    cast_entity_id: str,
    chromecast: Chromecast,
    media_type: MediaType | str,
    media_id: str,
) -> bool:
    """Leave every play request to Cast's default media receiver."""
    return False


async def async_stop_camera_casts(hass: HomeAssistant, camera_id: str) -> None:
    """End a camera's casts and revoke its tokens (for async_unload_entry)."""
    if (manager := hass.data.get(DATA_CAST)) is not None:
        await manager.async_stop_camera(camera_id, EndReason.UNLOAD)


@callback
def async_cast_diagnostics(hass: HomeAssistant, camera_id: str) -> dict[str, Any]:
    """Diagnostics of one camera's casts (for diagnostics.py)."""
    if (manager := hass.data.get(DATA_CAST)) is None:
        return {}
    return manager.diagnostics(camera_id)
