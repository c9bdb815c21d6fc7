"""Picture rendering, H.264 encoding (PyAV libx264) and JPEG snapshots for a virtual camera."""

import asyncio
import base64
from collections.abc import Callable, Sequence
import contextlib
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
import itertools
import logging
import math
import struct
import threading
import time
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

_LOGGER = logging.getLogger(__name__)

#: Largest RTP packet (12-byte header included) the packetizer emits.
RTP_MTU = 1400
_RTP_HEADER = 12
_MAX_PAYLOAD = RTP_MTU - _RTP_HEADER
_FU_A = 28
#: How long a rendered JPEG is reused, so a burst of snapshot requests costs one encode.
JPEG_CACHE_SECONDS = 0.1
JPEG_QUALITY = 85
#: Bounded wait for an encoder thread to notice its stop flag (one frame plus one encode).
_JOIN_TIMEOUT = 5.0

#: Channel levels of the colour grid; neighbouring levels are >= 63 apart.
_LEVELS = (0, 64, 128, 191, 255)


@lru_cache(maxsize=1)
def palette() -> tuple[tuple[int, int, int], ...]:
    """All 120 camera colours, pairwise >= 63 apart, in the order color_for hands them out."""
    # The 5x5x5 RGB grid minus its 5 greys. Most saturated first (the first 24 all have a 0
    # and a 255 channel); within equal saturation, farthest-point order from pure red, so
    # the first cameras of a farm get the most distinct colours.
    type RGB = tuple[int, int, int]
    remaining: list[RGB] = [
        (r, g, b) for r, g, b in itertools.product(_LEVELS, repeat=3) if len({r, g, b}) > 1
    ]
    order: list[RGB] = [(255, 0, 0)]
    remaining.remove(order[0])

    def dist2(a: RGB, b: RGB) -> int:
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))

    nearest = {c: dist2(c, order[0]) for c in remaining}
    while remaining:
        # Most saturated, then farthest from everything chosen, then a fixed tie-break.
        best = max(remaining, key=lambda c: (max(c) - min(c), nearest[c], [-v for v in c]))
        remaining.remove(best)
        order.append(best)
        for c in remaining:
            nearest[c] = min(nearest[c], dist2(c, best))
    return tuple(order)


def color_for(index: int) -> tuple[int, int, int]:
    """The colour of camera `index` (deterministic; repeats after len(palette()) cameras)."""
    colors = palette()
    return colors[index % len(colors)]


def nearest_camera(rgb: Sequence[int] | np.ndarray, colors: Sequence[Sequence[int]]) -> int:
    """Index in `colors` of the colour nearest to `rgb` (Euclidean distance in RGB)."""
    if not colors:
        raise ValueError("no colours to match against")
    r, g, b = (int(v) for v in rgb[:3])
    return min(
        range(len(colors)),
        key=lambda i: (r - colors[i][0]) ** 2 + (g - colors[i][1]) ** 2 + (b - colors[i][2]) ** 2,
    )


type Listener = Callable[["AccessUnit"], None]


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One encoded picture, already split into RTP payloads (RFC 6184)."""

    ts90k: int
    keyframe: bool
    payloads: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StreamParameters:
    """What the SDP needs: the SPS and PPS of the camera's H.264 stream."""

    sps: bytes
    pps: bytes

    @property
    def profile_level_id(self) -> str:
        """Profile, constraint flags and level, hex, as RFC 6184 wants them."""
        return self.sps[1:4].hex().upper()

    @property
    def sprop_parameter_sets(self) -> str:
        """Base64 SPS and PPS separated by a comma."""
        return ",".join(base64.b64encode(n).decode("ascii") for n in (self.sps, self.pps))


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream into NAL units (start codes and trailing zeros removed)."""
    nals: list[bytes] = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = data.find(b"\x00\x00\x01", start)
        # A 4-byte start code leaves its leading zero at the end of the previous NAL.
        nal = data[start : len(data) if nxt < 0 else nxt].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        pos = nxt
    return nals


def packetize(nals: list[bytes]) -> tuple[bytes, ...]:
    """Turn NAL units into RTP payloads: single NAL unit packets or FU-A fragments."""
    payloads: list[bytes] = []
    for nal in nals:
        if len(nal) <= _MAX_PAYLOAD:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | _FU_A
        nal_type = nal[0] & 0x1F
        body = memoryview(nal)[1:]
        chunk = _MAX_PAYLOAD - 2
        for offset in range(0, len(body), chunk):
            start = offset == 0
            end = offset + chunk >= len(body)
            header = nal_type | (0x80 if start else 0) | (0x40 if end else 0)
            payloads.append(bytes((indicator, header)) + body[offset : offset + chunk])
    return tuple(payloads)


class Renderer:
    """Draws the camera's picture: a solid fill of its colour with a name and clock box."""

    def __init__(
        self,
        name: str,
        color: tuple[int, int, int],
        width: int,
        height: int,
        *,
        noise: bool = False,
    ) -> None:
        """Prepare the constant background and the geometry of the text box."""
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise ValueError("width and height must be even and at least 16")
        self.name = name
        self.color = color
        self.width = width
        self.height = height
        self._base = np.empty((height, width, 3), dtype=np.uint8)
        self._base[:] = color
        size = max(8, min(48, round(height / 22)))
        # A face per renderer: FreeType faces must not be shared between threads.
        self._font = ImageFont.load_default(size=size)
        self._pad = max(2, size // 4)
        left, top, right, bottom = self._font.getbbox(f"{name}  88:88:88.8")
        self._text_origin = (self._pad - left, self._pad - top)
        # The box stays inside the top quarter so the centre 50% of the picture is pure colour.
        self._box_w = int(min(width, right - left + 2 * self._pad))
        self._box_h = int(min(height // 4 - 1, bottom - top + 2 * self._pad))
        # This camera's encoder thread and snapshot workers may both draw with the face.
        self._font_lock = threading.Lock()
        # A band of noise at the bottom (the centre stays pure colour): about a real
        # camera's bit rate (~4.5 Mbit/s at 1280x720, 25 fps), for benchmarks. A few
        # precomputed pictures, cycled, cost no CPU.
        self._noise: list[np.ndarray] = []
        if noise:
            rng = np.random.default_rng(0)
            rows = max(2, height // 32)
            self._noise = [rng.integers(0, 256, (rows, width, 3), dtype=np.uint8) for _ in range(7)]
        self._frames = 0

    def text(self, when: float) -> str:
        """The overlay text: name and wall-clock time to the tenth of a second."""
        tenths = int(when * 10) % 10
        return f"{self.name}  {time.strftime('%H:%M:%S', time.localtime(when))}.{tenths}"

    def render(self, when: float | None = None) -> np.ndarray:
        """Return the picture (height x width x 3 RGB, uint8) at wall-clock time `when`."""
        box = Image.new("L", (self._box_w, self._box_h), 0)
        text = self.text(time.time() if when is None else when)
        with self._font_lock:
            ImageDraw.Draw(box).text(self._text_origin, text, 255, self._font)
        frame = self._base.copy()
        frame[: self._box_h, : self._box_w] = np.asarray(box)[:, :, None]
        if self._noise:
            self._frames += 1
            noise = self._noise[self._frames % len(self._noise)]
            frame[self.height - noise.shape[0] :] = noise
        return frame


class H264Encoder:
    """libx264 through PyAV: ultrafast, zerolatency, no B-frames, fixed GOP, headers on IDR."""

    def __init__(self, width: int, height: int, fps: float, gop_seconds: float) -> None:
        """Open the encoder; keyint is round(fps * gop_seconds) frames."""
        rate = Fraction(fps).limit_denominator(1001)
        keyint = max(1, round(fps * gop_seconds))
        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / rate
        ctx.framerate = rate
        # Tag the colour matrix (BT.601, limited range: what swscale used to convert) so
        # decoders convert back with the same matrix and the centre colour survives.
        ctx.colorspace = 6
        ctx.color_primaries = 6
        ctx.color_trc = 6
        ctx.color_range = 1
        ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "threads": "1",
            "forced-idr": "1",
            "x264-params": (
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:"
                "repeat-headers=1:force-cfr=1"
            ),
        }
        ctx.open()
        self._ctx = ctx

    def encode(self, rgb: np.ndarray, index: int, *, force_idr: bool = False) -> list[Any]:
        """Encode one RGB picture as frame number `index`; return PyAV packets."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        if force_idr:
            frame.pict_type = av.video.frame.PictureType.I
        return list(self._ctx.encode(frame))

    def close(self) -> None:
        """Release the encoder (no flush: a live camera just stops)."""
        self._ctx = None


_PARAMS_LOCK = threading.Lock()
_PARAMS_CACHE: dict[tuple[int, int, float, float], StreamParameters] = {}


def probe_parameters(width: int, height: int, fps: float, gop_seconds: float) -> StreamParameters:
    """Encode one frame to learn the SPS/PPS (blocking; cached per encoder configuration)."""
    key = (width, height, fps, gop_seconds)
    with _PARAMS_LOCK:
        if cached := _PARAMS_CACHE.get(key):
            return cached
        encoder = H264Encoder(width, height, fps, gop_seconds)
        sps = pps = b""
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        for packet in encoder.encode(frame, 0, force_idr=True):
            for nal in split_annexb(bytes(packet)):
                if nal[0] & 0x1F == 7:
                    sps = nal
                elif nal[0] & 0x1F == 8:
                    pps = nal
        encoder.close()
        if not sps or not pps:
            raise RuntimeError("libx264 produced no SPS/PPS")
        params = StreamParameters(sps, pps)
        _PARAMS_CACHE[key] = params
        return params


@lru_cache(maxsize=1)
def _turbojpeg() -> Any:
    """The TurboJPEG binding, or None when libturbojpeg cannot be loaded (Pillow then)."""
    try:
        from turbojpeg import TurboJPEG  # noqa: PLC0415

        return TurboJPEG()
    except Exception:  # noqa: BLE001
        return None


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an RGB picture as a baseline 4:2:0 JPEG."""
    if (tj := _turbojpeg()) is not None:
        from turbojpeg import TJPF_RGB, TJSAMP_420  # noqa: PLC0415

        return bytes(
            tj.encode(rgb, quality=quality, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)
        )
    import io  # noqa: PLC0415

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=quality)
    return out.getvalue()


class _EncoderWorker:
    """One encoder thread: renders and encodes at the frame rate until told to stop."""

    def __init__(self, source: MediaSource, loop: asyncio.AbstractEventLoop) -> None:
        """Create (not start) the thread."""
        self._source = source
        self._loop = loop
        self.stop_event = threading.Event()
        #: Set on the event loop once the thread is about to exit, so close() can await it.
        self.finished = asyncio.Event()
        self.force_idr = False
        self.thread = threading.Thread(
            target=self._run, name=f"virtualcam-enc-{source.renderer.name}", daemon=True
        )

    def _run(self) -> None:
        """Render, encode, hand access units to the event loop; paced by the monotonic clock."""
        src = self._source
        fps = src.fps
        try:
            encoder = H264Encoder(src.renderer.width, src.renderer.height, fps, src.gop_seconds)
        except Exception:
            _LOGGER.exception("%s: cannot open the H.264 encoder", src.renderer.name)
            self._signal_finished()
            return
        index = math.ceil((time.monotonic() - src.epoch) * fps)
        try:
            while not self.stop_event.is_set():
                delay = src.epoch + index / fps - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                late = math.floor((time.monotonic() - src.epoch) * fps)
                # Overloaded: skip the ticks we missed rather than bursting to catch up.
                index = max(index, late)
                force = self.force_idr
                self.force_idr = False
                rgb = src.renderer.render()
                for packet in encoder.encode(rgb, index, force_idr=force):
                    au = AccessUnit(
                        ts90k=round(index * 90000 / fps),
                        keyframe=bool(packet.is_keyframe),
                        payloads=packetize(split_annexb(bytes(packet))),
                    )
                    try:
                        self._loop.call_soon_threadsafe(src.deliver, self, au)
                    except RuntimeError:  # the event loop is closed: nobody to serve
                        return
                index += 1
        except Exception:
            _LOGGER.exception("%s: encoder thread failed", src.renderer.name)
        finally:
            encoder.close()
            self._signal_finished()

    def _signal_finished(self) -> None:
        """Tell the event loop this thread is done (nothing to tell if the loop is gone)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.finished.set)


class MediaSource:
    """Per-camera media: one shared encoder running only while someone is playing."""

    def __init__(
        self,
        name: str,
        color: tuple[int, int, int],
        *,
        width: int,
        height: int,
        fps: float,
        gop_seconds: float,
        noise: bool = False,
    ) -> None:
        """Set up rendering; no thread runs until the first subscriber."""
        if fps <= 0 or gop_seconds <= 0:
            raise ValueError("fps and gop_seconds must be positive")
        self.renderer = Renderer(name, color, width, height, noise=noise)
        self.fps = fps
        self.gop_seconds = gop_seconds
        #: Origin of frame numbers and RTP time; fixed so timestamps never go backwards.
        self.epoch = time.monotonic()
        self.params: StreamParameters | None = None
        self.frames_encoded = 0
        self.encoder_starts = 0
        self._listeners: dict[Listener, None] = {}
        self._worker: _EncoderWorker | None = None
        self._retired: list[_EncoderWorker] = []
        self._jpeg: tuple[float, bytes] | None = None
        self._jpeg_pending: asyncio.Future[bytes] | None = None

    async def prepare(self) -> StreamParameters:
        """Learn the SPS/PPS for the SDP (encodes one frame in a worker thread)."""
        if self.params is None:
            r = self.renderer
            self.params = await asyncio.to_thread(
                probe_parameters, r.width, r.height, self.fps, self.gop_seconds
            )
        return self.params

    @property
    def encoder_running(self) -> bool:
        """Whether an encoder thread is currently producing frames."""
        return self._worker is not None and self._worker.thread.is_alive()

    @property
    def subscribers(self) -> int:
        """How many listeners receive access units."""
        return len(self._listeners)

    def current_ts90k(self) -> int:
        """The stream's 90 kHz clock now (same origin as AccessUnit.ts90k)."""
        return round((time.monotonic() - self.epoch) * 90000)

    def subscribe(self, listener: Listener, *, keyframe_now: bool = False) -> None:
        """Start receiving access units; starts the encoder if it is idle."""
        self._listeners[listener] = None
        if self._worker is None:
            self._worker = _EncoderWorker(self, asyncio.get_running_loop())
            self.encoder_starts += 1
            self._worker.thread.start()  # its first frame is an IDR anyway
        elif keyframe_now:
            self._worker.force_idr = True

    def unsubscribe(self, listener: Listener) -> None:
        """Stop receiving; the encoder stops when nobody is left."""
        self._listeners.pop(listener, None)
        if not self._listeners and self._worker is not None:
            self._worker.stop_event.set()
            self._retired.append(self._worker)
            self._worker = None
        self._retired = [w for w in self._retired if w.thread.is_alive()]

    def deliver(self, worker: _EncoderWorker, au: AccessUnit) -> None:
        """Event-loop side: fan an access unit out to every listener."""
        if worker is not self._worker:
            return  # a stopping encoder's last frame
        self.frames_encoded += 1
        for listener in tuple(self._listeners):
            try:
                listener(au)
            except Exception:
                _LOGGER.exception("%s: listener failed", self.renderer.name)

    async def close(self) -> None:
        """Stop the encoder and wait (bounded) for every thread this source started."""
        self._listeners.clear()
        if self._worker is not None:
            self._worker.stop_event.set()
            self._retired.append(self._worker)
            self._worker = None
        retired, self._retired = self._retired, []
        # Await the threads' own "finished" signal rather than join(): never block the loop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_JOIN_TIMEOUT):
                for worker in retired:
                    if worker.thread.is_alive():
                        await worker.finished.wait()
        for worker in retired:
            # Returns at once when the thread has signalled its last act; never wait otherwise.
            worker.thread.join(0.5 if worker.finished.is_set() else 0)
            if worker.thread.is_alive():
                _LOGGER.warning("%s did not stop within %ss", worker.thread.name, _JOIN_TIMEOUT)
                self._retired.append(worker)
        if self._jpeg_pending is not None and not self._jpeg_pending.done():
            self._jpeg_pending.cancel()

    def render_jpeg(self) -> bytes:
        """JPEG of the current picture (blocking; reused for JPEG_CACHE_SECONDS)."""
        now = time.monotonic()
        if (cached := self._jpeg) is not None and now - cached[0] < JPEG_CACHE_SECONDS:
            return cached[1]
        data = encode_jpeg(self.renderer.render())
        self._jpeg = (now, data)
        return data

    async def snapshot(self) -> bytes:
        """render_jpeg() off the event loop; concurrent callers share one encode."""
        now = time.monotonic()
        if (cached := self._jpeg) is not None and now - cached[0] < JPEG_CACHE_SECONDS:
            return cached[1]
        if self._jpeg_pending is None or self._jpeg_pending.done():
            loop = asyncio.get_running_loop()
            self._jpeg_pending = loop.run_in_executor(None, self.render_jpeg)
        return await asyncio.shield(self._jpeg_pending)


def rtp_header(marker: bool, seq: int, ts: int, ssrc: int, payload_type: int = 96) -> bytes:
    """The 12-byte RTP fixed header (version 2, no padding, extension or CSRC)."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, seq, ts, ssrc)
