"""Fetch one still from one camera: the single entry point for frames.

Order of sources: the camera's own snapshot URL when configured; else a
keyframe of the live stream Home Assistant already runs for this camera (no
second RTSP session); else a one-shot RTSP keyframe grab. Each returned
``Snapshot`` is fresh (fetched for this call), validated (core.jpeg) and
stamped with the camera's id and source fingerprint, and with the time it is
aged from (``captured_at``): for the snapshot URL, when the camera's response
headers arrived, so a slowly trickling body counts against max age. Nothing
here ever falls back to an older frame: a failure is an exception.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
import hashlib
from ipaddress import IPv4Address, IPv6Address
from math import ceil
import time
from typing import Final

import aiohttp
import yarl

from . import http, jpeg
from .errors import (
    CameraTimeoutError,
    CannotConnectError,
    InvalidImageError,
    LocalCamError,
    ReplyTooLargeError,
    StreamRefusedError,
)
from .identity import Identity, neighbour_mac, touch
from .models import CameraSource, Snapshot, SnapshotSource, StreamInfo
from .netpolicy import NetPolicy, Target
from .rtsp import RtspAuthMemory, WarmGrabber, async_grab_keyframe, describe
from .rtsp_guard import RtspGuard

STREAM_SCHEMES: Final = frozenset({"rtsp", "rtsps"})
# What a camera that is down or still booting gives (subclasses are refusals).
# An RTSP error status (StreamRefusedError: a 503 while it boots) is one of them.
_UNREACHABLE: Final = frozenset({CannotConnectError, StreamRefusedError, CameraTimeoutError})
# How long a one-shot RTSP session stays open after a still, so a burst of
# dashboard requests reuses it instead of a new handshake per request.
WARM_LINGER: Final = 5.0
# Below Home Assistant's 10 s camera image timeout, so our own error wins.
DEFAULT_TIMEOUT: Final = 9.0
SNAPSHOT_SCHEMES: Final = frozenset({"http", "https"})
# A live start's wait for a camera that is down: one DESCRIBE per interval,
# each bounded by the try timeout (a camera that accepts and never answers).
SERVING_INTERVAL: Final = 0.5
SERVING_TRY_TIMEOUT: Final = 2.0
# Stills up to this size are checked and hashed in the event loop (tens of
# microseconds); larger ones, and any that need the /proc MAC lookup, in a thread.
INLINE_FINISH_BYTES: Final = 256 * 1024
# Credentials go to a camera pinned by its MAC only once the device at its
# address has shown that MAC (see guard_credentials). A look younger than this
# (each still's own check renews it) lets them go at once; an older one, or
# none, costs a bare connection first.
LINK_TRUST: Final = 10.0
# Where and when an address was shown to be the camera (by the link or the device).
type _Look = tuple[IPv4Address | IPv6Address, float]


def _recent(look: _Look | None, address: IPv4Address | IPv6Address) -> bool:
    """Whether ``look`` showed the camera at ``address`` within LINK_TRUST."""
    return look is not None and look[0] == address and time.monotonic() - look[1] < LINK_TRUST


# Called with the stream URL pinned to the address just checked (a secret) and
# the most seconds it may wait: a JPEG of the running stream's next keyframe,
# or None (Home Assistant runs no stream for this camera now, or no keyframe
# came in time). The provider must return None unless its stream plays from
# exactly that URL: a stream opened on an address the camera's host name no
# longer resolves to plays another device.
type KeyframeProvider = Callable[[str, float], Awaitable[bytes | None]]
# Of a still's time, what a keyframe wait leaves for a grab of its own (a
# camera that sends a keyframe as a session starts answers well within it).
GRAB_RESERVE: Final = 2.0
# Asks the device at the camera's address for its identity (MAC/serial/UUID).
# Called with ``whole=True`` by the health check (once a minute: the device's
# whole description, URIs included) and ``whole=False`` after each fetch (who
# the device is, nothing more: a few light requests).
type IdentityProbe = Callable[[bool], Awaitable[Identity]]


class CameraClient:
    """All network I/O for one camera, always through the LAN policy."""

    def __init__(
        self, session: aiohttp.ClientSession, policy: NetPolicy, source: CameraSource
    ) -> None:
        """Bind the shared HTTP session, the policy and the camera's source."""
        self._session = session
        self.policy = policy
        self.source = source
        self.grabber = WarmGrabber(transport=source.ffmpeg_transport, linger=WARM_LINGER)
        # FFmpeg (the grabber's and Home Assistant's stream) reaches the camera
        # only through this loopback relay: it follows no redirect elsewhere,
        # and relays nothing to a device that is not this camera.
        self.guard = RtspGuard(link_check=self._relay_link_check)
        # Where and when the link last showed the camera's MAC (guard_credentials).
        self._link_seen: _Look | None = None
        # Where and when the ONVIF device last said it is this camera (_relay_link_check).
        self._device_confirmed: _Look | None = None
        # One camera, one auth scheme: later stills answer its challenge at once.
        self._auth_memory = http.AuthMemory()
        # Likewise its RTSP challenge: a health check is then one DESCRIBE.
        self._rtsp_auth = RtspAuthMemory()
        # Set by the glue while Home Assistant runs a stream for this camera.
        self.keyframe_provider: KeyframeProvider | None = None
        # Set by the glue: when that stream last showed the camera sending,
        # while a still waits on it (receiving_since).
        self.stream_receiving_since: Callable[[], float | None] | None = None
        # Set by the glue for cameras that can say who they are (ONVIF).
        self.identity_probe: IdentityProbe | None = None
        # Set by the glue for ONVIF cameras: the whole read of the device's
        # description when it is due, for what it reports (addresses outside
        # the LAN); a health check runs it where the link's MAC proved the camera.
        self.report_probe: Callable[[], Awaitable[None]] | None = None
        # Set by the glue: the camera's Orientation setting now (jpeg.orient_jpeg).
        self.orientation: Callable[[], int] | None = None
        self.timeout = DEFAULT_TIMEOUT
        # A warm RTSP session's latest keyframe is reused while it is at most
        # this old (the glue sets half the cache's max age, so a reused frame
        # still has half its life); otherwise the next keyframe is awaited.
        self.reuse_within = 0.0

    async def close(self) -> None:
        """Close the relay and the warm RTSP session, if any (entry unload, flow end)."""
        # The relay first: its sessions end at once, so a grab thread blocked
        # in FFmpeg on one returns now rather than at its timeout.
        await self.guard.close()
        await self.grabber.close()

    async def stream_target(self) -> Target:
        """Check the stream URL against the policy and pin its address."""
        return await self.policy.check(self.source.stream_url, schemes=STREAM_SCHEMES)

    async def stream_url(self) -> str:
        """Return the pinned stream URL with credentials (secret: never log it)."""
        return self.pinned_url(await self.stream_target())

    async def direct_stream_url(self) -> str:
        """The stream URL at the checked address itself, not through the relay (secret).

        Only for a client on another machine, which cannot reach this one's
        loopback relay (an external go2rtc server).
        """
        target = await self.stream_target()
        return target.pinned_url(self.source.username, self.source.password)

    def pinned_url(self, target: Target) -> str:
        """FFmpeg's URL for a checked target, with credentials (secret).

        For ``rtsp://`` it is the guard's loopback relay to exactly that
        address (one per address, so a new address is a new URL).
        """
        return self.guard.url(
            target,
            self.source.username,
            self.source.password,
            verify_ssl=self.source.verify_ssl,
            udp=self.source.relay_udp,
        )

    def pinned_url_at(self, checked: Target) -> str | None:
        """The stream URL aimed at an address checked for its host (secret), else None.

        ``checked`` comes from a check of this camera (maybe of another
        profile's URL on the same host); reusing its address, rather than
        resolving again, keeps the stream where the check looked.
        """
        target = checked.for_url(self.source.stream_url)
        return None if target is None else self.pinned_url(target)

    def retire_relays_off(self, checked: Target) -> int:
        """Close the stream's relays to any address but the one a check just proved.

        Opens nothing. ``checked`` as for ``pinned_url_at``; a profile on
        another host than the checked one keeps its relays (its own checks
        decide). Returns how many relays were closed.
        """
        target = checked.for_url(self.source.stream_url)
        if target is None:
            return 0
        return self.guard.retire_except(target.address, target.port)

    async def probe(self, timeout: float) -> StreamInfo:
        """Test before configure: decode the first video frame of the stream."""
        url = await self.stream_url()
        started = time.monotonic()
        try:
            frame = await async_grab_keyframe(
                url, transport=self.source.ffmpeg_transport, timeout=timeout, encode=False
            )
        except LocalCamError as err:
            self._raise_refusal(err, url, started)
            raise
        return frame.info

    def _raise_refusal(self, err: LocalCamError, url: str, started: float) -> None:
        """Raise why the guard refused a failed FFmpeg session (redirect, certificate), if it did.

        FFmpeg only sees the guard's 502 or a closed connection; the guard knows why.
        """
        if (refused := self.guard.refused_since(url, started)) is not None:
            raise refused from err

    async def check_health(self, timeout: float = 5.0) -> Target:
        """One light DESCRIBE: reachable, authorised, serving video, same device.

        Return the target checked: the address the stream URL resolved to now.
        """
        target = await self.stream_target()
        await self._describe(target, timeout)
        now = time.monotonic()
        raw = _Raw(b"", None, SnapshotSource.RTSP_GRAB, now, target.address, target.host)
        await self._check_device_identity(raw, whole=True)
        if self._needs_link_check(raw):
            await asyncio.get_running_loop().run_in_executor(
                None, self.check_link_identity, target.address, target.host
            )
        return target

    async def wait_until_serving(self, timeout: float) -> None:
        """Return once the camera answers a DESCRIBE; raise why not after ``timeout``.

        For a live start while nobody streams the camera: Home Assistant's
        worker, started against a camera that is down (rebooting, a Wi-Fi
        drop), fails and then waits 10 s before it tries again, so a camera
        back 2 s later would play 12 s later. Waiting here, the worker starts
        once the camera answers. Only an unreachable or silent camera is
        waited for; a refusal (401, no video, a redirect, a certificate) is
        raised at once. Bounded by ``timeout`` and in count (one try per
        SERVING_INTERVAL). No identity check: the stream's own check (on its
        start) makes it, as for any start.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: LocalCamError = CameraTimeoutError()
        for _ in range(ceil(timeout / SERVING_INTERVAL) + 1):
            tried = loop.time()
            if (remaining := deadline - tried) <= 0:
                break
            try:
                await self._describe(
                    await self.stream_target(), min(remaining, SERVING_TRY_TIMEOUT)
                )
            except (CannotConnectError, CameraTimeoutError) as err:
                if type(err) not in _UNREACHABLE:
                    raise  # a redirect, a certificate, a reply too large: a refusal
                last = err
            else:
                return
            await asyncio.sleep(max(0.0, min(tried + SERVING_INTERVAL, deadline) - loop.time()))
        raise last

    async def _describe(self, target: Target, timeout: float) -> None:
        """One DESCRIBE of the stream, with its credentials (its challenge remembered)."""

        async def before_send() -> None:
            await self.guard_credentials(target.address, target.port, target.host, connected=True)

        await describe(
            target,
            username=self.source.username,
            password=self.source.password,
            verify_ssl=self.source.verify_ssl,
            timeout=timeout,
            auth_memory=self._rtsp_auth,
            before_send=before_send,
        )

    async def guard_credentials(
        self,
        address: IPv4Address | IPv6Address | None,
        port: int,
        host: str,
        *,
        connected: bool,
        timeout: float = 5.0,
    ) -> None:
        """Before credentials go to ``address``: the device there shows the camera's MAC.

        The check each connection makes after a still or a health check comes
        too late for the credentials: by then a device that took the camera's
        address (a reused DHCP lease) has been sent them, at every still and
        every minute's check (with Basic, the password itself). So for a
        camera pinned by MAC, with credentials, this runs first, on every
        path that sends them: the health check's DESCRIBE and the relay's
        sessions once connected (``connected``: the kernel's neighbour entry is
        fresh), and the snapshot URL's requests before connecting, after a
        bare connection (nothing sent) unless the link showed the camera's
        MAC within LINK_TRUST. So at most the requests of those seconds
        reach a device that has only just taken the address. A device not
        on this link has no neighbour entry: the ONVIF check covers it.
        Raises IdentityMismatchError.
        """
        source = self.source
        if address is None or not source.identity.mac:
            return
        if address.version == 6 and self.identity_probe is not None:
            return  # (IPv6 neighbours are not read: the ONVIF check asks the device)
        if source.username is None and source.password is None:
            return  # nothing secret to send; each connection's own check still runs
        if not connected:
            if _recent(self._link_seen, address):
                return
            await touch(address, port, timeout)
        await asyncio.get_running_loop().run_in_executor(
            None, self.check_link_identity, address, host
        )

    async def _relay_link_check(self, address: IPv4Address | IPv6Address, port: int) -> None:
        """The relay's check of a session's connection, before it relays a byte.

        Home Assistant's stream (and go2rtc, HomeKit's FFmpeg) has no check
        of its own after each connection, as a still has: a device that is
        not this camera gets nothing relayed, neither the camera's
        credentials nor, back, its media under this camera's name. A device
        the link shows is compared by its MAC. An ONVIF device it does not
        show (on another subnet, a camera VLAN; IPv6) is asked who it is,
        unless it said so at this address within LINK_TRUST (a still's or a
        health check's question): a session then waits for that answer.
        """
        host = yarl_host(self.source.stream_url)
        source = self.source
        if source.identity.mac and source.username is None and source.password is None:
            # No credential to keep from the device, but its media.
            await asyncio.get_running_loop().run_in_executor(
                None, self.check_link_identity, address, host
            )
        else:
            await self.guard_credentials(address, port, host, connected=True)
        if not _recent(self._device_confirmed, address):
            # An ONVIF camera the link shows no MAC for is asked; any other
            # is not (see _check_device_identity: the link check above was it).
            raw = _Raw(b"", None, SnapshotSource.RTSP_GRAB, time.monotonic(), address, host)
            await self._check_device_identity(raw, whole=False)

    def _needs_link_check(self, raw: _Raw) -> bool:
        """Whether finishing this still reads the kernel's neighbour table (blocking)."""
        return (
            raw.address is not None
            and bool(self.source.identity.mac)
            and self._is_camera_host(raw.host)
        )

    def _is_camera_host(self, host: str) -> bool:
        """Whether ``host`` is the camera's own (its stream's), which its MAC pins.

        A snapshot URL on another host (an NVR, a go2rtc or Frigate server
        that serves this camera's stills) is another device by the user's own
        choice: the camera's MAC says nothing about it, and comparing the two
        would refuse every still (and its credentials) as a swap.
        """
        return host == yarl_host(self.source.stream_url)

    def check_link_identity(self, address: IPv4Address | IPv6Address | None, host: str) -> None:
        """Compare the MAC now answering at ``address`` with the configured one.

        Runs after every connection (blocking /proc read: call from a thread).
        Cameras not on the same link (or on loopback) have no neighbour entry,
        and are pinned by ONVIF identity at setup and health checks instead.
        """
        expected = self.source.identity
        if address is None or not expected.mac:
            return
        seen = neighbour_mac(address)
        if seen is None and self.identity_probe is None and not on_this_host(address):
            # Pinned by its MAC alone (no ONVIF check asks the device), and the
            # link shows none here (an address routed to, or IPv6): nothing
            # shows the device is this camera, so it is not taken for it.
            raise CannotConnectError(
                f"the link shows no MAC for {host}: the device there is not shown to be this camera"
            )
        expected.check(Identity(mac=seen), host)
        self._link_seen = (address, time.monotonic())

    def receiving_since(self) -> float | None:
        """When the camera last sent to a session a still waits on (monotonic), or None.

        LocalCam's own RTSP session (its last packet), or Home Assistant's
        stream while a still waits for its next keyframe (the glue's
        ``stream_receiving_since``). A still waiting there (up to one keyframe
        interval) waits on a camera that answers: no stall (SnapshotCache.get).
        """
        own = self.grabber.last_packet_at if self.grabber.active else None
        seen = self.stream_receiving_since() if self.stream_receiving_since is not None else None
        return max((t for t in (own, seen) if t is not None), default=None)

    async def fetch_snapshot(self, *, timeout: float | None = None) -> Snapshot:
        """Fetch a fresh full-size still from this camera, with provenance."""
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        keyframe = self.keyframe_provider
        try:
            async with asyncio.timeout(timeout):
                raw = await self._fetch_raw(keyframe, timeout)
                await self._check_device_identity(raw, whole=False)
                # Wall time of the same instant as raw.received (the capture time).
                wall = datetime.now(UTC) - timedelta(seconds=time.monotonic() - raw.received)
                exif = _exif_turn(raw)
                if (
                    len(raw.body) <= INLINE_FINISH_BYTES
                    and not self._needs_link_check(raw)
                    and self._turn(raw) == 1
                    and exif == 1
                    and jpeg.loaded()
                ):
                    # A header parse and a hash of a small JPEG cost less than
                    # a thread hop, which under a burst of viewers waits behind
                    # every request the loop has queued.
                    return self._finish(raw, wall, exif)
                return await loop.run_in_executor(None, self._finish, raw, wall, exif)
        except TimeoutError:
            raise CameraTimeoutError("no still within the time limit") from None

    async def _check_device_identity(self, raw: _Raw, *, whole: bool) -> None:
        """Where the MAC is not visible, ask the device who it is after each fetch.

        Asked AFTER the frame arrived: if the device was swapped before or
        during the fetch, the answer comes from the new device and the frame
        is refused. Single flight upstream bounds this to one light request
        per fetch. Cameras on this link are checked by MAC in _finish instead.
        """
        if self.identity_probe is None or not self.source.identity.known:
            return
        loop = asyncio.get_running_loop()
        if raw.address is not None and self.source.identity.mac:
            seen = await loop.run_in_executor(None, neighbour_mac, raw.address)
            if seen is not None:
                if whole and self.report_probe is not None and seen == self.source.identity.mac:
                    await self.report_probe()
                return
        try:
            observed = await self.identity_probe(whole)
            self.source.identity.check(observed, raw.host)
            if not self.source.identity.confirms(observed):
                # Every identity query failed or came back empty: the device did
                # not show it is this camera, so its frame is not served as this
                # camera's (an impostor need not answer them at all).
                raise CannotConnectError(f"the device at {raw.host} did not say which camera it is")
        except BaseException:
            # A newer answer that is not "this camera" (another device, none):
            # the relay no longer trusts an older one (_relay_link_check).
            self._device_confirmed = None
            raise
        if raw.address is not None:
            self._device_confirmed = (raw.address, time.monotonic())

    async def _fetch_raw(self, keyframe: KeyframeProvider | None, timeout: float) -> _Raw:
        """Get JPEG bytes, when and from where they arrived, from the best source."""
        if self.source.snapshot_url:
            try:
                reply = await http.fetch(
                    self._session,
                    self.policy,
                    self.source.snapshot_url,
                    username=self.source.username,
                    password=self.source.password,
                    verify_ssl=self.source.verify_ssl,
                    timeout=timeout,
                    max_bytes=jpeg.MAX_JPEG_BYTES,
                    auth_memory=self._auth_memory,
                    before_credentials=self._before_http_credentials,
                    check_content_type=jpeg.check_content_type,
                )
            except ReplyTooLargeError as err:
                # Cut off at the cap, the same refusal validate_jpeg makes.
                raise InvalidImageError(
                    f"larger than {jpeg.MAX_JPEG_BYTES} bytes", kind="too_large"
                ) from err
            # Aged from when the camera began answering, not from the body's
            # last byte: a body that trickles in for seconds is that much
            # older when served, and the cache refuses it once past max age.
            # (A camera slow to encode before it answers is not penalised.)
            return _Raw(
                reply.body,
                reply.content_type,
                SnapshotSource.SNAPSHOT_URL,
                reply.answered_at,
                reply.address,
                yarl_host(self.source.snapshot_url),
            )
        # One lookup per still: the frame is stamped with this address, which
        # the identity checks inspect, so it must come from exactly this
        # address. Both sources get the URL pinned to it, never a new lookup
        # (with round-robin or flapping DNS that could reach another device),
        # and the warm grabber serves only frames of a session on that URL.
        target = await self.stream_target()
        pinned = self.pinned_url(target)
        if (
            keyframe is not None
            and (image := await keyframe(pinned, max(timeout - GRAB_RESERVE, 0.0))) is not None
        ):
            kind, received = SnapshotSource.STREAM_KEYFRAME, time.monotonic()
        else:
            started = time.monotonic()
            try:
                frame = await self.grabber.grab(
                    pinned,
                    timeout=max(timeout - 0.5, 1.0),
                    fresh_within=self.reuse_within,
                )
            except LocalCamError as err:
                self._raise_refusal(err, pinned, started)
                raise
            image, kind, received = frame.jpeg, SnapshotSource.RTSP_GRAB, frame.received_at
        return _Raw(image, None, kind, received, target.address, target.host)

    async def _before_http_credentials(self, target: Target) -> None:
        """The snapshot URL's check before a request that may carry credentials."""
        if self._is_camera_host(target.host):
            await self.guard_credentials(target.address, target.port, target.host, connected=False)

    def _finish(self, raw: _Raw, wall: datetime, exif: int) -> Snapshot:
        """Check identity, validate and stamp a still.

        In the executor; inline for small stills that need no /proc read once
        libturbojpeg is loaded (fetch_snapshot decides).
        """
        if self._is_camera_host(raw.host):
            self.check_link_identity(raw.address, raw.host)
        width, height = jpeg.validate_jpeg(raw.body, raw.content_type)
        body = raw.body
        # A snapshot URL's JPEG may say how to show it (EXIF Orientation):
        # browsers honour it on the camera's own JPEG, but no copy LocalCam
        # encodes (card sizes, a turned still) carries it, so it is applied
        # once here and every copy shows the same way up.
        if (turn := self._turn(raw)) != 1 or exif != 1:
            body, width, height = jpeg.orient_jpeg(body, turn, exif=exif)
        return Snapshot(
            camera_id=self.source.camera_id,
            fingerprint=self.source.fingerprint,
            source=raw.kind,
            jpeg=body,
            width=width,
            height=height,
            captured_at=raw.received,
            captured_wall=wall,
            sha256=hashlib.sha256(body).hexdigest(),
        )

    def _turn(self, raw: _Raw) -> int:
        """How to turn this still (1: as it is): as the camera's Orientation setting says.

        A keyframe of Home Assistant's own stream comes turned already.
        """
        if self.orientation is None or raw.kind is SnapshotSource.STREAM_KEYFRAME:
            return 1
        return self.orientation()


def _exif_turn(raw: _Raw) -> int:
    """The EXIF Orientation of a snapshot URL's JPEG (1 for frames LocalCam or HA encoded)."""
    return jpeg.exif_orientation(raw.body) if raw.kind is SnapshotSource.SNAPSHOT_URL else 1


@dataclass(frozen=True, slots=True)
class _Raw:
    """Unvalidated bytes of a still and where and when they came from.

    ``received`` (monotonic) is the time the still is aged from: an HTTP
    answer's headers, a grabbed keyframe's packet, a stream keyframe's arrival.
    """

    body: bytes
    content_type: str | None
    kind: SnapshotSource
    received: float
    address: IPv4Address | IPv6Address | None
    host: str


def on_this_host(address: IPv4Address | IPv6Address) -> bool:
    """Whether ``address`` is this machine's own (loopback): no link, no other device there.

    A seam of its own: the tests' loopback addresses stand for LAN ones.
    """
    return address.is_loopback


def yarl_host(url: str) -> str:
    """The host part of a URL, for messages (never credentials or query)."""
    return yarl.URL(url).host or ""
