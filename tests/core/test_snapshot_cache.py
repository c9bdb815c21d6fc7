"""core.snapshot_cache: single flight, honest age, per-camera keys, sizes."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
import gc
import hashlib
import io
import threading
import time

import aiohttp
from aiohttp import web
from PIL import Image
import pytest

from custom_components.localcam.core import snapshot_cache
from custom_components.localcam.core.errors import (
    CameraTimeoutError,
    CannotConnectError,
    InvalidImageError,
)
from custom_components.localcam.core.identity import Identity
from custom_components.localcam.core.models import CameraSource, Snapshot, SnapshotSource
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.snapshot import CameraClient
from custom_components.localcam.core.snapshot_cache import (
    MAX_SIZES,
    STALL_RECHECKS,
    CameraUnloadedError,
    SnapshotCache,
)
from tests.core.test_jpeg import scan_bomb


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jpeg(color: tuple[int, int, int] = (0, 200, 0), size: tuple[int, int] = (640, 360)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


class Upstream:
    """A fake camera fetch (the edge): counts calls, can fail or hang."""

    def __init__(self, clock: Clock, camera_id: str = "cam-a", fingerprint: str = "fp-a") -> None:
        self.clock = clock
        self.camera_id = camera_id
        self.fingerprint = fingerprint
        self.calls = 0
        self.delay = 0.0
        self.error: Exception | None = None
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> Snapshot:
        self.calls += 1
        await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return _snapshot(self.clock, self.camera_id, self.fingerprint)


def _snapshot(
    clock: Clock,
    camera_id: str = "cam-a",
    fingerprint: str = "fp-a",
    color: tuple[int, int, int] = (0, 200, 0),
) -> Snapshot:
    """A still of ``camera_id`` as a fetch hands it to the cache, captured now."""
    data = _jpeg(color)
    return Snapshot(
        camera_id=camera_id,
        fingerprint=fingerprint,
        source=SnapshotSource.SNAPSHOT_URL,
        jpeg=data,
        width=640,
        height=360,
        captured_at=clock(),
        captured_wall=datetime.now(UTC),
        sha256=hashlib.sha256(data).hexdigest(),
    )


class Gated:
    """A fake camera fetch (the edge) whose every call waits for its own answer.

    ``answer(i)`` ends call ``i`` with a frame in its own colour, ``answer(i,
    err)`` with an error; a call never answered hangs like a stuck connection.
    """

    def __init__(self, clock: Clock, fingerprint: str = "fp-a") -> None:
        self.clock = clock
        self.fingerprint = fingerprint
        self.gates: list[asyncio.Future[Exception | None]] = []

    async def __call__(self) -> Snapshot:
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        index = len(self.gates)
        self.gates.append(gate)
        if (error := await gate) is not None:
            raise error
        return _snapshot(self.clock, fingerprint=self.fingerprint, color=(40 * index, 0, 200))

    def answer(self, index: int, error: Exception | None = None) -> None:
        self.gates[index].set_result(error)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _cache(clock: Clock, upstream: Upstream, max_age: float = 1.0) -> SnapshotCache:
    return SnapshotCache("cam-a", "fp-a", upstream, max_age=max_age, clock=clock)


async def test_concurrent_requests_make_one_fetch(clock: Clock) -> None:
    """200 viewers at once: one upstream fetch, 200 identical answers."""
    upstream = Upstream(clock)
    upstream.release.clear()
    cache = _cache(clock, upstream)
    tasks = [asyncio.create_task(cache.get()) for _ in range(200)]
    await asyncio.sleep(0)
    upstream.release.set()
    frames = await asyncio.gather(*tasks)
    assert upstream.calls == 1
    assert len({frame.sha256 for frame in frames}) == 1
    assert cache.stats.misses == 1
    assert cache.stats.coalesced == 199


async def test_every_waiter_gets_the_error(clock: Clock) -> None:
    """A failed fetch raises to every waiter; nothing is cached."""
    upstream = Upstream(clock)
    upstream.error = CannotConnectError("refused")
    cache = _cache(clock, upstream)
    results = await asyncio.gather(*(cache.get() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(result, CannotConnectError) for result in results)
    assert upstream.calls == 1
    assert cache.stats.errors["cannot_connect"] == 1
    upstream.error = None
    assert (await cache.get()).camera_id == "cam-a"
    assert upstream.calls == 2


async def test_invalid_images_are_counted_by_kind(clock: Clock) -> None:
    """Rejected images are counted per kind, whatever the camera put in the reason."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    # A camera that sends another wrong content type each time adds no counter.
    for media_type in ("text/html", "text/plain", "video/x-whatever"):
        upstream.error = InvalidImageError(f"content type {media_type}", kind="content_type")
        with pytest.raises(InvalidImageError):
            await cache.get()
    upstream.error = InvalidImageError("truncated (no JPEG end marker)", kind="truncated")
    with pytest.raises(InvalidImageError):
        await cache.get()
    stats = cache.stats.as_dict(clock())
    assert stats["rejected_images"] == {"content_type": 3, "truncated": 1}
    assert stats["errors"] == {"invalid_image": 4}


async def test_age_is_honest(clock: Clock) -> None:
    """Within max age a hit; past it a new fetch, and a failure is an error."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream, max_age=1.0)
    first = await cache.get()
    clock.now += 0.9
    assert await cache.get() is first
    assert cache.stats.hits == 1
    clock.now += 0.2
    upstream.error = CannotConnectError("gone")
    with pytest.raises(CannotConnectError):
        await cache.get()  # never the 1.1 s old frame


async def test_peek_serves_only_what_get_would_serve_at_once(clock: Clock) -> None:
    """The no-await path: a young frame of this source and size, else None (never a fetch)."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream, max_age=1.0)
    assert cache.peek() is None  # nothing cached: no fetch started either
    assert upstream.calls == 0
    first = await cache.get()
    clock.now += 0.9
    assert cache.peek() is first
    assert cache.peek(0, 0) is first  # a size that is not positive: the full frame
    assert cache.peek(160, 90) is None  # that size was never made
    assert cache.stats.hits == 2
    clock.now += 0.2
    assert cache.peek() is None  # past max age: not even the peek serves it
    first = await cache.get()
    cache.rebind("fp-new", Upstream(clock, fingerprint="fp-new"))
    assert cache.peek() is None
    frame = await cache.get()
    await cache.close()
    assert cache.peek() is None  # after unload: get's error, never the last frame
    assert frame.fingerprint == "fp-new"
    assert upstream.calls == 2


async def test_frames_of_another_source_are_never_served(clock: Clock) -> None:
    """A frame stamped with another camera or fingerprint is refused at serve time."""
    upstream = Upstream(clock, camera_id="cam-b")
    cache = _cache(clock, upstream)
    with pytest.raises(CameraTimeoutError, match="not this camera's"):
        await cache.get()
    assert cache.stats.errors["stale"] == 1
    assert cache._full_frame is None  # never stored either


async def test_rebind_empties_the_cache(clock: Clock) -> None:
    """A new source fingerprint drops every cached frame."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    await cache.get()
    new_upstream = Upstream(clock, fingerprint="fp-new")
    cache.rebind("fp-new", new_upstream)
    assert cache.stall_after is None  # the new source's pace is not known yet
    frame = await cache.get()
    assert frame.fingerprint == "fp-new"
    assert new_upstream.calls == 1


async def test_sizes_share_one_upstream_fetch(clock: Clock) -> None:
    """Cards of several sizes: one upstream fetch, scaled copies with the same provenance."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    full, small, medium = await asyncio.gather(cache.get(), cache.get(160, 90), cache.get(320, 180))
    assert upstream.calls == 1
    assert small.width < full.width
    assert medium.width < full.width
    assert small.captured_at == full.captured_at
    assert small.camera_id == full.camera_id
    assert small.sha256 != full.sha256
    assert await cache.get(160, 90) is small
    assert cache.stats.scaled == 2


async def test_a_copy_that_expires_while_scaling_is_made_again_from_a_new_frame(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full frame near its max age that ages out while scaled: one new fetch, no error."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream, max_age=1.0)
    await cache.get()
    slow_scale = snapshot_cache._scale_and_hash

    def scale_taking_100ms(data: bytes, size: tuple[int, int]) -> tuple[bytes, int, int, str]:
        clock.now += 0.1  # a busy executor: the scale finishes 100 ms later
        return slow_scale(data, size)

    monkeypatch.setattr(snapshot_cache, "_scale_and_hash", scale_taking_100ms)
    clock.now += 0.95
    small = await cache.get(320, 180)
    assert upstream.calls == 2
    assert clock() - small.captured_at <= 1.0
    assert small.width == 320


async def test_a_size_that_is_not_positive_gets_the_full_frame(clock: Clock) -> None:
    """HA's proxy passes any integer it parsed: 0 or -1 is no size, never a crash."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    full = await cache.get()
    assert await cache.get(-1, -1) is full
    assert await cache.get(0, 180) is full
    assert cache.stats.scaled == 0


async def test_size_entries_are_bounded(clock: Clock) -> None:
    """A client cycling through sizes cannot grow memory without bound."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    for width in range(100, 100 + 4 * (MAX_SIZES + 5), 4):
        await cache.get(width, width // 2)
    assert len(cache._frames) <= MAX_SIZES
    assert upstream.calls == 1


async def test_a_cancelled_viewer_does_not_cancel_the_fetch(clock: Clock) -> None:
    """The first viewer closing its card leaves the others their frame."""
    upstream = Upstream(clock)
    upstream.release.clear()
    cache = _cache(clock, upstream)
    first = asyncio.create_task(cache.get())
    second = asyncio.create_task(cache.get())
    await asyncio.sleep(0)
    first.cancel()
    upstream.release.set()
    frame = await second
    assert frame.camera_id == "cam-a"
    assert upstream.calls == 1


async def test_a_hanging_camera_does_not_slow_another(clock: Clock) -> None:
    """Caches share nothing: camera A hanging leaves camera B's latency alone."""
    hanging = Upstream(clock)
    hanging.release.clear()
    healthy = Upstream(clock, camera_id="cam-b", fingerprint="fp-b")
    cache_a = _cache(clock, hanging)
    cache_b = SnapshotCache("cam-b", "fp-b", healthy, max_age=1.0, clock=clock)
    stuck = [asyncio.create_task(cache_a.get()) for _ in range(50)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    frame = await asyncio.wait_for(cache_b.get(), timeout=1)
    assert frame.camera_id == "cam-b"
    assert loop.time() - start < 0.5
    await cache_a.close()
    for task in stuck:
        with pytest.raises(CameraUnloadedError):
            await task


async def test_close_ends_inflight_with_an_error(clock: Clock) -> None:
    """Unload ends fetches in flight, answers their waiters with an error, forgets frames."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    await cache.get()
    upstream.release.clear()
    clock.now += 5
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0)
    await cache.close()
    with pytest.raises(CameraUnloadedError) as caught:
        await waiter
    # A LocalCam error with a translation (en.json exceptions.cannot_connect).
    assert isinstance(caught.value, CannotConnectError)
    assert caught.value.translation_key == "cannot_connect"
    assert cache._full_frame is None
    assert not cache._tasks


async def test_close_answers_every_waiter_of_every_size(clock: Clock) -> None:
    """Full, coalesced and scaled waiters all get the unload error, none a CancelledError."""
    upstream = Upstream(clock)
    upstream.release.clear()
    cache = _cache(clock, upstream)
    waiters = [
        asyncio.create_task(cache.get()),
        asyncio.create_task(cache.get()),
        asyncio.create_task(cache.get(160, 90)),
        asyncio.create_task(cache.get(320, 180)),
    ]
    await asyncio.sleep(0.01)
    assert upstream.calls == 1
    await cache.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, CameraUnloadedError) for result in results), results


async def test_close_answers_a_producer_that_never_ran(clock: Clock) -> None:
    """A fetch cancelled before it started still leaves no waiter hanging."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0)  # the waiter started the producer, which has not run yet
    assert upstream.calls == 0
    await cache.close()
    with pytest.raises(CameraUnloadedError):
        async with asyncio.timeout(1):
            await waiter
    assert upstream.calls == 0


async def test_close_answers_waiters_of_a_source_rebind_replaced(clock: Clock) -> None:
    """A fetch of the old source (dropped from in-flight by rebind) is answered too."""
    upstream = Upstream(clock)
    upstream.release.clear()
    cache = _cache(clock, upstream)
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    cache.rebind("fp-b", Upstream(clock, fingerprint="fp-b"))
    await cache.close()
    with pytest.raises(CameraUnloadedError):
        await waiter


async def test_a_cancelled_waiter_stays_cancelled_at_close(clock: Clock) -> None:
    """Only a waiter that was itself cancelled sees CancelledError."""
    upstream = Upstream(clock)
    upstream.release.clear()
    cache = _cache(clock, upstream)
    leaving = asyncio.create_task(cache.get())
    staying = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    leaving.cancel()
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    with pytest.raises(CameraUnloadedError):
        await staying


async def test_close_with_no_waiter_left_warns_nothing(clock: Clock) -> None:
    """Failed futures nobody awaits are marked retrieved: no asyncio warning."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        upstream = Upstream(clock)
        upstream.release.clear()
        cache = _cache(clock, upstream)
        waiters = [asyncio.create_task(cache.get(w, w)) for w in (None, 100, 200)]
        await asyncio.sleep(0.01)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await cache.close()
        del waiters, cache
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_get_after_close_fetches_nothing(clock: Clock) -> None:
    """A request that arrives after unload gets the error at once, without a fetch."""
    upstream = Upstream(clock)
    cache = _cache(clock, upstream)
    await cache.get()
    assert upstream.calls == 1
    await cache.close()
    for size in ((None, None), (160, 90)):
        with pytest.raises(CameraUnloadedError):
            await cache.get(*size)
    await asyncio.sleep(0.01)  # nothing was started in the background either
    assert upstream.calls == 1
    assert not cache._tasks
    assert cache.stats.misses == 1


class _SlowCamera:
    """A real HTTP camera on 127.0.0.1 whose still takes a while: before or during its body."""

    def __init__(self, *, before_headers: float = 0.0, during_body: float = 0.0) -> None:
        self.before_headers = before_headers
        self.during_body = during_body
        self.headers_sent: list[float] = []
        self.jpeg = _jpeg(size=(64, 48))
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _still(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.before_headers)  # encoding before it answers
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = len(self.jpeg)
        await response.prepare(request)
        # The camera answers: the picture exists now, its first bytes leave.
        self.headers_sent.append(time.monotonic())
        await response.write(self.jpeg[:100])
        await asyncio.sleep(self.during_body)  # a poor network
        await response.write(self.jpeg[100:])
        return response

    async def __aenter__(self) -> _SlowCamera:
        app = web.Application()
        app.router.add_get("/snap.jpg", self._still)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/snap.jpg"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@asynccontextmanager
async def _through_client(camera: _SlowCamera, max_age: float) -> AsyncIterator[SnapshotCache]:
    """The real fetch path: CameraClient (http.fetch, jpeg checks) behind a SnapshotCache."""
    source = CameraSource(
        camera_id="cam_main", stream_url="rtsp://127.0.0.1:1/unused", snapshot_url=camera.url
    )
    async with aiohttp.ClientSession() as session:
        client = CameraClient(session, NetPolicy(), source)
        try:
            yield SnapshotCache(
                source.camera_id, source.fingerprint, client.fetch_snapshot, max_age=max_age
            )
        finally:
            await client.close()


async def test_a_still_whose_body_trickles_in_past_max_age_is_an_error(
    socket_enabled: None,
) -> None:
    """Headers at once, body 3 s later, max age 1 s: a timeout error, never a 3 s old frame.

    The frame is aged from when the camera began answering (its headers), not
    from its last byte: stamped on arrival it would be served as fresh, and
    kept for another second. A scaled request fails the same way, with no
    second (as slow) fetch.
    """
    async with (
        _SlowCamera(during_body=3.0) as camera,
        _through_client(camera, max_age=1.0) as cache,
    ):
        with pytest.raises(CameraTimeoutError) as err:
            await cache.get()
        assert err.value.translation_key == "timeout"
        assert cache.stats.errors["stale"] == 1
        camera.during_body = 1.5
        with pytest.raises(CameraTimeoutError):
            await cache.get(32, 24)
        assert cache.stats.upstream_fetches == 2
        assert cache.stats.errors["stale"] == 2


async def test_a_camera_slow_to_answer_but_quick_to_send_is_served(
    socket_enabled: None,
) -> None:
    """A camera that encodes for 1.2 s before it answers, then sends at once: a fresh still.

    Its picture exists only once it answers, so the frame is aged from its
    headers (captured_at), not from the request: max age 1 s still serves it.
    """
    async with (
        _SlowCamera(before_headers=1.2) as camera,
        _through_client(camera, max_age=1.0) as cache,
    ):
        asked = time.monotonic()
        frame = await cache.get()
        assert frame.source == SnapshotSource.SNAPSHOT_URL
        assert frame.captured_at >= asked + 1.1  # its headers, not the request
        assert abs(frame.captured_at - camera.headers_sent[0]) < 0.2
        assert time.monotonic() - frame.captured_at <= cache.max_age
        assert frame.width == 64


async def _waiting(
    cache: SnapshotCache, size: tuple[int, int] | None = None
) -> asyncio.Task[Snapshot]:
    """A viewer's request, started and parked on whatever fetch it joined."""
    task = asyncio.create_task(cache.get(*(size or (None, None))))
    await asyncio.sleep(0.01)
    return task


async def test_a_request_past_a_hung_fetch_starts_another_whose_frame_answers_all(
    clock: Clock,
) -> None:
    """A hang holds its viewers only until a newer fetch brings a frame, not its timeout."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream)
    first = await _waiting(cache)
    clock.now += snapshot_cache.HEDGE_AFTER - 0.01
    joined = await _waiting(cache)
    assert len(upstream.gates) == 1  # younger than HEDGE_AFTER: one fetch, as always
    clock.now += 0.02
    late = await _waiting(cache)
    assert len(upstream.gates) == 2
    assert cache.stats.hedged == 1
    upstream.answer(1)
    async with asyncio.timeout(1):
        frames = await asyncio.gather(first, joined, late)
    assert len({frame.sha256 for frame in frames}) == 1
    assert upstream.gates[0].cancelled()  # the stuck fetch is ended, not left to time out
    assert not cache._inflight
    assert await cache.get() is frames[0]  # and cached like any frame


async def test_a_newer_fetch_waits_for_max_age_when_that_is_longer(clock: Clock) -> None:
    """Still at most one new fetch per max-age window: no second fetch before max age."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream, max_age=5.0)
    waiters = [await _waiting(cache)]
    clock.now += 4.9
    waiters.append(await _waiting(cache))
    assert len(upstream.gates) == 1
    clock.now += 0.2
    waiters.append(await _waiting(cache))
    assert len(upstream.gates) == 2
    upstream.answer(1)
    await asyncio.gather(*waiters)


async def test_an_error_answers_the_older_fetches_not_a_newer_one(clock: Clock) -> None:
    """A refusal ends the viewers of the hung fetch before it; a newer fetch may still succeed."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream)
    waiters = []
    for _ in range(3):
        waiters.append(await _waiting(cache))
        clock.now += snapshot_cache.HEDGE_AFTER
    assert len(upstream.gates) == 3
    upstream.answer(1, CannotConnectError("refused"))
    await asyncio.sleep(0.01)
    for older in waiters[:2]:
        assert older.done()
        assert isinstance(older.exception(), CannotConnectError)
    assert upstream.gates[0].cancelled()
    assert not waiters[2].done()
    upstream.answer(2)
    assert (await waiters[2]).camera_id == "cam-a"


async def test_an_older_fetch_that_answers_first_answers_the_newer_viewers(clock: Clock) -> None:
    """The first frame to arrive ends every fetch of that size, whichever began first."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream)
    first = await _waiting(cache)
    clock.now += snapshot_cache.HEDGE_AFTER
    second = await _waiting(cache)
    upstream.answer(0)
    async with asyncio.timeout(1):
        assert (await first) is (await second)
    assert upstream.gates[1].cancelled()


async def test_a_camera_that_keeps_hanging_holds_a_bounded_number_of_fetches(
    clock: Clock,
) -> None:
    """However long the hang and however many viewers, at most MAX_FLIGHTS fetches at once."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream)
    waiters = []
    for _ in range(4 * snapshot_cache.MAX_FLIGHTS):
        waiters.append(await _waiting(cache))
        clock.now += snapshot_cache.HEDGE_AFTER
    assert len(upstream.gates) == snapshot_cache.MAX_FLIGHTS
    await cache.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, CameraUnloadedError) for result in results)


async def test_a_sized_request_past_a_hung_fetch_starts_another_full_fetch(clock: Clock) -> None:
    """Cards asking a size get the same way out of a hang: one new full fetch, then scaled."""
    upstream = Gated(clock)
    cache = _cache(clock, upstream)
    first = await _waiting(cache, (320, 180))
    clock.now += snapshot_cache.HEDGE_AFTER
    late = await _waiting(cache, (320, 180))
    assert len(upstream.gates) == 2
    assert (cache.stats.misses, cache.stats.hedged) == (1, 1)
    upstream.answer(1)
    async with asyncio.timeout(2):
        small = await asyncio.gather(first, late)
    assert [frame.width for frame in small] == [320, 320]
    assert small[0].sha256 == small[1].sha256


async def test_a_fetch_of_a_replaced_source_answers_only_its_own_viewers(clock: Clock) -> None:
    """After rebind, the old source's fetch ends neither the new fetches nor their viewers."""
    old = Gated(clock)
    cache = _cache(clock, old)
    stale_waiter = await _waiting(cache)
    new = Gated(clock, fingerprint="fp-b")
    cache.rebind("fp-b", new)
    new_waiter = await _waiting(cache)
    old.answer(0)
    with pytest.raises(CameraTimeoutError):  # its frame is of the old source: not served
        await stale_waiter
    assert not new_waiter.done()
    assert not new.gates[0].done()
    new.answer(0)
    assert (await new_waiter).fingerprint == "fp-b"


class Paced(Gated):
    """A Gated camera whose answers take ``took`` seconds on the test's clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.took = 0.0

    def answer(self, index: int, error: Exception | None = None) -> None:
        self.clock.now += self.took
        super().answer(index, error)


async def test_a_camera_that_stays_hung_is_an_error_soon_not_at_the_fetch_timeout(
    clock: Clock,
) -> None:
    """Once the camera has delivered a still, a hang is a timeout error after its own pace.

    The fetch is never answered here (a connection stuck for good): the
    viewer's error cannot come from it. The fetch goes on, and its frame,
    should the camera answer after all, answers the next viewer.
    """
    upstream = Gated(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock, stall_floor=0.05)
    assert cache.stall_after is None
    first = await _waiting(cache)
    upstream.answer(0)
    await first
    clock.now += 2.0  # that still expired
    async with asyncio.timeout(5):
        with pytest.raises(CameraTimeoutError, match=r"no still after 0\.05 s"):
            await cache.get()
    assert cache.stats.stalled == 1
    assert cache.stats.as_dict(clock.now)["waiters_given_up_on_a_stalled_camera"] == 1
    assert not upstream.gates[1].done()  # not cancelled: the fetch goes on
    upstream.answer(1)
    assert (await cache.get()).sha256 == _snapshot(clock, color=(40, 0, 200)).sha256
    assert len(upstream.gates) == 2  # that late frame was served, no new fetch


async def test_a_camera_still_sending_is_waited_for_a_bounded_while(clock: Clock) -> None:
    """Past its stall time a viewer waits on while the camera sends (a long keyframe interval).

    A camera with keyframes seconds apart answered at once when its session
    opened, so its pace said 0.2 s; the next still waited in the open session
    for the next keyframe and got a timeout error, from a camera that was
    sending all along. Only a bounded number of looks: then it is an error.
    """
    upstream = Gated(clock)
    receiving: list[float | None] = [None]
    cache = SnapshotCache(
        "cam-a",
        "fp-a",
        upstream,
        max_age=1.0,
        clock=clock,
        stall_floor=0.05,
        receiving_since=lambda: receiving[0],
    )
    first = await _waiting(cache)
    upstream.answer(0)
    await first
    clock.now += 2.0
    receiving[0] = clock.now  # the session reads packets between keyframes
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0.12)  # past the 0.05 s stall time, twice
    assert not waiter.done()
    upstream.answer(1)
    assert (await waiter).sha256 == _snapshot(clock, color=(40, 0, 200)).sha256
    assert cache.stats.stalled == 0
    # Sending, yet never a still: an error after STALL_RECHECKS more looks.
    clock.now += 2.0
    receiving[0] = clock.now
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(5):
        with pytest.raises(CameraTimeoutError):
            await cache.get()
    assert asyncio.get_running_loop().time() - started < 0.05 * (STALL_RECHECKS + 2)
    # Packets that stopped (older than the floor) count for nothing.
    clock.now += 2.0
    receiving[0] = clock.now - 1.0
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(5):
        with pytest.raises(CameraTimeoutError):
            await cache.get()
    assert asyncio.get_running_loop().time() - started < 0.05 * 2
    assert cache.stats.stalled == 2
    await cache.close()  # the fetch never answered ends with the cache


async def test_before_the_first_still_only_the_fetch_bounds_the_wait(clock: Clock) -> None:
    """A first cold still may take a long GOP: no stall error before the camera's pace is known."""
    upstream = Gated(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock, stall_floor=0.05)
    waiter = await _waiting(cache)
    await asyncio.sleep(0.2)  # four times the floor
    assert not waiter.done()
    upstream.answer(0)
    assert (await waiter).camera_id == "cam-a"
    assert cache.stats.stalled == 0


async def test_the_stall_yardstick_is_the_slowest_still_not_the_latest(clock: Clock) -> None:
    """Fast stills from a warm session do not shorten the wait for the next cold one."""
    upstream = Paced(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock, stall_floor=0.05)
    for index, took in enumerate((0.01, 1.5, 0.01, 0.02)):
        upstream.took = took
        waiter = await _waiting(cache)
        upstream.answer(index)
        await waiter
        clock.now += 2.0  # expired: the next request fetches
    assert cache.slowest == pytest.approx(1.5)
    assert cache.stall_after == pytest.approx(snapshot_cache.STALL_FACTOR * 1.5)
    # And never below the floor, however fast the camera.
    fast = SnapshotCache("cam-a", "fp-a", Upstream(clock), max_age=1.0, clock=clock)
    await fast.get()
    assert fast.stall_after == snapshot_cache.STALL_FLOOR


async def test_a_viewer_cancelled_while_waiting_is_not_a_stall(clock: Clock) -> None:
    """A viewer who leaves gets CancelledError, not a stall; the fetch goes on for the rest."""
    upstream = Gated(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock, stall_floor=60)
    first = await _waiting(cache)
    upstream.answer(0)
    await first
    clock.now += 2.0
    leaving = await _waiting(cache)
    staying = await _waiting(cache)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert cache.stats.stalled == 0
    upstream.answer(1)
    assert (await staying).camera_id == "cam-a"


async def test_many_sizes_at_once_scale_a_bounded_number_at_a_time(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 card sizes at once of each of 4 cameras: all answered, never over the bounds.

    Each scaling decodes the full frame (tens of MB for a 4K camera): without
    the bound, any user who may see a camera could make Home Assistant take
    gigabytes by asking for many sizes at once. At most SCALING_SLOTS run in
    the process, and one per camera (so no camera waits behind another's many).
    """
    running: Counter[str] = Counter()
    peak = peak_per_camera = 0
    lock = threading.Lock()
    real = snapshot_cache._scale_and_hash

    def counted(data: bytes, size: tuple[int, int]) -> tuple[bytes, int, int, str]:
        nonlocal peak, peak_per_camera
        camera = by_jpeg[data]
        with lock:
            running[camera] += 1
            peak = max(peak, running.total())
            peak_per_camera = max(peak_per_camera, running[camera])
        try:
            time.sleep(0.02)  # long enough for the others to pile up, were they let in
            return real(data, size)
        finally:
            with lock:
                running[camera] -= 1

    monkeypatch.setattr(snapshot_cache, "_scale_and_hash", counted)

    class Coloured(Upstream):
        """Each camera's own picture, so a scaling tells whose frame it decodes."""

        async def __call__(self) -> Snapshot:
            self.calls += 1
            index = int(self.camera_id[-1])
            return _snapshot(self.clock, self.camera_id, self.fingerprint, (60 * index, 0, 0))

    upstreams = [Coloured(clock, camera_id=f"cam-{i}", fingerprint=f"fp-{i}") for i in range(4)]
    caches = [
        SnapshotCache(f"cam-{i}", f"fp-{i}", upstream, max_age=60.0, clock=clock)
        for i, upstream in enumerate(upstreams)
    ]
    by_jpeg = {(await cache.get()).jpeg: cache.camera_id for cache in caches}
    assert len(by_jpeg) == 4  # each camera's frame is told apart
    sizes = [(600 - i, 300) for i in range(32)]
    answered = await asyncio.gather(*(cache.get(w, h) for cache in caches for w, h in sizes))
    assert [frame.width for frame in answered] == [w for _ in caches for w, _ in sizes]
    assert [upstream.calls for upstream in upstreams] == [1, 1, 1, 1]
    assert (peak, peak_per_camera) == (snapshot_cache.SCALING_SLOTS, 1)
    # A scaling cancelled while its thread runs (its flight given up on)
    # frees no slot before that thread is done: the bound holds for what the
    # threads hold, not for who still waits.
    peak = peak_per_camera = 0
    fulls = [await cache.get() for cache in caches]
    leaving = [
        asyncio.ensure_future(cache._scale(full, (500 - i, 250)))
        for cache, full in zip(caches, fulls, strict=True)
        for i in range(4)
    ]
    await asyncio.sleep(0.005)
    for request in leaving:
        request.cancel()
    staying = await asyncio.gather(*(cache.get(400 - i, 200) for cache in caches for i in range(4)))
    assert [frame.width for frame in staying] == [400 - i for _ in caches for i in range(4)]
    assert (peak, peak_per_camera) == (snapshot_cache.SCALING_SLOTS, 1)


class Trickling:
    """A fake camera fetch (the edge) that begins answering at once and ends when told.

    Like core.snapshot's snapshot URL: the still is aged from when the camera
    began answering (``captured_at`` = the call's start on the test's clock),
    however long its body then takes. ``answer(i)`` ends call ``i``.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.gates: list[asyncio.Future[Exception | None]] = []

    async def __call__(self) -> Snapshot:
        answered_at = self.clock()
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        index = len(self.gates)
        self.gates.append(gate)
        if (error := await gate) is not None:
            raise error
        data = _jpeg((40 * index, 0, 200))
        return Snapshot(
            camera_id="cam-a",
            fingerprint="fp-a",
            source=SnapshotSource.SNAPSHOT_URL,
            jpeg=data,
            width=640,
            height=360,
            captured_at=answered_at,
            captured_wall=datetime.now(UTC),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def answer(self, index: int, error: Exception | None = None) -> None:
        self.gates[index].set_result(error)


async def test_a_too_old_frame_of_a_stuck_fetch_does_not_end_the_newer_fetch(
    clock: Clock,
) -> None:
    """A stuck fetch whose body finally trickles in too old is an error, not a frame.

    Fetch 0 began answering at t0 and hangs in its body; at t0 + HEDGE_AFTER a
    viewer starts fetch 1 beside it. Fetch 0 then completes with a frame 3 s
    old (max age 1 s): nobody may be shown it. Its own viewer gets the stale
    error; but the newer fetch, which may yet bring a current still (the
    whole point of starting it), must not be cancelled nor its viewer failed:
    a stale frame is an error, and "an error answers ... never those of a
    newer [fetch], which may yet succeed".
    """
    upstream = Trickling(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock)
    first = await _waiting(cache)
    clock.now += snapshot_cache.HEDGE_AFTER
    late = await _waiting(cache)
    assert len(upstream.gates) == 2  # the hedge started beside the stuck fetch
    upstream.answer(0)  # the stuck body completes: 3 s older than its headers' time allows
    with pytest.raises(CameraTimeoutError):
        await first
    await asyncio.sleep(0.01)
    try:
        assert not late.done(), f"the newer fetch's viewer got the stale frame's error: {late}"
        assert not upstream.gates[1].cancelled(), "the newer fetch was ended by a stale frame"
        upstream.answer(1)
        frame = await late
        assert clock() - frame.captured_at <= cache.max_age
    finally:
        await cache.close()
        await asyncio.gather(late, return_exceptions=True)


async def test_a_camera_flooded_with_card_sizes_does_not_stall_another_camera(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cameras never wait on each other, also not for scaling.

    Camera A gets many card sizes at once (anyone who may see A can ask for
    any width/height; a dashboard of many cards, or a script). Camera B,
    healthy and fast, then gets one card request. The process-wide FIFO of
    SCALING_SLOTS puts B's one scaling behind all of A's: B's viewer waits
    for A's whole queue, and past B's stall yardstick (3 s) is told B does not
    answer. Each scaling is held at 50 ms here (a 4K frame's decode and
    resample on a small host costs about that).
    """
    real = snapshot_cache._scale_and_hash

    def scale_taking_50ms(data: bytes, size: tuple[int, int]) -> tuple[bytes, int, int, str]:
        time.sleep(0.05)
        return real(data, size)

    monkeypatch.setattr(snapshot_cache, "_scale_and_hash", scale_taking_50ms)
    cache_a = SnapshotCache("cam-a", "fp-a", Upstream(clock), max_age=60.0, clock=clock)
    cache_b = SnapshotCache(
        "cam-b",
        "fp-b",
        Upstream(clock, camera_id="cam-b", fingerprint="fp-b"),
        max_age=60.0,
        clock=clock,
    )
    await cache_a.get()
    await cache_b.get()  # B has answered before: its stall yardstick is the 3 s floor
    flood = [asyncio.create_task(cache_a.get(600 - i, 300)) for i in range(130)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    try:
        frame = await cache_b.get(320, 180)
        took = time.monotonic() - started
    finally:
        await cache_a.close()
        await asyncio.gather(*flood, return_exceptions=True)
        # Let the scaling threads already running finish before the loop ends.
        await asyncio.sleep(0.2)
    assert frame.camera_id == "cam-b"
    assert took < 0.5, f"camera B's card waited {took:.2f} s behind camera A's scalings"


async def test_a_stall_after_rebind_is_a_timeout_error_not_a_crash(clock: Clock) -> None:
    """A viewer that gives up on a hung camera gets CameraTimeoutError, also across rebind.

    ``get`` reads ``self.slowest`` for its message when the stall deadline
    fires; ``rebind`` resets it to None meanwhile, and formatting None with
    ``:.2f`` raises TypeError: an untranslated crash instead of the error.
    """
    upstream = Gated(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock, stall_floor=0.05)
    first = await _waiting(cache)
    upstream.answer(0)
    await first
    clock.now += 2.0  # expired: the next viewer waits on a new (hung) fetch
    waiter = await _waiting(cache)
    cache.rebind("fp-b", Gated(clock, fingerprint="fp-b"))
    try:
        async with asyncio.timeout(2):
            with pytest.raises(CameraTimeoutError):
                await waiter
    finally:
        await cache.close()


async def test_a_fetch_a_card_starts_past_a_stuck_one_is_counted(clock: Clock) -> None:
    """Diagnostics' fetches_started_past_a_stuck_one counts a hedge a card size started.

    A full-size viewer's fetch hangs; HEDGE_AFTER later a card (a size) asks:
    its scaling starts a second upstream fetch beside the stuck one
    (``_full`` -> ``_join(None, count=False)``), which no counter records.
    """
    upstream = Gated(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock)
    stuck = await _waiting(cache)
    clock.now += snapshot_cache.HEDGE_AFTER
    card = await _waiting(cache, (320, 180))
    assert len(upstream.gates) == 2
    stats = cache.stats.as_dict(clock())
    assert stats["upstream_fetches"] == 2
    try:
        assert stats["fetches_started_past_a_stuck_one"] == 1, stats
    finally:
        upstream.answer(1)
        await asyncio.gather(stuck, card)
        await cache.close()


async def test_stale_errors_are_counted_once_per_fetch_for_every_size(clock: Clock) -> None:
    """errors_by_kind counts one too-old fetch once, as every other error kind is counted.

    Five full-size viewers of a fetch that outlived max age add 5 to
    ``errors['stale']`` (``get`` counts per waiter); five card viewers of the
    same kind of fetch add 1 (``_scaled`` counts per flight); a refused fetch
    with five viewers adds 1 to ``cannot_connect``.
    """
    upstream = Trickling(clock)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock)
    full = [await _waiting(cache) for _ in range(5)]
    clock.now += 2.0  # the body took 2 s: older than max age on arrival
    upstream.answer(0)
    await asyncio.gather(*full, return_exceptions=True)
    stale_full = cache.stats.errors["stale"]
    cards = [await _waiting(cache, (320, 180)) for _ in range(5)]
    clock.now += 2.0
    upstream.answer(1)
    await asyncio.gather(*cards, return_exceptions=True)
    stale_cards = cache.stats.errors["stale"] - stale_full
    refused = [await _waiting(cache) for _ in range(5)]
    upstream.answer(2, CannotConnectError("refused"))
    await asyncio.gather(*refused, return_exceptions=True)
    await cache.close()
    assert (stale_full, stale_cards, cache.stats.errors["cannot_connect"]) == (1, 1, 1)


class SlowBody(Upstream):
    """A fake camera fetch (the edge) whose body takes ``took`` s after its headers.

    The still is aged from its headers (as core.snapshot stamps a snapshot
    URL's), so it arrives ``took`` old.
    """

    def __init__(self, clock: Clock, took: float) -> None:
        super().__init__(clock)
        self.took = took

    async def __call__(self) -> Snapshot:
        frame = await super().__call__()  # stamped at the headers: now
        self.clock.now += self.took
        return frame


async def test_a_card_of_a_just_fetched_frame_makes_one_upstream_fetch(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One card request, one upstream fetch: no second fetch for a frame that is not cached.

    The camera's body takes 0.95 s (max age 1 s); the card's scaling 0.1 s.
    The copy is then 1.05 s old and may not be shown: the request fails, as
    honest age requires. But ``_scaled`` retries as though the full frame had
    aged in the cache: it drops the frame it has just fetched and fetches the
    camera again (as slow), scales again and fails all the same. Its own
    docstring gives the reason not to: "a second fetch would be as slow".
    """
    real = snapshot_cache._scale_and_hash

    def scale_taking_100ms(data: bytes, size: tuple[int, int]) -> tuple[bytes, int, int, str]:
        clock.now += 0.1
        return real(data, size)

    monkeypatch.setattr(snapshot_cache, "_scale_and_hash", scale_taking_100ms)
    upstream = SlowBody(clock, took=0.95)
    cache = SnapshotCache("cam-a", "fp-a", upstream, max_age=1.0, clock=clock)
    with pytest.raises(CameraTimeoutError):
        await cache.get(320, 180)
    assert upstream.calls == 1, f"{upstream.calls} upstream fetches for one card request"


async def test_rebind_back_to_an_earlier_source_serves_none_of_its_old_frames() -> None:
    """A -> B -> A within max age: the frame A gave before the switch is gone.

    rebind drops everything cached; _fresh's fingerprint check alone would let
    the first frame of A be served again once the source is A once more.
    """
    clock = Clock()
    first = Upstream(clock)
    cache = SnapshotCache("cam-a", "fp-a", first, max_age=10.0, clock=clock)
    old = await cache.get()
    cache.rebind("fp-b", Upstream(clock, fingerprint="fp-b"))
    again = Upstream(clock)
    cache.rebind("fp-a", again)
    assert cache.peek() is None
    frame = await cache.get()
    assert frame is not old
    assert again.calls == 1
    await cache.close()


@pytest.mark.parametrize(
    "change",
    [
        {"camera_id": "cam-b"},
        {"stream_url": "rtsp://192.168.1.20/other"},
        {"snapshot_url": "http://192.168.1.20/other.jpg"},
        {"username": "admin2"},
        {"password": "other"},
        {"identity": Identity(mac="aa:bb:cc:00:11:99")},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_part_of_a_source_changes_its_fingerprint(change: dict[str, object]) -> None:
    """A new URL, snapshot URL, credential or identity is a new source to the cache."""
    base: dict[str, object] = {
        "camera_id": "cam-a",
        "stream_url": "rtsp://192.168.1.20/live",
        "snapshot_url": "http://192.168.1.20/still.jpg",
        "username": "admin",
        "password": "secret",
        "identity": Identity(mac="aa:bb:cc:00:11:22"),
    }
    before = CameraSource(**base)  # type: ignore[arg-type]
    after = CameraSource(**{**base, **change})  # type: ignore[arg-type]
    assert before.fingerprint != after.fingerprint


async def test_a_camera_serving_a_scan_bomb_gets_invalid_image_and_nothing_cached(
    socket_enabled: None,
) -> None:
    """A snapshot URL answering a scan bomb: invalid_image, for the full size and a card size.

    Before the fix the full frame was served and cached, and each card size
    decoded it in the executor for seconds (minutes at 8 MB), holding one of
    the process's two scaling slots: two such cameras stalled every other
    camera's cards.
    """
    bomb = scan_bomb(20000)

    async def still(_request: web.Request) -> web.Response:
        return web.Response(body=bomb, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/snap.jpg", still)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    source = CameraSource(
        camera_id="cam_main",
        stream_url="rtsp://127.0.0.1:1/unused",
        snapshot_url=f"http://127.0.0.1:{port}/snap.jpg",
    )
    try:
        async with aiohttp.ClientSession() as session:
            client = CameraClient(session, NetPolicy(), source)
            cache = SnapshotCache(
                source.camera_id, source.fingerprint, client.fetch_snapshot, max_age=5.0
            )
            try:
                with pytest.raises(InvalidImageError):
                    await cache.get()
                assert cache.peek() is None
                started = time.monotonic()
                with pytest.raises(InvalidImageError):
                    async with asyncio.timeout(3):
                        await cache.get(320, 180)
                assert time.monotonic() - started < 2.0
                assert cache.stats.rejected
            finally:
                await cache.close()
                await client.close()
    finally:
        await runner.cleanup()
