"""Fetch one still from one camera: the single entry point for frames.

Order of sources: the camera's own snapshot URL when configured; else a
keyframe of the live stream Home Assistant already runs for this camera (no
second RTSP session); else a one-shot RTSP keyframe grab. Each returned
``Snapshot`` is fresh (fetched for this call), validated (core.jpeg) and
stamped with the camera's id and source fingerprint. Nothing here ever falls
back to an older frame: a failure is an exception.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
import hashlib
import time
from typing import Final

import aiohttp

from . import http, jpeg
from .errors import CameraTimeoutError
from .models import CameraSource, Snapshot, SnapshotSource, StreamInfo
from .netpolicy import NetPolicy, Target
from .rtsp import WarmGrabber, async_grab_keyframe, describe

STREAM_SCHEMES: Final = frozenset({"rtsp", "rtsps"})
# How long a one-shot RTSP session stays open after a still, so a burst of
# dashboard requests reuses it instead of a new handshake per request.
WARM_LINGER: Final = 5.0
# Below Home Assistant's 10 s camera image timeout, so our own error wins.
DEFAULT_TIMEOUT: Final = 9.0
SNAPSHOT_SCHEMES: Final = frozenset({"http", "https"})

# Returns a JPEG of the running stream's next keyframe, or None when Home
# Assistant runs no stream for this camera right now.
type KeyframeProvider = Callable[[], Awaitable[bytes | None]]


class CameraClient:
    """All network I/O for one camera, always through the LAN policy."""

    def __init__(
        self, session: aiohttp.ClientSession, policy: NetPolicy, source: CameraSource
    ) -> None:
        """Bind the shared HTTP session, the policy and the camera's source."""
        self._session = session
        self.policy = policy
        self.source = source
        self.grabber = WarmGrabber(transport=source.rtsp_transport, linger=WARM_LINGER)
        # Set by the glue while Home Assistant runs a stream for this camera.
        self.keyframe_provider: KeyframeProvider | None = None
        self.timeout = DEFAULT_TIMEOUT

    async def close(self) -> None:
        """Close the warm RTSP session, if any (entry unload)."""
        await self.grabber.close()

    async def stream_target(self) -> Target:
        """Check the stream URL against the policy and pin its address."""
        return await self.policy.check(self.source.stream_url, schemes=STREAM_SCHEMES)

    async def stream_url(self) -> str:
        """Return the pinned stream URL with credentials (secret: never log it)."""
        target = await self.stream_target()
        return target.pinned_url(self.source.username, self.source.password)

    async def probe(self, timeout: float) -> StreamInfo:
        """Test before configure: decode the first video frame of the stream."""
        url = await self.stream_url()
        frame = await async_grab_keyframe(
            url, transport=self.source.rtsp_transport, timeout=timeout, encode=False
        )
        return frame.info

    async def check_health(self, timeout: float = 5.0) -> None:
        """One light DESCRIBE: reachable, authorised and serving video."""
        await describe(
            await self.stream_target(),
            username=self.source.username,
            password=self.source.password,
            verify_ssl=self.source.verify_ssl,
            timeout=timeout,
        )

    async def fetch_snapshot(self, *, timeout: float | None = None) -> Snapshot:
        """Fetch a fresh full-size still from this camera, with provenance."""
        loop = asyncio.get_running_loop()
        timeout = self.timeout if timeout is None else timeout
        keyframe = self.keyframe_provider
        try:
            async with asyncio.timeout(timeout):
                body, content_type, kind, received = await self._fetch_raw(keyframe, timeout)
                # Wall time of the same instant the bytes arrived.
                wall = datetime.now(UTC) - timedelta(seconds=time.monotonic() - received)
                return await loop.run_in_executor(
                    None, self._finish, body, content_type, kind, received, wall
                )
        except TimeoutError:
            raise CameraTimeoutError("no still within the time limit") from None

    async def _fetch_raw(
        self, keyframe: KeyframeProvider | None, timeout: float
    ) -> tuple[bytes, str | None, SnapshotSource, float]:
        """Get JPEG bytes, and when they arrived, from the best available source."""
        if self.source.snapshot_url:
            reply = await http.fetch(
                self._session,
                self.policy,
                self.source.snapshot_url,
                username=self.source.username,
                password=self.source.password,
                verify_ssl=self.source.verify_ssl,
                timeout=timeout,
                max_bytes=jpeg.MAX_JPEG_BYTES,
            )
            return (
                reply.body,
                reply.content_type,
                SnapshotSource.SNAPSHOT_URL,
                time.monotonic(),
            )
        if keyframe is not None and (image := await keyframe()) is not None:
            return image, None, SnapshotSource.STREAM_KEYFRAME, time.monotonic()
        frame = await self.grabber.grab(self.stream_url, timeout=max(timeout - 0.5, 1.0))
        return frame.jpeg, None, SnapshotSource.RTSP_GRAB, frame.received_at

    def _finish(
        self,
        body: bytes,
        content_type: str | None,
        kind: SnapshotSource,
        received: float,
        wall: datetime,
    ) -> Snapshot:
        """Validate and stamp a still (runs in the executor)."""
        width, height = jpeg.validate_jpeg(body, content_type)
        return Snapshot(
            camera_id=self.source.camera_id,
            fingerprint=self.source.fingerprint,
            source=kind,
            jpeg=body,
            width=width,
            height=height,
            captured_at=received,
            captured_wall=wall,
            sha256=hashlib.sha256(body).hexdigest(),
        )
