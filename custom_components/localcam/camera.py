"""The camera entity: live stream and stills, only ever from its own camera."""

import asyncio
from collections.abc import Mapping
import contextlib
from dataclasses import replace
from datetime import datetime
import threading
import time
from typing import override

from aiohttp import web
from homeassistant.components.camera import Camera, async_get_still_stream
from homeassistant.components.camera.const import CameraEntityFeature
from homeassistant.components.camera.prefs import get_dynamic_camera_stream_settings
from homeassistant.components.stream import CONF_RTSP_TRANSPORT as STREAM_RTSP_TRANSPORT, Stream
from homeassistant.components.stream.const import HLS_PROVIDER
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CALLBACK_TYPE, CoreState, Event, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.event import async_call_later
import yarl

from .const import (
    CONF_PROFILES,
    DOMAIN,
    HEADER_CAMERA,
    HEADER_CAPTURED_AT,
    HEADER_SOURCE,
    HEALTH_INTERVAL_SECONDS,
    LOGGER,
)
from .core.errors import InvalidAuthError, LocalCamError, RedirectedError
from .core.identity import IdentityMismatchError
from .core.models import Snapshot
from .core.netpolicy import is_loopback_literal
from .core.rtsp import FAST_OPEN_OPTIONS
from .core.snapshot import CameraClient
from .core.snapshot_cache import SnapshotCache
from .data import LocalCamConfigEntry
from .entity import LocalCamEntity
from .helpers import frame_key, still_error_status, translated_error

# Stills and streams are per camera and independent; Home Assistant must not
# serialise one camera's image requests behind another's.
PARALLEL_UPDATES = 0

# How long a still request waits at least for the running stream's next
# keyframe before opening its own short RTSP session instead (_keyframe_wait).
KEYFRAME_WAIT = 4.0
# An attribute of Home Assistant's that a later release may not have.
_ABSENT = object()
# Stream state changes arriving during a check run it again, a bounded number of times.
STREAM_RECHECKS = 3
# How long a camera whose redirect the relay refused shows unavailable: one
# health interval (a viewer opening the stream after that finds out again).
REFUSED_UNAVAILABLE = float(HEALTH_INTERVAL_SECONDS)
# How long a removed entity's stream worker gets to quit at its next packet
# before its relay is closed under it (a camera that hangs sends none).
STOP_GRACE = 1.0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: LocalCamConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add one camera entity per stream (ONVIF: per media profile)."""
    data = entry.runtime_data
    async_add_entities(LocalCamCamera(entry, profile) for profile in data.streams)


def _profile_name(entry: LocalCamConfigEntry, profile: str) -> str:
    """A profile's display name (its ONVIF name, else its token)."""
    for item in entry.data.get(CONF_PROFILES, []):
        if item["token"] == profile:
            return str(item.get("name") or profile)
    return profile


def _keyframe_wait(stream: Stream) -> float:
    """How long a still waits for the running stream's next keyframe.

    At least KEYFRAME_WAIT; for a camera whose keyframes come further apart
    ("smart codec" cameras: 4 to 10 s), one keyframe interval and a second,
    as Home Assistant's HLS output measures it (its longest segment: one per
    interval). Waiting less opened a second RTSP session for every still
    while someone watched, which then waited for that same keyframe.
    """
    interval = getattr(stream.outputs().get(HLS_PROVIDER), "target_duration", 0.0)
    return max(KEYFRAME_WAIT, float(interval) + 1.0)


def _go2rtc_elsewhere(hass: HomeAssistant) -> bool:
    """Whether Home Assistant's go2rtc is a server on another machine (``go2rtc: url:``).

    HA's go2rtc keeps its server's URL under ``hass.data["go2rtc"]``; the one
    HA runs itself is on localhost. Anything unreadable counts as local.
    """
    url = getattr(hass.data.get("go2rtc"), "url", None)
    if not isinstance(url, str):
        return False
    try:
        host = yarl.URL(url).host
    except ValueError:
        return False
    return host not in (None, "localhost") and not is_loopback_literal(host)


def _ignore_stream_state() -> None:
    """The update callback of a stream whose entity is gone."""


async def _async_stop_stream(stream: Stream) -> None:
    """Stop the stream's worker, even when the user preloads the stream.

    ``Stream.stop()`` leaves the worker running while ``preload_stream`` is
    set. That setting object is Home Assistant's cached preference for the
    entity id (shared with the next entity of the same id after a reload),
    so the stream gets a copy with preload off while it stops, never a
    change of the user's preference; afterwards it has the preference again.
    """
    settings = stream.dynamic_stream_settings
    stream.dynamic_stream_settings = replace(settings, preload_stream=False)
    # Home Assistant 2026.10's worker reads a stop that comes right after
    # update_source (before the worker restarted on the new URL) as that
    # restart: it clears the quit flag and runs on, and stop() then waits
    # for ever on the thread. After a re-pin (``_pin``), an unload could hang
    # so. Clearing the pending restart first makes the stop a stop.
    stream._fast_restart_once = False  # noqa: SLF001 - see above
    # stop() drops the outputs without their cleanup: release their waiting
    # requests and idle timers first (as remove_provider does for one).
    for output in stream.outputs().values():
        output.cleanup()
    try:
        await stream.stop()
    finally:
        stream.dynamic_stream_settings = settings


def _converter_image(stream: Stream) -> object:
    """The image the stream's keyframe converter holds now, or _ABSENT.

    Read from HA 2026.10's private attributes (see _async_stream_keyframe);
    a release without them gives _ABSENT, never an AttributeError on a still.
    """
    converter = getattr(stream, "_keyframe_converter", None)
    return getattr(converter, "_image", _ABSENT)


def _stream_progress(stream: Stream) -> tuple[int, int, int] | None:
    """How far Home Assistant's stream has got: its latest segment, and that segment's parts.

    The worker adds a part as the camera's packets arrive (about one a second
    with LL-HLS, one per keyframe interval without), so a change shows the
    camera sending. Read through the outputs' public ``last_segment``.
    """
    for output in stream.outputs().values():
        if (segment := output.last_segment) is not None:
            return (segment.stream_id, segment.sequence, len(segment.parts))
    return None


class LocalCamCamera(LocalCamEntity, Camera):
    """A LAN camera: RTSP into HA's stream, stills from the camera itself."""

    _attr_supported_features = CameraEntityFeature.STREAM

    def __init__(self, entry: LocalCamConfigEntry, profile: str) -> None:
        """Create the entity for one stream of the entry's camera."""
        LocalCamEntity.__init__(self, entry.runtime_data.coordinator)
        Camera.__init__(self)
        stream = entry.runtime_data.streams[profile]
        self._client: CameraClient = stream.client
        self._snapshots: SnapshotCache = stream.cache
        self._attr_unique_id = frame_key(self.camera_id, profile)
        self._profile = profile
        # Frames of this stream carry this key; anything else is refused.
        self._frame_key = self._client.source.camera_id
        # The last frame's provenance headers, by (sha256, captured_at).
        self._provenance: tuple[tuple[str, float], Mapping[str, str]] | None = None
        if profile == entry.runtime_data.main:
            self._attr_name = None  # the device's name is the camera's name
            self._attr_translation_key = "main"  # icon only (icons.json)
        else:
            # Secondary ONVIF profiles (sub streams): named, off by default.
            self._attr_translation_key = "profile"
            self._attr_translation_placeholders = {"profile": _profile_name(entry, profile)}
            self._attr_entity_registry_enabled_default = False
        self.stream_options[STREAM_RTSP_TRANSPORT] = self._client.source.ffmpeg_transport.value
        self._auth_check: asyncio.Task[None] | None = None
        self._recheck = False
        self._removed = False
        # While stills wait for the running stream's next keyframe: how many
        # wait, how far the stream had got at the last look, and when it was
        # last seen to move (_stream_receiving_since).
        self._stream_waits = 0
        self._stream_seen: tuple[int, int, int] | None = None
        self._stream_moved_at: float | None = None
        # One stop of HA's stream at a time (a check, a refused redirect and
        # the removal may each stop it): each restores the settings it saved.
        self._stop_lock = asyncio.Lock()
        # Set while a redirect the relay refused keeps the camera unavailable,
        # whatever the health check says (cleared REFUSED_UNAVAILABLE later).
        self._refused = False
        self._refusal_over: CALLBACK_TYPE | None = None
        # Whether the last health check passed (a recovery restarts a preload).
        self._was_healthy = True

    @override
    async def async_added_to_hass(self) -> None:
        """Let stills use this entity's running stream; undo on removal."""
        await super().async_added_to_hass()
        # Home Assistant removes and re-adds this same object when its entity
        # id changes (a rename): it is an entity again, with a stream of its own.
        self._removed = False
        self._recheck = False
        self._client.keyframe_provider = self._async_stream_keyframe
        self._client.stream_receiving_since = self._stream_receiving_since
        self._client.guard.on_refused = self._async_redirect_refused
        # Home Assistant turns the stream (and stills taken from it) as the
        # camera's Orientation setting says; LocalCam's other stills are
        # turned alike (the settings object changes in place with the setting).
        settings = await get_dynamic_camera_stream_settings(self.hass, self.entity_id)
        self._client.orientation = lambda: int(settings.orientation)

        def _detach() -> None:
            self._client.keyframe_provider = None
            self._client.stream_receiving_since = None
            self._client.guard.on_refused = None
            self._client.orientation = None
            if self._refusal_over is not None:
                self._refusal_over()
                self._refusal_over = None

        self.async_on_remove(_detach)
        # async_listen, not _once: the stop fires once anyway, and a once
        # listener's remover logs an error when called after it fired.
        self.async_on_remove(
            self.hass.bus.async_listen(EVENT_HOMEASSISTANT_STOP, self._async_hass_stopping)
        )
        if self.hass.state is CoreState.running:
            # Home Assistant preloads streams once, when it has started: an
            # entity added after that (a reload, an options change, a camera
            # set up on a retry) would otherwise never get its preloaded stream.
            self._async_schedule_preload()

    @callback
    def _async_schedule_preload(self) -> None:
        """Start the stream in the background if "Preload stream" is on for it."""
        self.coordinator.config_entry.async_create_background_task(
            self.hass, self._async_preload(), f"{DOMAIN} preload {self.entity_id}"
        )

    async def _async_preload(self) -> None:
        """Start the stream as Home Assistant's "Preload stream" does, when that is on."""
        settings = await get_dynamic_camera_stream_settings(self.hass, self.entity_id)
        if not settings.preload_stream or self._removed or self._refused:
            return
        if (stream := await self.async_create_stream()) is None:
            return  # removed meanwhile (the entity opens no stream once removed)
        stream.add_provider("hls")
        await stream.start()

    @override
    async def async_will_remove_from_hass(self) -> None:
        """Stop this entity's stream and its check: neither may outlive the entity.

        Home Assistant's Camera leaves ``self.stream`` running when the entity
        goes (unload, reload, disable); its worker would keep the RTSP session
        with the old URL and credentials, and its state changes would still
        run this entity's check against the entry's closed client (and could
        start a reauth flow for an entry that is gone).
        """
        self._removed = True
        if (task := self._auth_check) is not None:
            task.cancel()
            await asyncio.wait([task])
            self._auth_check = None
        # A stream being created right now is created before it is stopped.
        lock = self._create_stream_lock or contextlib.nullcontext()
        async with lock:
            if (stream := self.stream) is not None:
                self.stream = None
                stream.set_update_callback(_ignore_stream_state)
                await self._async_stop_promptly(stream)
        await super().async_will_remove_from_hass()

    async def _async_hass_stopping(self, _event: Event) -> None:
        """Home Assistant stops: its stream of a camera that hangs must not hold it up.

        HA's stream integration stops every stream then; this stop runs beside
        it and returns with it, unless the worker is stuck (see below).
        """
        if (stream := self.stream) is not None:
            await self._async_stop_promptly(stream)

    async def _async_stop_promptly(self, stream: Stream) -> None:
        """Stop HA's stream; close its relay under a worker that does not quit in time."""
        stopping = self.hass.async_create_task(
            self._async_stop(stream), f"{DOMAIN} stop {self.entity_id}"
        )
        # The worker quits at its next packet. One of a camera that hangs
        # never comes: FFmpeg would wait out its read timeout (about 9 s,
        # which an unload, every still waiting on it, and HA's own stop
        # waited for). Then the relay goes, as CameraClient.close does for
        # its own grabs, and FFmpeg returns at once. Not sooner: HA logs a
        # stream that ends as an error. (A worker still waiting for its first
        # keyframe checks no quit flag until it comes: with a long keyframe
        # interval it is cut at the grace too, and HA logs an error either way.)
        done, _ = await asyncio.wait([stopping], timeout=STOP_GRACE)
        if not done:
            self._client.guard.retire(stream.source, keep="")
        await stopping

    async def _async_stop(self, stream: Stream) -> None:
        """Stop HA's stream for this entity; stops never overlap."""
        async with self._stop_lock:
            await _async_stop_stream(stream)

    @property
    @override
    def available(self) -> bool:
        """Available while the camera passes its health check, streams, and sends nobody away."""
        if (stream := self.stream) is not None and not stream.available:
            return False
        if self._refused:
            return False
        if (health := self.coordinator.data) is not None and self._profile in health.down:
            return False  # the device answers, but not for this stream
        return super().available

    @override
    async def stream_source(self) -> str:
        """Return FFmpeg's URL for the camera, credentials included (a secret, never logged).

        The policy check and address pinning run every time: a hostname that
        now resolves outside the LAN yields an error, not a stream. The URL is
        the camera's loopback relay to the checked address (core/rtsp_guard),
        which lets no redirect send FFmpeg elsewhere.
        """
        try:
            if _go2rtc_elsewhere(self.hass):
                # The relay listens on this machine's loopback, which a go2rtc
                # server on another machine cannot reach (it would open its own
                # loopback). HA's own stream is still moved to the relay.
                return await self._client.direct_stream_url()
            return await self._client.stream_url()
        except LocalCamError as err:
            raise translated_error(err) from err

    @override
    async def async_create_stream(self) -> Stream | None:
        """Create the stream and watch it for authentication failures."""
        if self._removed:
            return None  # a removed entity starts no stream
        stream = await super().async_create_stream()
        if stream is None or self._removed:
            return None  # no source, or removed meanwhile (the removal stops the stream)
        # An existing stream may still play from where the host name used to point.
        try:
            await self._async_repin_stream(stream)
        except HomeAssistantError:
            if not self._is_removed():
                raise
        if self._is_removed():
            # Removed while the host was looked up (its client closed, maybe
            # failing the lookup): the removal stopped this stream and muted
            # its callback; a caller must not start it.
            return None
        stream.set_update_callback(self._async_stream_state_changed)
        # Probing off, as in LocalCam's own grabs: the codec parameters
        # come from the SDP. Safe here because the test before configure
        # decoded this very camera with the same options; it saves the
        # ~2 s libavformat spends analysing a live stream before the
        # first HLS segment (cast and more-info dialogs start that much sooner).
        stream.pyav_options.update(FAST_OPEN_OPTIONS)
        return stream

    def _is_removed(self) -> bool:
        """Whether the entity was removed (read anew after an await)."""
        return self._removed

    async def async_wait_until_serving(self, timeout: float) -> None:
        """Wait, bounded, until the camera answers; raise a translated error if it does not.

        Before a live start while nobody streams the camera
        (``CameraClient.wait_until_serving`` explains why).
        """
        try:
            await self._client.wait_until_serving(timeout)
        except LocalCamError as err:
            raise translated_error(err) from err

    async def _async_repin_stream(self, stream: Stream) -> None:
        """Point HA's stream at the address the camera's host now checks out at.

        Home Assistant asks ``stream_source`` once, when it creates the stream,
        and reconnects to that URL (pinned to one address) for as long as the
        stream lives. A camera configured by host name that moved would go on
        playing whatever device took its old address, while every check of
        LocalCam's looks at the new one. So the stream follows the checked
        address (``update_source`` restarts its worker there); for an address
        literal nothing ever changes.
        """
        try:
            pinned = await self._client.stream_url()
        except LocalCamError as err:
            raise translated_error(err) from err
        self._pin(stream, pinned)

    def _pin(self, stream: Stream, pinned: str) -> bool:
        """Make ``stream`` play from ``pinned`` (a secret); True if it already did.

        A worker that plays (or connects) restarts on the new URL at once
        (``update_source``). Otherwise the stream just takes the URL, which
        Home Assistant's worker reads at each start and each retry:
        - a worker that is not running starts there: ``update_source`` would
          leave its restart flag set, and the worker then treats the next stop
          as that restart and runs on (``_async_stop_stream`` explains it);
        - a worker that lost its camera (the stream is unavailable) is waiting
          out its restart backoff (10 s, then 10 s more per failure) and
          retries there: ``update_source`` would end that wait as a stop, and
          Home Assistant then drops the viewers' outputs with the worker,
          leaving the restart flag set as above.
        The stream's availability reaches the event loop from the worker's
        thread, a turn of the loop late: a restart in the instant after a drop
        can still meet the wait; a retry that has just begun on the old URL
        still reads as unavailable. So the relay to the old address closes
        too (``RtspGuard.retire``): such a retry fails there and the next one
        starts on the new URL; it never plays on from whatever device
        answers at the old address.
        """
        old = stream.source
        if old == pinned:
            return True
        if self.hass.is_stopping:
            # HA's stop is stopping this stream (_async_hass_stopping beside
            # it): a restart now would read as that stop's own restart, and the
            # stop would wait for ever on the worker (_async_stop_stream).
            return False
        LOGGER.info("%s: the stream follows its camera to a new address", self.entity_id)
        # No public "is running" in HA 2026.10; a later HA without this
        # attribute is taken as running: the stream follows its camera.
        worker: object = getattr(stream, "_thread", _ABSENT)
        running = worker is _ABSENT or (isinstance(worker, threading.Thread) and worker.is_alive())
        if running and stream.available:
            stream.update_source(pinned)
        else:
            stream.source = pinned
        self._client.guard.retire(old, keep=pinned)
        return False

    @callback
    def _handle_coordinator_update(self) -> None:
        """After each health check (which resolved the host anew), re-pin a running stream."""
        recovered = self.coordinator.last_update_success and not self._was_healthy
        self._was_healthy = self.coordinator.last_update_success
        super()._handle_coordinator_update()
        stream = self.stream
        if self._removed or not self.coordinator.last_update_success:
            return
        if recovered and (stream is None or not stream.outputs()):
            # A failed check may have stopped the stream (another device at
            # the address); a preloaded one comes back with the camera.
            self._async_schedule_preload()
        # The check resolved the camera's host and proved the device there:
        # the stream goes to that very address, not to a second lookup's answer.
        # (A profile on another host than the checked one is left to its own
        # stream's check, which runs whenever its worker reconnects.)
        checked = self.coordinator.data.target
        if stream is not None:
            try:
                pinned = self._client.pinned_url_at(checked)
            except LocalCamError as err:  # no relay port: the stream keeps its URL for now
                LOGGER.debug("%s: stream not re-pinned: %s", self.entity_id, err)
                pinned = None
            if pinned is not None and not self.hass.is_stopping:
                self._pin(stream, pinned)
        # Players outside HA's stream (go2rtc, HomeKit) hold the URL
        # stream_source gave them and reconnect with it: no relay to an
        # address the camera has left stays open for them. (Nothing is opened
        # here: a camera nobody watches keeps no relay.)
        self._client.retire_relays_off(checked)

    @callback
    def _async_stream_state_changed(self) -> None:
        """Write state; check the camera whenever the stream drops or reconnects.

        HA's stream worker reconnects by itself, without asking us; a
        reconnect may reach another device (a reused address) or a camera
        that now answers 401. So every change of the stream's state runs the
        health check (DESCRIBE + identity); a change during a check runs it
        once more afterwards, so none is missed.
        """
        self.async_write_ha_state()
        if self.stream is None or not self.stream.outputs():
            return  # stopped (nobody watching, or stopped by us): nothing reconnects
        if self._auth_check is not None:
            self._recheck = True
            return
        # Bound to the entry: unloading it cancels the check.
        task = self.coordinator.config_entry.async_create_background_task(
            self.hass, self._async_check_stream_peer(), f"{DOMAIN} stream check {self.entity_id}"
        )
        if not task.done():  # an eagerly finished check has already cleared _auth_check
            self._auth_check = task

    @callback
    def _async_redirect_refused(self, err: RedirectedError) -> None:
        """The relay refused a redirect sent to FFmpeg: stop the stream, show unavailable.

        The camera answers LocalCam's own check normally but sends its players
        elsewhere, so the health check alone would keep calling it healthy and
        HA's worker would keep reconnecting into the refusal. Unavailable for
        REFUSED_UNAVAILABLE; a still fails on its own (the grab gets the same
        refusal).
        """
        if self._removed:
            return
        LOGGER.debug("%s: %s", self.entity_id, err)
        self._refused = True
        if self._refusal_over is not None:
            self._refusal_over()
        self._refusal_over = async_call_later(
            self.hass, REFUSED_UNAVAILABLE, self._async_refusal_expired
        )
        self.async_write_ha_state()
        if (stream := self.stream) is not None and stream.outputs():
            self.coordinator.config_entry.async_create_background_task(
                self.hass, self._async_stop(stream), f"{DOMAIN} redirect {self.entity_id}"
            )

    @callback
    def _async_refusal_expired(self, _now: datetime) -> None:
        """One health interval after a refused redirect: available again if healthy."""
        self._refusal_over = None  # (cancelled on removal: the entity is still here)
        self._refused = False
        self.async_write_ha_state()
        # The refusal stopped the stream; a preloaded one comes back.
        self._async_schedule_preload()

    async def _async_check_stream_peer(self) -> None:
        """A 401 starts reauth; another device at the address stops the stream."""
        try:
            for _ in range(STREAM_RECHECKS):
                self._recheck = False
                try:
                    checked = await self._client.check_health()
                except InvalidAuthError:
                    LOGGER.warning(
                        "%s rejects its credentials; asking for new ones", self.entity_id
                    )
                    self.coordinator.config_entry.async_start_reauth(self.hass)
                except IdentityMismatchError, RedirectedError:
                    # Never let the worker reconnect to, and show, the other
                    # device; nor follow the camera's redirect (FFmpeg would,
                    # to wherever it points, unchecked).
                    if self.stream is not None:
                        await self._async_stop(self.stream)
                    await self.coordinator.async_request_refresh()
                    return
                except LocalCamError:
                    pass  # unreachable cameras are the health coordinator's business
                else:
                    # The check looked at where the host points now; so must the
                    # stream: that very address, not a second lookup's answer.
                    if (stream := self.stream) is not None:
                        with contextlib.suppress(LocalCamError):  # no relay port: next check
                            self._pin(stream, self._client.pinned_url(checked))
                if not self._recheck:
                    return
        finally:
            self._auth_check = None

    async def _async_stream_keyframe(self, pinned: str, limit: float) -> bytes | None:
        """Return a JPEG of the running stream's next keyframe, or None.

        Only used while a stream already runs for this camera (someone is
        watching), so no second RTSP session is opened. Only a stream that
        plays from ``pinned``, the address the fetch just checked, may give
        the still: one still on an older address is pointed there, and the
        caller grabs its own this time. Home Assistant's keyframe converter
        returns its previous image when a decode fails; that would be an old
        frame served as new, so an unchanged image object counts as no image
        here and the caller grabs its own, as it does on a Home Assistant
        whose converter no longer shows its image (_converter_image).
        """
        stream = self.stream
        if stream is None or not stream.available or not stream.outputs():
            return None
        if not self._pin(stream, pinned):
            return None
        if (previous := _converter_image(stream)) is _ABSENT:
            return None  # a later HA: no way to tell a new image, so none is taken
        if not self._stream_waits:
            # A fresh baseline: only the stream's moves during this wait count.
            self._stream_seen, self._stream_moved_at = _stream_progress(stream), None
        self._stream_waits += 1
        try:
            async with asyncio.timeout(min(_keyframe_wait(stream), limit)):
                image = await stream.async_get_image(wait_for_next_keyframe=True)
        except TimeoutError:
            return None
        finally:
            self._stream_waits -= 1
        if image is None or image is previous:
            return None
        return image

    def _stream_receiving_since(self) -> float | None:
        """When the running stream was last seen to move while a still waits on it, or None.

        A keyframe interval can outlast the stall time of a camera whose
        earlier stills came fast (a new RTSP session starts on a keyframe);
        the stream moving meanwhile is the camera sending, not a hang
        (SnapshotCache.get). Looked at when the still's waiters would give
        up, a stall floor apart: a move since the last look is stamped now,
        at most one look late. The wait itself stays bounded by
        _keyframe_wait and the fetch's time limit.
        """
        if not self._stream_waits or (stream := self.stream) is None:
            return None
        if (seen := _stream_progress(stream)) != self._stream_seen:
            self._stream_seen, self._stream_moved_at = seen, time.monotonic()
        return self._stream_moved_at

    @override
    async def async_camera_image(
        self, width: int | None = None, height: int | None = None
    ) -> bytes | None:
        """Return a fresh still of this camera, or raise a translated error."""
        snapshot = self.cached_snapshot(width, height) or await self.async_snapshot(width, height)
        return snapshot.jpeg

    @override
    async def handle_async_still_stream(
        self, request: web.Request, interval: float
    ) -> web.StreamResponse:
        """Serve HA's MJPEG view (``camera_proxy_stream``) from fresh stills; errors as errors.

        Home Assistant's version sends its 200 before the first still: a
        camera that fails then got a 200 with a cut-off body, and an error
        with a traceback in Home Assistant's log for every request (and for
        every stream a later still ends). Here the first still comes first
        (a failure is a 502 or 504, as LocalCam's own view answers), and a
        later failure ends the stream as a camera's end, which the viewer's
        client may reopen; no frame is ever repeated in place of a new one.
        """
        try:
            first: bytes | None = await self.async_camera_image()
        except HomeAssistantError as err:
            # A short key, never a URL or a secret (as LocalCam's own view answers).
            return web.Response(status=still_error_status(err), text=err.translation_key or "error")

        async def next_image() -> bytes | None:
            nonlocal first
            if first is not None:
                image, first = first, None
                return image
            try:
                return await self.async_camera_image()
            except HomeAssistantError as err:
                LOGGER.debug("%s: MJPEG stream ended: %s", self.entity_id, err.translation_key)
                return None

        return await async_get_still_stream(request, next_image, self.content_type, interval)

    def cached_snapshot(
        self, width: int | None = None, height: int | None = None
    ) -> Snapshot | None:
        """The fresh still the cache holds now, without awaiting, or None (then await one).

        A warm camera's hot path: the same checks as ``async_snapshot``
        (this camera, this source, within max age), no coroutine.
        """
        snapshot = self._snapshots.peek(width, height)
        return None if snapshot is None else self._own(snapshot)

    async def async_snapshot(self, width: int | None = None, height: int | None = None) -> Snapshot:
        """Return a fresh still with its provenance (LocalCam's own view uses this)."""
        try:
            snapshot = await self._snapshots.get(width, height)
        except InvalidAuthError as err:
            self.coordinator.config_entry.async_start_reauth(self.hass)
            raise translated_error(err) from err
        except LocalCamError as err:
            raise translated_error(err) from err
        return self._own(snapshot)

    def _own(self, snapshot: Snapshot) -> Snapshot:
        """The frame if it is this camera's; a frame stamped with another camera's id is refused.

        The entity's own check, when the frame is served, independent of how
        the frame was obtained or cached.
        """
        if snapshot.camera_id != self._frame_key:
            raise HomeAssistantError(translation_domain=DOMAIN, translation_key="foreign_frame")
        return snapshot

    def provenance_headers(self, snapshot: Snapshot) -> Mapping[str, str]:
        """The provenance headers of one of this camera's frames, built once per frame.

        LocalCam's view sends them with every 200; a warm camera serves one
        frame to many requests, so they are kept for the last frame served
        (by its hash and capture instant, never by holding the JPEG).
        """
        key = (snapshot.sha256, snapshot.captured_at)
        if self._provenance is not None and self._provenance[0] == key:
            return self._provenance[1]
        headers = {
            HEADER_CAMERA: self.unique_id or "",
            HEADER_CAPTURED_AT: snapshot.captured_wall.isoformat(),
            HEADER_SOURCE: snapshot.source.value,
            "ETag": f'"{snapshot.sha256}"',
            "Cache-Control": "no-store",
        }
        self._provenance = (key, headers)
        return headers
