"""A per-camera still cache that cannot cross cameras or go stale in silence.

Guarantees, and where each is enforced:
- One cache object per camera; it stores and serves only frames whose
  ``camera_id`` and ``fingerprint`` equal its own, checked when a frame is
  served (``_fresh``), not only when stored. A new source (URL, credentials,
  identity) means a new fingerprint, so ``rebind`` empties the cache.
- Single flight: concurrent requests for one camera share one upstream fetch;
  every waiter gets that fetch's frame or its error. A waiter that gives up
  (client gone) does not cancel the fetch for the others.
- A hung fetch holds only the waiters who joined it in its first
  ``hedge_after`` seconds (the larger of max age and ``HEDGE_AFTER``). A
  request that finds the newest fetch older than that starts one more, at
  most ``MAX_FLIGHTS`` per size in flight, so there is still at most one new
  fetch per max-age window. The first of them to bring a frame answers every
  waiter of that size (served only while younger than max age, as always) and
  ends the others; an error answers its own waiters and those of the fetches
  started before it, never those of a newer one, which may yet succeed (a
  frame already older than max age when its fetch ends is such an error). So
  once a hang ends, its viewers get a frame within about ``hedge_after``
  instead of the fetch timeout (``_join`` and ``_settle`` enforce this).
- A camera that stays hung is an error soon, not at the fetch timeout: a
  waiter gives up once it has waited ``STALL_FACTOR`` times the camera's
  slowest still since setup (at least ``STALL_FLOOR``), with
  ``CameraTimeoutError`` (``timeout``). The fetch goes on for the others
  (and for the next request, should the camera answer after all). Before the
  camera's first still there is no such yardstick; then the fetch's own
  timeout is the bound (``get`` enforces this).
- Honest age: a frame older than ``max_age`` is never returned; there is no
  fallback to an older frame anywhere: a failed fetch raises to every waiter.
  Age counts from the frame's ``captured_at``, which the fetch (core.snapshot)
  sets to when the camera began answering, so a fetch that outlives max age
  (a body trickling in) yields ``CameraTimeoutError`` (``timeout``), not a frame.
- Sizes: a requested width/height is scaled from the camera's full frame in
  the executor and cached per size with the same provenance; it never causes
  a second upstream fetch (``jpeg.scale_jpeg`` sizes it so that HA's
  camera_proxy does not scale it again). At most ``SCALING_SLOTS`` scalings
  run at once in the whole process (``_scale``): each decodes a full frame
  (a 4K one is tens of MB), and requests for many sizes at once (any user
  who may see a camera can ask for any size) must not take gigabytes.
- Isolation: a hanging camera delays only its own waiters (its fetch is
  bounded by the fetch function's own timeout). The scaling slots are the one
  thing caches share; each camera queues for them one scaling at a time, so
  one camera asked for many sizes at once waits behind itself, not others.
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
import weakref

from . import jpeg
from .errors import CameraTimeoutError, CannotConnectError, InvalidImageError, LocalCamError
from .models import Snapshot

# Dashboards request a handful of card sizes; bound the per-size entries so a
# client iterating sizes cannot grow memory.
MAX_SIZES: Final = 8
# A fetch still pending after this long (or after max age, if longer) is
# presumed hung: the next request starts another one. Above a busy RTSP
# camera's cold still (one GOP of 2 s plus decode), so a slow but healthy
# fetch is not doubled. With MAX_FLIGHTS, a camera that hangs holds at most
# three of its connections (one per HEDGE_AFTER within the 9 s fetch timeout).
HEDGE_AFTER: Final = 3.0
MAX_FLIGHTS: Final = 3
# A viewer waits at most this many times the camera's slowest still since
# setup (never less than STALL_FLOOR) before it is told the camera does not
# answer. The slowest, not a recent average: an RTSP camera's stills come
# fast from a warm session and take up to a GOP cold, so only the slowest
# still seen is a safe yardstick for the next cold one. The floor equals
# HEDGE_AFTER: the next request after such an error starts a fresh fetch.
STALL_FACTOR: Final = 2.0
STALL_FLOOR: Final = HEDGE_AFTER
# A waiter past its stall time looks again this many times (STALL_FLOOR apart)
# while the camera is still sending (see get); the fetch's own timeout ends it sooner.
STALL_RECHECKS: Final = 3
# Full-frame decodes for scaling at once, per event loop (Home Assistant has
# one): two keep both cores of a small host busy, and bound the memory.
SCALING_SLOTS: Final = 2
_scaling: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

type Size = tuple[int, int] | None
type FetchFull = Callable[[], Awaitable[Snapshot]]


@dataclass(slots=True)
class CacheStats:
    """Counters shown in diagnostics (never image bytes)."""

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    hedged: int = 0  # requests that started a fetch beside a stuck one (see _join)
    stalled: int = 0  # waiters told the camera does not answer before its fetch ended (see get)
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
            "fetches_started_past_a_stuck_one": self.hedged,
            "waiters_given_up_on_a_stalled_camera": self.stalled,
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


@dataclass(slots=True, eq=False)
class _Flight:
    """One fetch (or scaling) in flight for one size, and its waiters' future."""

    future: asyncio.Future[Snapshot]
    started: float  # the cache's clock
    task: asyncio.Task[None] | None = None


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
        stall_floor: float = STALL_FLOOR,
        receiving_since: Callable[[], float | None] | None = None,
    ) -> None:
        """Bind the camera's identity, its full-frame fetch and the max age."""
        self.camera_id = camera_id
        self.fingerprint = fingerprint
        self.max_age = max_age
        self.stall_floor = stall_floor
        # The camera's slowest successful full-frame fetch since setup (None:
        # no still yet), in the clock's seconds: the yardstick of stall_after.
        self.slowest: float | None = None
        self.stats = CacheStats()
        self._fetch = fetch
        self._clock = clock
        # When the camera last sent anything to a fetch in flight (on the
        # cache's clock), or None: a camera still sending is not stalled (get).
        self._receiving_since = receiving_since
        # The full frame is kept apart from the scaled copies, so that cycling
        # through card sizes never evicts it (which would refetch upstream).
        self._full_frame: Snapshot | None = None
        self._frames: OrderedDict[tuple[int, int], Snapshot] = OrderedDict()
        # Per size, the flights a request may still join or settle, oldest first.
        self._inflight: dict[Size, list[_Flight]] = {}
        # Every producer and the future it completes, also those ``rebind``
        # dropped from ``_inflight``: ``close`` must answer all their waiters.
        self._tasks: dict[asyncio.Task[None], asyncio.Future[Snapshot]] = {}
        # This camera's turn at the process-wide scaling slots (see _scale).
        self._scale_turn = asyncio.Semaphore(1)
        self._closed = False

    def rebind(self, fingerprint: str, fetch: FetchFull) -> None:
        """Switch to a new source: everything cached or in flight is dropped."""
        self.fingerprint = fingerprint
        self._fetch = fetch
        self._full_frame = None
        self._frames.clear()
        self._inflight.clear()
        # Another source may be slower (a longer GOP): learn its pace anew.
        self.slowest = None

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
        size = _size(width, height)
        if self._closed:
            # A request that found the entity just before unload: no fetch on
            # a closed client (it would reopen a warm RTSP session).
            raise CameraUnloadedError
        frame = self._hit(size)
        if frame is not None:
            return frame
        pending = self._join(size, count=True)
        # Read together: a rebind meanwhile forgets the camera's pace.
        patience, slowest = self.stall_after, self.slowest
        frame = None
        wait = patience
        for _ in range(STALL_RECHECKS + 1):
            deadline = asyncio.timeout(wait)
            try:
                # shield: a waiter that is cancelled (viewer closed the card, or
                # gave up below) must not cancel the fetch other viewers are
                # waiting on. The shared future is never cancelled (``close``
                # fails it), so CancelledError here means this waiter itself was.
                async with deadline:
                    frame = await asyncio.shield(pending)
                break
            except TimeoutError:
                if not deadline.expired():
                    raise
                if not self._receiving():
                    break
                # The camera is sending (a live session between two keyframes,
                # which may be seconds apart): not a hang. Look again in a
                # while; the fetch's own timeout still bounds the wait.
                wait = self.stall_floor
        if frame is None:
            self.stats.stalled += 1
            raise CameraTimeoutError(
                f"no still after {patience:g} s; the camera's slowest so far took "
                f"{slowest or 0.0:.2f} s"
            )
        if not self._fresh(frame):
            # The source changed while we waited (a frame of a fetch that
            # outlived max age never gets here: _produce made it an error).
            raise CameraTimeoutError("the still expired before it could be served")
        return frame

    def peek(self, width: int | None = None, height: int | None = None) -> Snapshot | None:
        """The still ``get`` would return without waiting, or None (then ask ``get``).

        The hot path of a warm camera: no coroutine, no await. It applies the
        same checks as ``get`` (this camera, this source, within max age).
        """
        return None if self._closed else self._hit(_size(width, height))

    def _hit(self, size: Size) -> Snapshot | None:
        """The cached frame for a size if it may be served now (counted as a hit)."""
        frame = self._lookup(size)
        if frame is None or not self._fresh(frame):
            return None
        self.stats.hits += 1
        return frame

    def _receiving(self) -> bool:
        """Whether the camera sent something to a fetch in flight within the stall floor."""
        since = self._receiving_since() if self._receiving_since is not None else None
        return since is not None and self._clock() - since < self.stall_floor

    @property
    def stall_after(self) -> float | None:
        """How long a request waits for its still before the camera counts as stalled.

        None before the camera's first still: the fetch's own timeout bounds
        that wait (a first cold still may take as long as the camera's GOP).
        """
        if self.slowest is None:
            return None
        return max(self.stall_floor, STALL_FACTOR * self.slowest)

    @property
    def hedge_after(self) -> float:
        """How long a fetch may be pending before the next request starts another."""
        return max(self.max_age, HEDGE_AFTER)

    def _join(self, size: Size, *, count: bool) -> asyncio.Future[Snapshot]:
        """The future of the fetch a request for ``size`` waits on (maybe a new one)."""
        flights = self._inflight.get(size)
        if flights:
            newest = flights[-1]
            if self._clock() - newest.started < self.hedge_after or len(flights) >= MAX_FLIGHTS:
                if count:
                    self.stats.coalesced += 1
                return newest.future
            if size is None:  # an upstream fetch; also when a card's scaling starts it
                self.stats.hedged += 1
        elif count:
            self.stats.misses += 1
        return self._start(size)

    def _start(self, size: Size) -> asyncio.Future[Snapshot]:
        """Start a fetch for ``size`` and register it as in flight."""
        loop = asyncio.get_running_loop()
        flight = _Flight(loop.create_future(), self._clock())
        self._inflight.setdefault(size, []).append(flight)
        fingerprint = self.fingerprint
        flight.task = task = loop.create_task(self._produce(size, flight, fingerprint))
        self._tasks[task] = flight.future
        task.add_done_callback(self._forget)
        return flight.future

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished producer."""
        self._tasks.pop(task, None)

    async def _produce(self, size: Size, flight: _Flight, fingerprint: str) -> None:
        """Fetch (or scale) one frame and hand it to every waiter."""
        try:
            frame = await (self._upstream() if size is None else self._scaled(size))
        except asyncio.CancelledError:
            # Unload, or a newer fetch answered this one's waiters: they get
            # an error if nobody answered them yet, never left hanging and
            # never cancelled (they were not, only the fetch was).
            _fail(flight.future, CameraUnloadedError())
            raise
        except Exception as err:  # noqa: BLE001 - every waiter gets the same error
            self._settle(size, flight, err)
        else:
            if size is None and fingerprint == self.fingerprint and not self._fresh(frame):
                # Older than max age on arrival (a body that trickled in, a
                # stuck fetch that answered at last): nobody may be shown it,
                # so it is an error, counted once, and like any error it
                # never ends a newer fetch, which may yet bring a current one.
                self.stats.errors["stale"] += 1
                self._settle(
                    size,
                    flight,
                    CameraTimeoutError(
                        "the still was older than max age when it arrived"
                        if frame.camera_id == self.camera_id
                        else "the still is not this camera's"  # never stored, never served
                    ),
                )
                return
            if fingerprint == self.fingerprint:
                self._store(size, frame)
            self._settle(size, flight, frame)
        finally:
            self._land(size, flight)

    def _settle(self, size: Size, flight: _Flight, outcome: Snapshot | Exception) -> None:
        """Answer ``flight``'s waiters, and those of the flights it supersedes.

        A frame answers every flight of the size (``get`` still serves it
        only while it is younger than max age); an error only the older
        ones, presumed hung, since a newer fetch may yet succeed. The flights
        answered here are cancelled: their connections to the camera close.
        Flights that ``rebind`` dropped answer only their own waiters.
        """
        _answer(flight.future, outcome)
        flights = self._inflight.get(size, [])
        if flight not in flights:
            return
        ended = flights if isinstance(outcome, Snapshot) else flights[: flights.index(flight)]
        for other in [o for o in ended if o is not flight]:
            _answer(other.future, outcome)
            self._land(size, other)
            if other.task is not None:
                other.task.cancel()

    def _land(self, size: Size, flight: _Flight) -> None:
        """Take a finished or answered flight off the joinable ones."""
        flights = self._inflight.get(size)
        if flights is not None and flight in flights:
            flights.remove(flight)
            if not flights:
                del self._inflight[size]

    def _lookup(self, size: Size) -> Snapshot | None:
        """Return the stored frame for a size (None = full), if any."""
        if size is None:
            return self._full_frame
        frame = self._frames.get(size)
        if frame is not None:
            self._frames.move_to_end(size)
        return frame

    async def _full(self) -> tuple[Snapshot, bool]:
        """The camera's full frame for a scaled request, and whether it was cached."""
        frame = self._full_frame
        if frame is not None and self._fresh(frame):
            return frame, True
        return await asyncio.shield(self._join(None, count=False)), False

    async def _scaled(self, size: tuple[int, int]) -> Snapshot:
        """Scale the full frame in the executor; provenance stays the same.

        A copy keeps its full frame's capture time, so a full frame taken
        from the cache near the end of its max age can expire while it is
        being scaled. Then one new full frame is fetched (or joined) and
        scaled instead, so the request gets a current picture, not an error.
        A full frame this request's own fetch brought that expires (it came
        too old, or aged while scaled) is an error at once (``timeout``): a
        second fetch would be as slow, and could outlast Home Assistant's
        own image timeout.
        """
        full, cached = await self._full()
        scaled = await self._scale(full, size)
        if self._fresh(scaled):
            return scaled
        if not cached:
            raise CameraTimeoutError("the still was older than max age when it was scaled")
        if not self._fresh(self._full_frame):
            self._full_frame = None
        full, _cached = await self._full()
        scaled = await self._scale(full, size)
        if not self._fresh(scaled):
            raise CameraTimeoutError("the still was older than max age when it was scaled")
        return scaled

    async def _scale(self, full: Snapshot, size: tuple[int, int]) -> Snapshot:
        """One scaled copy of ``full`` (scaling and hashing in the executor)."""
        loop = asyncio.get_running_loop()
        slots = _scaling.get(loop)
        if slots is None:
            slots = _scaling[loop] = asyncio.Semaphore(SCALING_SLOTS)
        # This camera's turn first: each camera waits for a process-wide slot
        # with one scaling at most, so a camera asked for many sizes at once
        # (any user who may see it can ask for any) queues behind itself, and
        # another camera's card waits for at most one scaling per camera.
        turn = self._scale_turn
        await turn.acquire()
        try:
            await slots.acquire()
        except BaseException:
            turn.release()
            raise
        work = loop.run_in_executor(None, _scale_and_hash, full.jpeg, size)

        def _release(_: object) -> None:
            slots.release()
            turn.release()

        # Both are the thread's, not this request's: a request cancelled
        # meanwhile (a viewer gone) must not free them while the thread still
        # holds a decoded frame, or the bound on memory would not hold.
        work.add_done_callback(_release)
        data, width, height, digest = await asyncio.shield(work)
        if data is full.jpeg:
            return full
        self.stats.scaled += 1
        return replace(full, jpeg=data, width=width, height=height, sha256=digest)

    async def _upstream(self) -> Snapshot:
        """Call the camera: the only place an upstream fetch starts."""
        self.stats.upstream_fetches += 1
        started = self._clock()
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
        took = self._clock() - started
        if self.slowest is None or took > self.slowest:
            self.slowest = took
        return frame

    def _store(self, size: Size, frame: Snapshot) -> None:
        """Keep a frame for its size, bounded in the number of sizes.

        Never over a newer one: a flight that settles has ended every older
        flight of its size (``_settle``), so none of them stores after it.
        """
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


def _size(width: int | None, height: int | None) -> Size:
    """The cache key of a requested size (None: the camera's own frame).

    HA's camera_proxy hands over any integer it parsed: a size that is not
    positive asks for nothing smaller than the camera's own frame.
    """
    return (width, height) if width and height and width > 0 and height > 0 else None


def _answer(future: asyncio.Future[Snapshot], outcome: Snapshot | Exception) -> None:
    """Hand every waiter of ``future`` a frame or an error, unless it is already answered."""
    if isinstance(outcome, Snapshot):
        if not future.done():
            future.set_result(outcome)
    else:
        _fail(future, outcome)


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
