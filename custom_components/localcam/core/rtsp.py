"""RTSP camera I/O: a one-shot keyframe grab with PyAV and a light health check.

Both connect only to a ``netpolicy.Target`` (an address the policy checked);
callers never hand this module a raw URL. PyAV runs in a worker thread and is
bounded by FFmpeg's own socket timeout plus an interrupt deadline, so a hanging
camera costs at most the timeout and never blocks the event loop.

Which layer bounds what: PyAV's interrupt deadline bounds each single read
(it restarts on every read). The demux loops here bound the whole grab: they
read every stream's packets, so their deadline, packet, stop and linger
checks run whatever the camera sends (audio only, say), and skip what is not
video in Python. The async wrappers bound every awaiting caller with an
asyncio deadline of their own, and tell a thread that outlives it to stop.
"""

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
import functools
import hashlib
import logging
import os
import re
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from .errors import (
    CameraTimeoutError,
    CannotConnectError,
    CertificateError,
    InvalidAuthError,
    InvalidImageError,
    LocalCamError,
    NoVideoError,
    RedirectedError,
    StreamRefusedError,
    certificate_reason,
)
from .jpeg import MAX_DIMENSION, MAX_PIXELS, encode_bgr
from .models import RtspTransport, StreamInfo

if TYPE_CHECKING:
    from .netpolicy import Target

_LOGGER = logging.getLogger(__name__)

# Probing off: the codec parameters come from the SDP (sprop-parameter-sets),
# which saves the ~2.7 s libavformat spends analysing a live stream.
FAST_OPEN_OPTIONS: Final = {"analyzeduration": "0", "probesize": "32", "fpsprobesize": "0"}
# The grabs read H.264 and H.265 with the demuxer's parser off (see _Keyframes):
# the parser hands over an access unit only once the next one begins, a whole
# frame interval after its last byte arrived (100 ms at 10 fps).
_UNPARSED_OPTIONS: Final = {"fflags": "+noparse+nofillin"}
_ASSEMBLED_CODECS: Final = frozenset({"h264", "hevc"})
_AVFMT_FLAG_NOPARSE: Final = 0x20
# FFmpeg's AV_CODEC_FLAG2_CHUNKS: the H.264 decoder then takes a picture in
# pieces and returns it only once its last macroblock row is decoded.
_FLAG2_CHUNKS: Final = 1 << 15
# Early decodes of one keyframe before its next access unit shows it is whole
# (one per slice that may have ended); past this, it waits for that boundary.
_MAX_EARLY_TRIES: Final = 8
# Upper bound on one access unit's bytes (a 4K keyframe is 1-2 MB).
_MAX_UNIT_BYTES: Final = 32 * 1024 * 1024
# ... and on its pieces (RTP payloads; a 4K keyframe is ~1500): a camera
# sending a unit in tiny pieces would otherwise hold millions of objects
# for a warm session, within the byte bound.
_MAX_UNIT_PARTS: Final = 8192
# Upper bound on packets read while waiting for the first keyframe. Unparsed,
# a packet is one RTP payload (a 4K keyframe is ~1000 of them); a 4 s GOP at
# 30 fps with audio interleaved stays well below it.
_MAX_PACKETS: Final = 20000
# How long past its own timeout an awaiting caller waits for a grab thread.
# The thread checks its deadline on every packet, but a read that starts just
# before the deadline may run one more read timeout; the caller does not wait
# for that (the thread is told to stop and closes its container itself).
_GRAB_GRACE: Final = 1.0
_MAX_HEADER_LINES: Final = 64
_MAX_SDP_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class GrabbedFrame:
    """A keyframe decoded from the stream and encoded as JPEG."""

    info: StreamInfo
    jpeg: bytes
    received_at: float = field(default_factory=time.monotonic)  # when its packet arrived


def _translate_av_error(err: Exception, *, timed_out: bool) -> LocalCamError:
    """Map a PyAV/FFmpeg error to a core error, without the URL in it.

    When PyAV's interrupt deadline fires, FFmpeg's RTSP demuxer reports a
    generic "invalid data" error, so a timeout is recognised by the clock.
    """
    import av  # noqa: PLC0415 - heavy import, only in worker threads

    if isinstance(err, av.error.HTTPUnauthorizedError):
        return InvalidAuthError("camera answered 401 Unauthorized")
    if timed_out or isinstance(err, (av.error.ExitError, TimeoutError)):
        return CameraTimeoutError("camera did not answer in time")
    # FFmpeg messages name the URL it opened (with credentials): keep only
    # the error type.
    return CannotConnectError(f"stream could not be opened ({type(err).__name__})")


def _open_container(
    url: str, transport: RtspTransport, timeout: float, *, unparsed: bool = False
) -> Any:
    """Open an RTSP URL with probing off; raise NoVideoError without video.

    ``unparsed`` turns the RTSP demuxer's parser off (see _Keyframes), for
    H.264 and H.265 only: a stream in any other codec is opened again with
    it on, within what is left of ``timeout``.
    """
    import av  # noqa: PLC0415

    started = time.monotonic()
    unparsed = unparsed and url.startswith(("rtsp://", "rtsps://"))
    options = {
        **FAST_OPEN_OPTIONS,
        "rtsp_transport": transport.value,
        # FFmpeg's socket I/O timeout, in microseconds.
        "timeout": str(int(timeout * 1_000_000)),
    }
    if unparsed:
        options.update(_UNPARSED_OPTIONS)
    container = av.open(url, options=options, timeout=(timeout, timeout))
    if not container.streams.video:
        container.close()
        raise NoVideoError("stream has no video track")
    if unparsed and container.streams.video[0].codec_context.name not in _ASSEMBLED_CODECS:
        container.close()
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise CameraTimeoutError("no keyframe in time")
        return _open_container(url, transport, left)
    return container


def _unparsed(container: Any) -> bool:
    """Whether ``container`` hands over RTP payloads unparsed (RTSP with the parser off)."""
    return container.format.name == "rtsp" and bool(container.flags & _AVFMT_FLAG_NOPARSE)


def _check_size(width: int, height: int) -> None:
    """Refuse a frame size no JPEG of ours may have (0 means not known yet).

    The size comes from the camera's SPS. This layer refuses what
    validate_jpeg would refuse anyway, before the frame costs its memory:
    a 16384x16384 frame is 400 MB decoded and twice that as BGR.
    """
    if width > MAX_DIMENSION or height > MAX_DIMENSION or width * height > MAX_PIXELS:
        raise InvalidImageError(f"implausible size {width}x{height}", kind="bad_size")


def _prepare_decoder(codec: Any) -> None:
    """Decode keyframes only, single-threaded, never into a frame above MAX_PIXELS.

    A size the SDP or the probed packets declared is checked here, before
    the decoder opens; FFmpeg's own ``max_pixels`` refuses to allocate a
    bigger frame that an in-band SPS declares later.
    """
    _check_size(codec.width, codec.height)
    codec.skip_frame = "NONKEY"  # only keyframes are decoded at all
    codec.thread_count = 1  # frame threading would delay the first frame
    codec.options = {"max_pixels": str(MAX_PIXELS)}


def _decode_sized(codec: Any, packet: Any, *, drain: bool) -> Any | None:
    """_decode, then refuse a size the packet's in-band SPS declared (before any conversion).

    FFmpeg's h264 decoder does not fail on a frame above ``max_pixels``: it
    logs, allocates nothing and returns no frame, but it has read the size
    into the codec context, so the grab ends here instead of at its timeout.
    """
    frame = _decode(codec, packet, drain=drain)
    _check_size(codec.width, codec.height)
    if frame is not None:
        _check_size(frame.width, frame.height)
    return frame


def _decode_checked(codec: Any, packet: Any, *, drain: bool) -> Any | None:
    """_decode_sized, and no frame FFmpeg flags as concealed (_whole)."""
    return _whole(_decode_sized(codec, packet, drain=drain))


def _whole(frame: Any | None) -> Any | None:
    """``frame``, unless FFmpeg flags it as partly concealed: then None.

    FFmpeg's H.264 error concealment makes a whole picture out of a keyframe
    missing part of its data and flags it corrupt; such a keyframe is
    skipped, and the next one waited for. (Not every loss is flagged, and
    FFmpeg's H.265 decoder flags none: see _Keyframes.)
    """
    if frame is not None and frame.is_corrupt:
        _LOGGER.debug("Skipped a keyframe FFmpeg could decode only in part")
        return None
    return frame


def _decode(codec: Any, packet: Any, *, drain: bool) -> Any | None:
    """Decode one packet on its own; return its frame, or None.

    A decoder with reorder delay (B-frames declared in the SPS) holds a
    keyframe back; ``drain`` empties it, then resets it, because after a
    drain FFmpeg refuses every further packet (EOF) until it is reset: a
    warm session would otherwise die at its second keyframe.
    """
    frames = codec.decode(packet)
    if not frames and drain:
        frames = codec.decode(None)
        codec.flush_buffers()
    return frames[0] if frames else None


@dataclass(frozen=True, slots=True)
class _NalKinds:
    """What matters of a codec's NAL unit types here."""

    header: int  # bytes of NAL unit header
    vcl: range  # types that carry picture data
    key: range  # types of a picture decodable on its own (IDR; H.265: IRAP)
    # Non-VCL types that, after picture data, begin a new access unit: those
    # FFmpeg's own parsers split at (h264_find_frame_end, hevc_find_frame_end).
    starts_unit: frozenset[int]

    def nal_type(self, first: int) -> int:
        """The type in a NAL unit header's first byte."""
        return first & 0x1F if self.header == 1 else (first >> 1) & 0x3F


_H264: Final = _NalKinds(1, range(1, 6), range(5, 6), frozenset({6, 7, 8, 9}))
_H265: Final = _NalKinds(
    2, range(32), range(16, 24), frozenset({*range(32, 38), 39, *range(41, 45), *range(48, 56)})
)
_START_CODE: Final = b"\x00\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class _Payload:
    """The NAL units one unparsed payload starts, as FFmpeg's RTSP demuxer hands it over.

    The demuxer puts a 4-byte start code before each whole NAL unit and
    before the first piece of a fragmented one (FU-A, FU), with the unit's
    header; the other pieces come bare. The bytes of a NAL unit never hold a
    start code (emulation prevention), so each one found begins a NAL unit.
    """

    bare: bool  # a piece of a fragmented NAL unit other than its first
    body: int  # size without the start code and header: equal for all full pieces
    # It begins an access unit (the next one, after picture data). An
    # aggregate's NAL units share one timestamp: one unit's, so any of them
    # that begins a unit makes the payload begin it.
    new_unit: bool
    # Whether its first picture-data NAL unit is a picture's first slice
    # (None: it starts none).
    first_slice: bool | None
    key: bool  # it starts a keyframe's NAL unit
    slice: bool  # the last NAL unit it starts is picture data

    @classmethod
    def read(cls, data: bytes, kinds: _NalKinds) -> _Payload:
        """Look at the NAL units ``data`` starts."""
        if not data.startswith(_START_CODE) or len(data) < 4 + kinds.header:
            return cls(True, len(data), False, None, key=False, slice=False)
        first_slice: bool | None = None
        new_unit = key = vcl = False
        pos = 0
        # Each find moves on, so this ends within len(data) / 4 rounds.
        while pos >= 0 and pos + 4 + kinds.header <= len(data):
            nal = kinds.nal_type(data[pos + 4])
            vcl = nal in kinds.vcl
            # A slice's first bit after the header: first_mb_in_slice 0
            # (ue(v) "1") or first_slice_segment_in_pic_flag 1.
            first = vcl and pos + 4 + kinds.header < len(data)
            first = first and data[pos + 4 + kinds.header] & 0x80 != 0
            if vcl and first_slice is None:
                first_slice = first
            new_unit = new_unit or nal in kinds.starts_unit or first
            key = key or nal in kinds.key
            pos = data.find(_START_CODE, pos + 4)
        return cls(False, len(data) - 4 - kinds.header, new_unit, first_slice, key=key, slice=vcl)


class _Keyframes:
    """Decoded keyframes out of one video stream's packets, each as soon as it is whole.

    Parsed (the parser on: any codec but H.264 and H.265, or a file), each
    packet is one access unit, decoded as it comes; one flagged key is
    drained from a decoder that holds pictures back for reordering.

    Unparsed (RTSP H.264 and H.265, the demuxer's parser off), each packet is
    one RTP payload as it arrived: a whole NAL unit, or a piece of a
    fragmented one. They are joined in order into access units, a new one
    beginning where FFmpeg's parser would begin it: at a parameter set,
    delimiter or SEI after picture data, or at a picture's first slice.
    Timestamps play no part: FFmpeg may change one in the middle of a unit
    (at an RTCP sender report). A unit that does not begin with its
    picture's first slice (the first one of a session, joined mid-picture)
    is never decoded. A unit is decoded:

    - when the next one begins: it is then whole (the parser's own boundary,
      one frame interval after its last byte arrived);
    - H.264 only, earlier: after a keyframe payload known to end a slice's
      NAL unit. Packetizers cut a fragmented NAL unit into pieces of one size
      (all full, or all within a byte) but the last, so a piece two bytes or
      more shorter than the piece before it is the last; a payload with a
      start code shorter than half the largest piece seen is a whole NAL unit
      (a first piece is at least half a piece). The NAL units that came since
      go to the decoder in CHUNKS mode, which returns a picture once its last
      macroblock row is decoded: a picture of several slices goes in slice
      by slice, then, once whole, is decoded again in one piece (FFmpeg flags
      a picture taken in pieces as corrupt). Not with B-frames once the
      decoder knows of them (it holds pictures back): there the unit waits
      for its boundary. (A stream's first keyframe is fed before its SPS has
      told: a few wasted feeds, the same picture.)

    Which layer guarantees what: this class decodes early only a slice
    those rules say is whole (FFmpeg's CHUNKS mode takes one cut up to a few
    bytes short for whole, and flags nothing); ``_whole`` refuses a frame
    FFmpeg flags as concealed, early, at the boundary and when drained.
    tests/core/test_keyframes.py holds both to it. FFmpeg reads every
    stream over TCP from the relay, so from a camera set to TCP (the
    default) nothing is lost. A camera set to UDP can lose a payload on its
    way to the relay, which can make a wrong picture FFmpeg does not flag
    (H.265 flags none; H.264 most), as with FFmpeg's own parser.
    """

    def __init__(self, codec: Any, *, unparsed: bool) -> None:
        """Read ``codec``'s packets (its decoder already prepared)."""
        self._codec = codec
        self._unparsed = unparsed
        self._kinds = _H265 if codec.name == "hevc" else _H264
        self._early = unparsed and codec.name == "h264"
        if self._early:
            codec.flags2 |= _FLAG2_CHUNKS
        self._parts: list[bytes] = []
        self._size = 0
        self._first_slice: bool | None = None  # of the unit's first picture data
        self._key = False
        self._done = False
        self._fed = 0  # parts already fed to the decoder by early decodes
        self._tries = 0
        self._piece = 0  # body of the payload before, if of the same NAL unit
        self._full = 0  # the largest bare piece seen: a full piece
        self._slice = False  # the NAL unit in progress is picture data
        self._last_at = 0.0  # when the unit held got its latest packet
        # When the last keyframe returned was whole: its last packet's
        # arrival. Not when it was decoded: at the next unit's boundary that
        # is a frame interval later (a second at 1 fps, unbounded if the
        # camera stalls), and a still is aged from when its bytes arrived.
        self.completed_at = 0.0

    def push(self, packet: Any, arrived: float) -> Any | None:
        """Take the next packet (read at ``arrived``, monotonic); return a keyframe if whole."""
        if not self._unparsed:
            # FFmpeg's parser hands over a unit once whole: when it arrives.
            frame = _decode_checked(self._codec, packet, drain=packet.is_keyframe)
            if frame is not None:
                self.completed_at = arrived
            return frame
        data = bytes(packet)
        payload = _Payload.read(data, self._kinds)
        frame = None
        if payload.new_unit and self._first_slice is not None:
            frame = self.end()  # the unit held, whole since its last packet (completed_at)
        if self._first_slice is None:
            self._first_slice = payload.first_slice
        self._last_at = arrived
        self._parts.append(data)
        self._size += len(data)
        if self._size > _MAX_UNIT_BYTES or len(self._parts) > _MAX_UNIT_PARTS:
            raise InvalidImageError("access unit too large", kind="too_large")
        self._key = self._key or payload.key
        if payload.bare:
            # A piece shorter than the one before it ends its NAL unit.
            short = payload.body < self._piece - 1
            self._full = max(self._full, payload.body)
        else:
            # A whole NAL unit (or the first piece of one): whole only if
            # shorter than half a full piece, which no first piece is.
            short = 2 * payload.body < self._full
            self._slice = payload.slice
        self._piece = payload.body
        if (
            frame is None
            and self._early
            and self._key
            and self._first_slice
            and self._slice
            and short
            and not self._done
            and not self._codec.has_b_frames
            and self._tries < _MAX_EARLY_TRIES
        ):
            frame = self._feed()
            if frame is not None:
                self.completed_at = arrived
        return frame

    def _feed(self) -> Any | None:
        """Feed the NAL units that came since the last feed; the picture, once whole."""
        import av  # noqa: PLC0415

        self._tries += 1
        chunk = b"".join(self._parts[self._fed :])
        self._fed = len(self._parts)
        try:
            whole = _decode_sized(self._codec, av.Packet(chunk), drain=False) is not None
        except av.FFmpegError:  # the boundary decodes the whole unit again
            return None
        if not whole:
            return None
        # FFmpeg flags a picture it took in pieces as corrupt, whole or not:
        # decoded again in one piece, from a clean decoder, its flag tells.
        self._codec.flush_buffers()
        frame = _decode_checked(self._codec, av.Packet(b"".join(self._parts)), drain=False)
        self._done = frame is not None
        return frame

    def end(self) -> Any | None:
        """The unit held is whole (the next began, or the stream ended): decode it, start anew."""
        import av  # noqa: PLC0415

        frame = None
        if self._first_slice and not self._done:
            if self._fed:  # early feeds left part of this picture in the decoder
                self._codec.flush_buffers()
            frame = _decode_checked(self._codec, av.Packet(b"".join(self._parts)), drain=False)
            if frame is None and (self._key or self._codec.has_b_frames):
                # Held back for reordering (an open-GOP I-frame too, which no
                # NAL type marks): drained, then reset (after a drain FFmpeg
                # refuses every packet until reset), as _decode does.
                frames = self._codec.decode(None)
                self._codec.flush_buffers()
                frame = _whole(frames[0]) if frames else None
            if frame is not None:
                self.completed_at = self._last_at
        self._parts = []
        self._size = 0
        self._first_slice = None
        self._key = self._done = False
        self._fed = self._tries = 0
        return frame


def grab_keyframe(
    url: str,
    *,
    transport: RtspTransport = RtspTransport.TCP,
    timeout: float = 5.0,
    encode: bool = True,
    stop: threading.Event | None = None,
) -> GrabbedFrame:
    """Open the stream, decode its first keyframe and encode it (blocking).

    ``url`` is a pinned URL and may carry credentials: it is never logged and
    never put in an exception. The call is bounded by ``timeout`` (checked on
    every packet of any stream, plus at most one read timeout for a read in
    flight), and ends at the next packet once ``stop`` is set.
    """
    import av  # noqa: PLC0415

    deadline = time.monotonic() + timeout

    def timed_out() -> bool:
        """Whether PyAV's interrupt deadline has fired (allowing for jitter)."""
        return time.monotonic() >= deadline - 0.05

    try:
        container = _open_container(url, transport, timeout, unparsed=True)
    except (av.FFmpegError, OSError) as err:
        raise _translate_av_error(err, timed_out=timed_out()) from None
    try:
        stream = container.streams.video[0]
        codec = stream.codec_context
        _prepare_decoder(codec)
        keyframes = _Keyframes(codec, unparsed=_unparsed(container))
        frame = None
        # Every stream's packets: demux(stream) would drop the others in C,
        # where none of these checks run (an audio-only flood never ended).
        for count, packet in enumerate(container.demux()):
            if (
                count >= _MAX_PACKETS
                or time.monotonic() > deadline
                or (stop is not None and stop.is_set())
            ):
                raise CameraTimeoutError("no keyframe in time")
            if packet.stream_index != stream.index:
                continue
            # Non-key packets too: a demuxer may not flag every keyframe.
            # An empty packet ends the stream: the unit held is whole.
            arrived = time.monotonic()
            frame = keyframes.push(packet, arrived) if packet.size else keyframes.end()
            if frame is not None:
                received = keyframes.completed_at
                break
        if frame is None:
            raise NoVideoError("stream ended before a video frame")
        info = StreamInfo(codec=codec.name, width=frame.width, height=frame.height)
        jpeg = encode_bgr(frame.to_ndarray(format="bgr24")) if encode else b""
        return GrabbedFrame(info=info, jpeg=jpeg, received_at=received)
    except (av.FFmpegError, OSError) as err:
        raise _translate_av_error(err, timed_out=timed_out()) from None
    finally:
        container.close()


async def async_grab_keyframe(
    url: str,
    *,
    transport: RtspTransport = RtspTransport.TCP,
    timeout: float = 5.0,
    encode: bool = True,
) -> GrabbedFrame:
    """Run grab_keyframe in the default executor, bounded here as well.

    The caller waits ``timeout`` plus a short grace at most, whatever the
    thread does; a thread still running then (or when the caller is
    cancelled) is told to stop, and closes its container itself at its next
    packet or read timeout (only that thread may touch its container).
    """
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    job = loop.run_in_executor(
        None,
        lambda: grab_keyframe(url, transport=transport, timeout=timeout, encode=encode, stop=stop),
    )
    try:
        async with asyncio.timeout(timeout + _GRAB_GRACE):
            return await job
    except TimeoutError:
        raise CameraTimeoutError("no keyframe in time") from None
    finally:
        stop.set()


@dataclass(frozen=True, slots=True)
class SessionTiming:
    """How long one warm session took to start, in seconds from when it was asked for."""

    opened_in: float  # FFmpeg had the stream open: RTSP handshake and first packet
    first_keyframe_in: float  # its first keyframe decoded and encoded as JPEG

    def as_dict(self) -> dict[str, float]:
        """Rounded to the millisecond, for diagnostics."""
        return {
            "opened_in_seconds": round(self.opened_in, 3),
            "first_keyframe_in_seconds": round(self.first_keyframe_in, 3),
        }


class _SessionEndedError(CannotConnectError):
    """The warm session closed (linger over) while a request was arriving."""


class WarmGrabber:
    """Keyframe grabs that share one RTSP session during a burst of requests.

    The first grab opens the stream (probing off) in a worker thread; the
    session then stays open for ``linger`` seconds after the last request,
    decoding only keyframes (one per GOP), so the next requests get a keyframe
    without a new RTSP handshake. It closes by itself. Every frame carries the
    time its packet arrived, so its age is honest: a caller that accepts the
    session's latest keyframe (``fresh_within``) gets it at once only while it
    is that young, else the next one. Never an older frame.

    A session plays from one URL (pinned to one checked address). This class
    guarantees that a grab only ever gets frames of a session opened on the
    very URL it asked for: a grab for another URL (the host name now points
    elsewhere, or a session was left on a device whose frame the caller
    refused) ends the old session and opens a new one; the old session's
    frames, kept or still arriving, are never handed out.
    """

    def __init__(
        self,
        *,
        transport: RtspTransport = RtspTransport.TCP,
        linger: float = 5.0,
    ) -> None:
        """Configure the session."""
        self._transport = transport
        self._linger = linger
        self._waiters: list[asyncio.Future[GrabbedFrame]] = []
        self._wanted = threading.Event()
        # The current session's stop flag; each session gets its own, so one
        # that outlives close() stays told to stop when a new one opens.
        self._stop = threading.Event()
        self._last_request = 0.0
        self._session: asyncio.Future[None] | None = None
        # The URL the current session plays from (a secret: never log it).
        self._url: str | None = None
        # Sessions ended for another URL whose threads may still be winding
        # down: close() waits for them too, so an unload leaves none behind.
        self._retired: set[asyncio.Future[None]] = set()
        # Which session is current; a finished session's late calls are ignored.
        self._generation = 0
        # The open session's most recent keyframe (read and written in the loop).
        self._latest: GrabbedFrame | None = None
        self.sessions_opened = 0
        # The latest session to deliver a keyframe: seconds from asking for it
        # until FFmpeg had it open (RTSP handshake, first packet), and until
        # its first keyframe was a JPEG (diagnostics: how slow a camera opens).
        self.last_session: SessionTiming | None = None
        # When the open session last read a packet from the camera (monotonic;
        # written by its thread): a session between keyframes is not a hang.
        self.last_packet_at: float | None = None

    @property
    def active(self) -> bool:
        """Whether a session is open right now."""
        return self._session is not None and not self._session.done()

    async def grab(
        self,
        url: str,
        timeout: float,
        *,
        fresh_within: float = 0.0,
    ) -> GrabbedFrame:
        """Return a keyframe played from ``url`` (opening a session on it if needed).

        ``url`` is the stream URL pinned to the address the caller just
        checked: it is never resolved again here. The open session's latest
        keyframe if that session plays from ``url`` and the keyframe arrived
        at most ``fresh_within`` seconds ago (a warm burst gets it at once,
        not one GOP later); otherwise the NEXT keyframe from ``url``. The
        cache above still checks every frame's age against its max age when
        serving it.
        """
        loop = asyncio.get_running_loop()
        self._last_request = now = time.monotonic()
        self._retire_unless(url)
        latest = self._latest
        if fresh_within > 0 and latest is not None and now - latest.received_at <= fresh_within:
            return latest
        try:
            async with asyncio.timeout(timeout):
                # A session that ends (linger over) just as this request joins
                # it gets one new session; any other error is the answer.
                for attempt in range(2):
                    try:
                        return await self._next(loop, url, timeout)
                    except _SessionEndedError:
                        if attempt:
                            raise
        except TimeoutError:
            raise CameraTimeoutError("no keyframe in time") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _retire_unless(self, url: str) -> None:
        """End the open session unless it plays from ``url``; forget its frames.

        Its stop flag ends its thread; the new generation makes its late
        deliveries (and its end) no-ops; ``_latest`` goes with it. Grabs still
        waiting on it wanted frames from the old URL and get an error, never a
        frame of the new one (nor of the old one, which they can no longer tell
        apart from a frame of wherever the host name points now).
        """
        if self._url is None or self._url == url:
            return
        self._stop.set()
        self._generation += 1
        if (session := self._session) is not None and not session.done():
            self._retired.add(session)
            session.add_done_callback(self._retired.discard)
        self._session = None
        self._url = None
        self._latest = None
        self._fail(CannotConnectError("the camera's stream address changed during the grab"))

    async def _next(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        timeout: float,
    ) -> GrabbedFrame:
        """Wait for the next keyframe of the session on ``url``."""
        # Between attempts another grab may have moved the session elsewhere.
        self._retire_unless(url)
        waiter: asyncio.Future[GrabbedFrame] = loop.create_future()
        self._waiters.append(waiter)
        self._wanted.set()
        try:
            if not self.active:
                self._open(loop, url, timeout)
            return await asyncio.shield(waiter)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not self._waiters:
                self._wanted.clear()

    def _open(self, loop: asyncio.AbstractEventLoop, url: str, timeout: float) -> None:
        """Start the session thread."""
        self._stop = stop = threading.Event()
        self.sessions_opened += 1
        self._generation += 1
        self._url = url
        self._latest = None
        self.last_packet_at = None
        self._session = loop.run_in_executor(
            None, self._run, loop, url, timeout, self._generation, stop, time.monotonic()
        )
        self._session.add_done_callback(lambda _f: None)

    def _fail(self, error: LocalCamError) -> None:
        """Hand an error to every waiter (in the loop)."""
        waiters, self._waiters = self._waiters, []
        self._wanted.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()

    def _deliver(
        self, generation: int, frame: GrabbedFrame, timing: SessionTiming | None = None
    ) -> None:
        """A keyframe arrived: keep it as the latest and hand it to every waiter."""
        if generation != self._generation:
            return
        if timing is not None:
            self.last_session = timing
        self._latest = frame
        waiters, self._waiters = self._waiters, []
        self._wanted.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(frame)

    def _ended(self, generation: int, error: LocalCamError | None) -> None:
        """The session is over: its frames go with it; its waiters get an error."""
        if generation != self._generation:
            return
        self._latest = None
        self._session = None
        self._url = None
        if self._waiters:
            self._fail(error or _SessionEndedError("session closed"))

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        url: str,
        timeout: float,
        generation: int,
        stop: threading.Event,
        asked: float,
    ) -> None:
        """Session thread: demux; decode and encode each keyframe while warm.

        ``asked`` is when the loop asked for the session (the executor's queue
        counts towards the timing it reports with the first keyframe).
        """
        import av  # noqa: PLC0415

        error: LocalCamError | None = None
        container: Any = None
        open_deadline = time.monotonic() + timeout
        timing: SessionTiming | None = None
        try:
            container = _open_container(url, self._transport, timeout, unparsed=True)
            opened_in = time.monotonic() - asked
            stream = container.streams.video[0]
            codec = stream.codec_context
            _prepare_decoder(codec)
            keyframes = _Keyframes(codec, unparsed=_unparsed(container))
            # Every stream's packets, so the stop and linger checks run on
            # each one (see grab_keyframe); only video is decoded.
            for packet in container.demux():
                now = time.monotonic()
                if generation == self._generation:
                    self.last_packet_at = now
                if stop.is_set() or (
                    not self._wanted.is_set() and now - self._last_request > self._linger
                ):
                    break
                # Only keyframes are decoded (the decoder skips the rest),
                # only while the session is warm (it closes after the linger).
                if packet.stream_index != stream.index:
                    continue
                if (
                    frame := keyframes.push(packet, now) if packet.size else keyframes.end()
                ) is None:
                    continue
                grabbed = GrabbedFrame(
                    info=StreamInfo(codec=codec.name, width=frame.width, height=frame.height),
                    jpeg=encode_bgr(frame.to_ndarray(format="bgr24")),
                    received_at=keyframes.completed_at,
                )
                first = None  # the timing goes with the session's first keyframe only
                if timing is None:
                    timing = first = SessionTiming(opened_in, time.monotonic() - asked)
                loop.call_soon_threadsafe(self._deliver, generation, grabbed, first)
            else:
                # A session that showed video and then ended was closed by the
                # camera (a drop, a reboot): its connection ended, not its
                # video. Waiting grabs get one new session, as at the linger's end.
                error = (
                    NoVideoError("stream ended")
                    if timing is None
                    else _SessionEndedError("the camera closed the stream")
                )
        except LocalCamError as err:
            error = err
        except (av.FFmpegError, OSError) as err:
            timed_out = container is None and time.monotonic() >= open_deadline - 0.05
            error = _translate_av_error(err, timed_out=timed_out)
        finally:
            if container is not None:
                container.close()
            loop.call_soon_threadsafe(self._ended, generation, error)

    async def close(self) -> None:
        """Stop the session (entry unload); bounded by FFmpeg's read timeout."""
        self._stop.set()
        sessions = {*self._retired} if self._session is None else {*self._retired, self._session}
        if pending := {session for session in sessions if not session.done()}:
            # wait neither cancels the sessions (their threads end on the stop
            # flags) nor raises their errors (those went to their waiters).
            await asyncio.wait(pending, timeout=10)
        self._latest = None
        self._fail(CannotConnectError("camera closed"))


# ---------------------------------------------------------------------------
# Health check: one RTSP DESCRIBE, authenticated like FFmpeg would.


# WWW-Authenticate (RFC 7235) is read by a hand-written scanner whose work is
# linear in the header's length: the header is untrusted camera input, parsed
# in the event loop (where asyncio.timeout cannot interrupt it) and parsed
# again before each health check while RtspAuthMemory holds it. What lies
# beyond these bounds is ignored, never an error: a value longer than
# _MAX_CHALLENGE_CHARS is skipped whole (a cut challenge could be misread),
# and only the first headers, challenges and parameters count.
_MAX_CHALLENGE_CHARS: Final = 4096
_MAX_CHALLENGE_HEADERS: Final = 8
_MAX_CHALLENGES: Final = 8
_MAX_AUTH_PARAMS: Final = 16
_TCHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# token68 (a Negotiate blob, say) adds "/" and "+" to ALPHA DIGIT "-._~".
_TOKEN68_CHARS: Final = frozenset(
    "-._~+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_SPACE: Final = frozenset(" \t")
_EQUALS: Final = frozenset("=")
# An unquoted parameter value ends here. Wider than a token: some cameras send
# a bare base64 nonce, which holds "/", "+" and "=".
_BARE_VALUE_END: Final = frozenset(' \t,"')

type Challenge = tuple[str, dict[str, str]]


def _scan(value: str, pos: int, chars: frozenset[str]) -> int:
    """Return where the run of ``chars`` starting at ``pos`` ends."""
    end = len(value)
    while pos < end and value[pos] in chars:
        pos += 1
    return pos


def _scan_until(value: str, pos: int, stops: frozenset[str]) -> int:
    """Return the position of the first of ``stops`` from ``pos`` on (or the end)."""
    end = len(value)
    while pos < end and value[pos] not in stops:
        pos += 1
    return pos


def _scan_quoted(value: str, pos: int) -> tuple[str, int] | None:
    """Read the quoted-string opening at ``pos``: its text and end, or None if unclosed."""
    chars: list[str] = []
    pos, end = pos + 1, len(value)
    while pos < end:
        char = value[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\" and pos + 1 < end:  # quoted-pair: the next char, literally
            pos += 1
            char = value[pos]
        chars.append(char)
        pos += 1
    return None


def _parse_header(value: str) -> list[Challenge]:
    """Split one WWW-Authenticate value into its challenges: (scheme, parameters)."""
    challenges: list[Challenge] = []
    params: dict[str, str] | None = None  # the parameters of the challenge being read
    pos, end = 0, len(value)
    # Every step moves ``pos`` forward and no character is scanned more than
    # a few times: linear whatever the camera sends.
    while pos < end:
        if value[pos] in _SPACE or value[pos] == ",":
            pos += 1
            continue
        token_end = _scan(value, pos, _TCHARS)
        if token_end == pos:
            # Not a token: skip this list element rather than guess at it.
            comma = value.find(",", pos)
            pos = end if comma < 0 else comma
            continue
        name = value[pos:token_end].lower()
        pos = _scan(value, token_end, _SPACE)
        if pos < end and value[pos] == "=":
            # An auth-param: token BWS "=" BWS (token / quoted-string).
            pos = _scan(value, pos + 1, _SPACE)
            if pos < end and value[pos] == '"':
                if (quoted := _scan_quoted(value, pos)) is None:
                    break  # an unclosed quote: nothing after it can be trusted
                text, pos = quoted
            else:
                start, pos = pos, _scan_until(value, pos, _BARE_VALUE_END)
                text = value[start:pos]
            # RFC 7235 allows each name once per challenge: the first one counts.
            if params is not None and name not in params and len(params) < _MAX_AUTH_PARAMS:
                params[name] = text
            continue
        # A token not followed by "=" is an auth-scheme: a new challenge (the
        # rule core/http.py's _AUTH_SCHEME_RE applies too).
        if len(challenges) == _MAX_CHALLENGES:
            break
        params = {}
        challenges.append((name, params))
        blob_end = _scan(value, _scan(value, pos, _TOKEN68_CHARS), _EQUALS)
        after = _scan(value, blob_end, _SPACE)
        if blob_end > pos and (after == end or value[after] == ","):
            pos = after  # a token68 instead of parameters: nothing we answer
    return challenges


def _parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse a 401's WWW-Authenticate values, within the bounds above."""
    challenges: list[Challenge] = []
    for value in values[:_MAX_CHALLENGE_HEADERS]:
        if len(value) <= _MAX_CHALLENGE_CHARS:
            challenges += _parse_header(value)
    return challenges[:_MAX_CHALLENGES]


# Bytes the camera sent that are not UTF-8 are kept as surrogates (PEP 383), so
# a realm or nonce goes into the hashes and back to the camera byte for byte,
# as FFmpeg (the stream's client) sends them.
_BYTES: Final = "surrogateescape"


def _md5(text: str) -> str:
    """MD5 of ``text``'s bytes as they came (RFC 2617's H)."""
    return hashlib.md5(text.encode("utf-8", _BYTES)).hexdigest()  # noqa: S324 - RFC 2617


def _quote(text: str) -> str:
    """Quote a value the camera sent as a quoted-string, escaped as it must be."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _authorization(
    challenges: list[str], method: str, uri: str, username: str, password: str, nc: int = 1
) -> str | None:
    """Answer the strongest offered challenge: Digest whenever offered, else Basic.

    ``nc`` is the how-many-th answer to the same nonce (RFC 7616), for a
    remembered challenge answered again. A camera that offers Digest never
    gets the password in cleartext, even when it offers Basic too.
    """
    parsed = _parse_challenges(challenges)
    digests = [params for scheme, params in parsed if scheme == "digest"]
    for params in digests:
        # Only MD5 and MD5-sess Digest are answered (as FFmpeg, the stream's
        # client, does): an MD5 hash sent for a SHA-256 challenge listed
        # first (RFC 7616 order) is refused, and the health check would call
        # working credentials wrong.
        algorithm = params.get("algorithm", "MD5").upper()
        if "nonce" not in params or algorithm not in ("MD5", "MD5-SESS"):
            continue
        realm, nonce = params.get("realm", ""), params["nonce"]
        cnonce = os.urandom(8).hex()
        ha1 = _md5(f"{username}:{realm}:{password}")
        if algorithm == "MD5-SESS":
            ha1 = _md5(f"{ha1}:{nonce}:{cnonce}")
        ha2 = _md5(f"{method}:{uri}")
        fields = f'username="{username}", realm={_quote(realm)}, nonce={_quote(nonce)}'
        fields += f', uri="{uri}"'
        if algorithm == "MD5-SESS":
            fields += f", algorithm={params['algorithm']}"  # a token, echoed as sent
        qop = {option.strip().lower() for option in params.get("qop", "").split(",")}
        if "auth" in qop:
            count = f"{nc:08x}"
            response = _md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
            fields += f', qop=auth, nc={count}, cnonce="{cnonce}"'
        else:
            response = _md5(f"{ha1}:{nonce}:{ha2}")
            if algorithm == "MD5-SESS":  # the server needs the cnonce to check HA1
                fields += f', cnonce="{cnonce}"'
        if opaque := params.get("opaque"):
            fields += f", opaque={_quote(opaque)}"
        return f'Digest {fields}, response="{response}"'
    if not digests and any(scheme == "basic" for scheme, _ in parsed):
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        return f"Basic {token}"
    return None


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Read one RTSP response: status, headers and (bounded) body."""
    status_line = (await reader.readline()).decode("utf-8", _BYTES).strip()
    match = re.match(r"RTSP/1\.\d (\d{3})", status_line)
    if not match:
        raise CannotConnectError("not an RTSP server")
    headers: list[tuple[str, str]] = []
    for _ in range(_MAX_HEADER_LINES):
        line = (await reader.readline()).decode("utf-8", _BYTES)
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    else:
        raise CannotConnectError("too many RTSP headers")
    length = next((int(v) for k, v in headers if k == "content-length" and v.isdigit()), 0)
    if length > _MAX_SDP_BYTES:
        raise CannotConnectError("RTSP body too large")
    body = await reader.readexactly(length) if length else b""
    return int(match.group(1)), headers, body


@dataclass(slots=True)
class RtspAuthMemory:
    """A camera's last RTSP authentication challenge, answered at once next time.

    Without it every health check costs the camera two DESCRIBEs: a bare one
    that draws the 401 with its challenge, then the authorised one. With it
    the next DESCRIBE carries the answer to the remembered challenge (the
    Digest nonce with the next nonce count, or Basic where the camera asked
    for Basic): one request while the camera honours the nonce. Bound to the
    address and port it was learnt from. When the camera refuses the
    remembered answer (an expired nonce, or one it allows only once), the
    fresh challenge of that 401 is answered instead, so there are never more
    requests than without it, and only a refused fresh answer counts as wrong
    credentials (describe guarantees this).
    """

    origin: tuple[str, int] | None = None
    challenges: list[str] = field(default_factory=list)
    uses: int = 0

    def learn(self, origin: tuple[str, int], challenges: list[str]) -> None:
        """Keep a challenge just answered once (its nonce count is 1)."""
        self.origin, self.challenges, self.uses = origin, challenges, 1

    def forget(self) -> None:
        """Start over with a bare request next time."""
        self.origin, self.challenges, self.uses = None, [], 0


@functools.cache
def client_ssl_context(verify: bool) -> ssl.SSLContext:
    """The rtsps client context, verifying or not (blocking: reads the CA bundle).

    Built once per setting and shared by every health check: creating one
    reads the system CA bundle from disk, which must not happen in the event
    loop (describe calls this through the executor). Never changed after it
    is built, so sharing it across cameras is safe.
    """
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def describe(
    target: Target,
    *,
    username: str | None = None,
    password: str | None = None,
    verify_ssl: bool = True,
    timeout: float = 5.0,
    auth_memory: RtspAuthMemory | None = None,
    before_send: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Check that the camera answers DESCRIBE with a video SDP.

    ``before_send`` runs once the connection is open, before a byte is sent
    (the identity layer's link check: see ``CameraClient.guard_credentials``);
    what it raises ends the check, nothing sent.

    This is the light health request (one TCP connection, no media; one
    DESCRIBE while ``auth_memory`` holds a challenge the camera still
    honours). A 401 that our credentials do not clear raises
    InvalidAuthError, which the glue turns into a reauth flow; one whose only
    challenges are too long to read raises CannotConnectError.
    """
    uri = str(target.url)
    origin = (str(target.address), target.port)
    ssl_context: ssl.SSLContext | None = None
    if target.url.scheme == "rtsps":
        # Built (CA bundle read) in a worker thread, once per setting.
        ssl_context = await asyncio.get_running_loop().run_in_executor(
            None, client_ssl_context, verify_ssl
        )
    memory = auth_memory if username is not None else None
    authorization: str | None = None
    remembered = False
    oversized = False  # a challenge too long to read: the camera's fault, not ours
    if memory is not None and memory.origin == origin and memory.challenges:
        memory.uses += 1
        authorization = _authorization(
            memory.challenges, "DESCRIBE", uri, username or "", password or "", nc=memory.uses
        )
        remembered = authorization is not None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                str(target.address),
                target.port,
                ssl=ssl_context,
                server_hostname=target.host if ssl_context else None,
            )
            if before_send is not None:
                await before_send()
            for cseq in (1, 2):
                request = f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: {cseq}\r\nAccept: application/sdp\r\n"
                request += "User-Agent: LocalCam\r\n"
                if authorization:
                    request += f"Authorization: {authorization}\r\n"
                writer.write((request + "\r\n").encode("utf-8", _BYTES))
                await writer.drain()
                status, headers, body = await _read_response(reader)
                if status == 401 and (authorization is None or remembered) and username is not None:
                    # A bare request's challenge, or a refused remembered
                    # answer: answer this 401's own challenge, once.
                    remembered = False
                    challenges = [v for k, v in headers if k == "www-authenticate"]
                    authorization = _authorization(
                        challenges, "DESCRIBE", uri, username, password or ""
                    )
                    if authorization is None:
                        # A 401 we cannot answer: InvalidAuthError below, unless
                        # a challenge was skipped for its length (then nothing
                        # says the credentials are wrong, so no reauth).
                        oversized = any(len(v) > _MAX_CHALLENGE_CHARS for v in challenges)
                        break
                    if memory is not None:
                        memory.learn(origin, challenges)
                    continue
                break
    except TimeoutError:
        raise CameraTimeoutError("camera did not answer DESCRIBE in time") from None
    except ssl.SSLCertVerificationError as err:
        raise CertificateError(certificate_reason(err)) from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as err:
        raise CannotConnectError(f"RTSP connection failed ({type(err).__name__})") from None
    finally:
        if writer is not None:
            writer.close()
    if status == 401:
        if memory is not None:
            memory.forget()
        if oversized:
            raise CannotConnectError("camera sent an oversized RTSP auth challenge")
        raise InvalidAuthError("camera answered 401 Unauthorized")
    if 300 <= status < 400:
        raise RedirectedError(status)
    if status != 200:
        raise StreamRefusedError(f"camera answered RTSP {status}")
    if b"m=video" not in body:
        raise NoVideoError("the camera's SDP has no video")
