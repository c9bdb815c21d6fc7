"""A per-camera still cache that cannot cross cameras or go stale in silence.

Guarantees, and where each is enforced:
- One cache object per camera; it stores and serves only frames whose
  ``camera_id`` and ``fingerprint`` equal its own, checked when a frame is
  served (``_fresh``), not only when stored. A new source (URL, credentials,
  identity) means a new fingerprint, so ``rebind`` empties the cache.
- Single flight: concurrent requests for one camera share one upstream fetch;
  every waiter gets that fetch's frame or its error. A waiter that gives up
  (client gone) does not cancel the fetch for the others.
- Honest age: a frame older than ``max_age`` is never returned; there is no
  fallback to an older frame anywhere: a failed fetch raises to every waiter.
  Age counts from the frame's ``captured_at``, which the fetch (core.snapshot)
  sets to when the camera began answering, so a fetch that outlives max age
  (a body trickling in) yields ``CameraTimeoutError`` (``timeout``), not a frame.
- Sizes: a requested width/height is scaled from the camera's full frame in
  the executor and cached per size with the same provenance; it never causes
  a second upstream fetch (``jpeg.scale_jpeg`` sizes it so that HA's
  camera_proxy does not scale it again).
- Isolation: caches share nothing, so a hanging camera delays only its own
  waiters (its fetch is bounded by the fetch function's own timeout).
- Unload: ``close`` ends every fetch in flight and hands each waiter
  ``CameraUnloadedError`` (a LocalCam error, so views answer with an error
  status), never a CancelledError it did not ask for: only a waiter whose own
  task is cancelled sees CancelledError. After ``close``, ``get`` raises the
  same error at once and starts no fetch (no network, no RTSP session).
"""

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
import hashlib
import time
from typing import Any, Final

from . import jpeg
from .errors import CameraTimeoutError, CannotConnectError, InvalidImageError, LocalCamError
from .models import Snapshot

# Dashboards request a handful of card sizes; bound the per-size entries so a
# client iterating sizes cannot grow memory.
MAX_SIZES: Final = 8

type Size = tuple[int, int] | None
type FetchFull = Callable[[], Awaitable[Snapshot]]


@dataclass(slots=True)
class CacheStats:
    """Counters shown in diagnostics (never image bytes)."""

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    upstream_fetches: int = 0
    scaled: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    last_capture: float | None = None  # monotonic

    def as_dict(self, now: float) -> dict[str, Any]:
        """Return a JSON-friendly view."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "coalesced_waiters": self.coalesced,
            "upstream_fetches": self.upstream_fetches,
            "scaled": self.scaled,
            "rejected_images": dict(self.rejected),
            "errors": dict(self.errors),
            "last_capture_age_seconds": (
                round(now - self.last_capture, 3) if self.last_capture is not None else None
            ),
        }


class CameraUnloadedError(CannotConnectError):
    """The camera's entry unloaded (reload or removal): no still is coming.

    A ``cannot_connect`` error (translated, like every LocalCam error), so a
    request caught by the unload gets an answer, not a dropped connection.
    """

    def __init__(self) -> None:
        """Say why, for logs; the translation needs no placeholder."""
        super().__init__("the camera was unloaded while a still was requested")


class SnapshotCache:
    """Stills of ONE camera, keyed by requested size."""

    def __init__(
        self,
        camera_id: str,
        fingerprint: str,
        fetch: FetchFull,
        *,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind the camera's identity, its full-frame fetch and the max age."""
        self.camera_id = camera_id
        self.fingerprint = fingerprint
        self.max_age = max_age
        self.stats = CacheStats()
        self._fetch = fetch
        self._clock = clock
        # The full frame is kept apart from the scaled copies, so that cycling
        # through card sizes never evicts it (which would refetch upstream).
        self._full_frame: Snapshot | None = None
        self._frames: OrderedDict[tuple[int, int], Snapshot] = OrderedDict()
        self._inflight: dict[Size, asyncio.Future[Snapshot]] = {}
        # Every producer and the future it completes, also those ``rebind``
        # dropped from ``_inflight``: ``close`` must answer all their waiters.
        self._tasks: dict[asyncio.Task[None], asyncio.Future[Snapshot]] = {}
        self._closed = False

    def rebind(self, fingerprint: str, fetch: FetchFull) -> None:
        """Switch to a new source: everything cached or in flight is dropped."""
        self.fingerprint = fingerprint
        self._fetch = fetch
        self._full_frame = None
        self._frames.clear()
        self._inflight.clear()

    def _fresh(self, frame: Snapshot | None) -> bool:
        """Whether a frame may be served now: this camera, this source, young."""
        return (
            frame is not None
            and frame.camera_id == self.camera_id
            and frame.fingerprint == self.fingerprint
            and self._clock() - frame.captured_at <= self.max_age
        )

    async def get(self, width: int | None = None, height: int | None = None) -> Snapshot:
        """Return a still no older than max age, fetching once for all waiters."""
        # HA's camera_proxy hands over any integer it parsed: a size that is
        # not positive asks for nothing smaller than the camera's own frame.
        size: Size = (width, height) if width and height and width > 0 and height > 0 else None
        if self._closed:
            # A request that found the entity just before unload: no fetch on
            # a closed client (it would reopen a warm RTSP session).
            raise CameraUnloadedError
        frame = self._lookup(size)
        if frame is not None and self._fresh(frame):
            self.stats.hits += 1
            return frame
        if (pending := self._inflight.get(size)) is not None:
            self.stats.coalesced += 1
        else:
            self.stats.misses += 1
            pending = self._start(size)
        # shield: a waiter that is cancelled (viewer closed the card) must not
        # cancel the fetch other viewers are waiting on. The shared future is
        # never cancelled (``close`` fails it), so CancelledError here means
        # this waiter itself was cancelled.
        frame = await asyncio.shield(pending)
        if not self._fresh(frame):
            # The source changed while we waited, or the fetch itself outlived
            # max age (the camera began answering longer ago than that, e.g.
            # a slowly trickling body): never serve it as current.
            self.stats.errors["stale"] += 1
            raise CameraTimeoutError("the still expired before it could be served")
        return frame

    def _start(self, size: Size) -> asyncio.Future[Snapshot]:
        """Start the one fetch for ``size`` and register it as in flight."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Snapshot] = loop.create_future()
        self._inflight[size] = future
        fingerprint = self.fingerprint
        task = loop.create_task(self._produce(size, future, fingerprint))
        self._tasks[task] = future
        task.add_done_callback(self._forget)
        return future

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished producer."""
        self._tasks.pop(task, None)

    async def _produce(
        self, size: Size, future: asyncio.Future[Snapshot], fingerprint: str
    ) -> None:
        """Fetch (or scale) one frame and hand it to every waiter."""
        try:
            frame = await (self._upstream() if size is None else self._scaled(size))
        except asyncio.CancelledError:
            # Unload: the waiters get an error, never left hanging and never
            # cancelled (they were not, only the fetch was).
            _fail(future, CameraUnloadedError())
            raise
        except Exception as err:  # noqa: BLE001 - every waiter gets the same error
            _fail(future, err)
        else:
            if fingerprint == self.fingerprint:
                self._store(size, frame)
            if not future.done():
                future.set_result(frame)
        finally:
            if self._inflight.get(size) is future:
                del self._inflight[size]

    def _lookup(self, size: Size) -> Snapshot | None:
        """Return the stored frame for a size (None = full), if any."""
        if size is None:
            return self._full_frame
        frame = self._frames.get(size)
        if frame is not None:
            self._frames.move_to_end(size)
        return frame

    async def _full(self) -> Snapshot:
        """The camera's full frame for a scaled request: cached, shared or new."""
        frame = self._full_frame
        if frame is not None and self._fresh(frame):
            return frame
        pending = self._inflight.get(None) or self._start(None)
        return await asyncio.shield(pending)

    async def _scaled(self, size: tuple[int, int]) -> Snapshot:
        """Scale the full frame in the executor; provenance stays the same.

        A copy keeps its full frame's capture time, so a full frame taken
        from the cache near the end of its max age can expire while it is
        being scaled. Then one new full frame is fetched (or joined) and
        scaled instead, so the request gets a current picture, not an error.
        A full frame that was already too old when its fetch ended is an
        error at once (``timeout``), with no second fetch.
        """
        full = await self._full()
        if self._clock() - full.captured_at > self.max_age:
            # Too old on arrival: the fetch itself outlived max age. A second
            # fetch would be as slow (and could outlast Home Assistant's own
            # image timeout), so the request gets the error now.
            self.stats.errors["stale"] += 1
            raise CameraTimeoutError("the still was older than max age when it arrived")
        scaled = await self._scale(full, size)
        if not self._fresh(scaled) and self._full_frame is not None:
            if not self._fresh(self._full_frame):
                self._full_frame = None
            scaled = await self._scale(await self._full(), size)
        return scaled

    async def _scale(self, full: Snapshot, size: tuple[int, int]) -> Snapshot:
        """One scaled copy of ``full`` (scaling and hashing in the executor)."""
        loop = asyncio.get_running_loop()
        data, width, height, digest = await loop.run_in_executor(
            None, _scale_and_hash, full.jpeg, size
        )
        if data is full.jpeg:
            return full
        self.stats.scaled += 1
        return replace(full, jpeg=data, width=width, height=height, sha256=digest)

    async def _upstream(self) -> Snapshot:
        """Call the camera: the only place an upstream fetch starts."""
        self.stats.upstream_fetches += 1
        try:
            frame = await self._fetch()
        except InvalidImageError as err:
            self.stats.rejected[err.kind] += 1
            self.stats.errors[err.translation_key] += 1
            raise
        except LocalCamError as err:
            self.stats.errors[err.translation_key] += 1
            raise
        self.stats.last_capture = frame.captured_at
        return frame

    def _store(self, size: Size, frame: Snapshot) -> None:
        """Keep a frame for its size, bounded in the number of sizes."""
        if size is None:
            self._full_frame = frame
            return
        self._frames[size] = frame
        self._frames.move_to_end(size)
        while len(self._frames) > MAX_SIZES:
            self._frames.popitem(last=False)

    async def close(self) -> None:
        """Entry unload: fail every waiter, end the fetches, forget every frame.

        Waiters get ``CameraUnloadedError`` before the producers are
        cancelled, so also a producer cancelled before it ever ran (which
        then runs none of its own code) leaves no waiter hanging.
        """
        self._closed = True
        producers = dict(self._tasks)
        for task, future in producers.items():
            _fail(future, CameraUnloadedError())
            task.cancel()
        if producers:
            # wait, not await: the producers end cancelled, and close() itself
            # stays cancellable.
            await asyncio.wait(producers)
        self._inflight.clear()
        self._full_frame = None
        self._frames.clear()


def _fail(future: asyncio.Future[Snapshot], err: BaseException) -> None:
    """Hand every waiter of ``future`` the error, unless it is already answered."""
    if future.done():
        return
    future.set_exception(err)
    # Mark it retrieved: a future nobody awaits any more (every viewer left)
    # must not log "Future exception was never retrieved".
    future.exception()


def _scale_and_hash(data: bytes, size: tuple[int, int]) -> tuple[bytes, int, int, str]:
    """Scale a JPEG to cover ``size`` and hash the result (CPU work: in a thread)."""
    scaled, width, height = jpeg.scale_jpeg(data, size[0], size[1])
    digest = "" if scaled is data else hashlib.sha256(scaled).hexdigest()
    return scaled, width, height, digest
