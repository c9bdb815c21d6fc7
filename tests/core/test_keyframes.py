"""core.rtsp._Keyframes: keyframes out of FFmpeg's unparsed RTP payloads, each once it is whole.

The payloads are made here as FFmpeg's RTSP demuxer hands them over with its
parser off (a start code and header before each whole NAL unit and before a
fragmented one's first piece, the other pieces bare), from pictures encoded
with libx264 and libx265. Every frame is compared with the same access unit
decoded whole by a fresh decoder.
"""

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from custom_components.localcam.core import rtsp
from custom_components.localcam.core.errors import InvalidImageError
from custom_components.localcam.core.rtsp import _Keyframes, _prepare_decoder
from virtualcam.media import split_annexb

WIDTH, HEIGHT = 640, 352
PIECE = 1200  # bytes of NAL unit per RTP payload (FU-A / FU fragments)


@dataclass(frozen=True, slots=True)
class Payload:
    """What PyAV's demux() yields for one RTP payload (the parts _Keyframes reads)."""

    data: bytes
    pts: int
    is_keyframe: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data


def _picture(index: int) -> np.ndarray:
    """A picture whose every region differs, so a missing slice would show."""
    rows, cols = np.indices((HEIGHT, WIDTH))
    image = np.stack([rows % 256, cols % 256, (rows + cols + 40 * index) % 256], axis=-1)
    return image.astype(np.uint8)


def _noise(index: int) -> np.ndarray:
    """A picture no encoder compresses well: its keyframe is hundreds of pieces."""
    return np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)


def _encode(
    codec_name: str, frames: int, *, slices: int = 1, picture: Any = _picture
) -> list[bytes]:
    """Access units (Annex B) of ``frames`` pictures; a keyframe every second one."""
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = Fraction(1, 10)
    if codec_name == "libx264":
        codec.options = {
            "x264-params": f"keyint=2:min-keyint=2:scenecut=0:bframes=0:slices={slices}",
            "threads": "1",
        }
    else:
        codec.options = {
            "x265-params": "keyint=2:min-keyint=2:scenecut=0:bframes=0:log-level=error",
        }
    units: list[bytes] = []
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(picture(index), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = index
        units += [bytes(packet) for packet in codec.encode(frame)]
    units += [bytes(packet) for packet in codec.encode(None)]
    assert len(units) == frames
    return units


def _payloads(unit: bytes, pts: int, *, header: int) -> list[Payload]:
    """One access unit as the demuxer hands it over unparsed, NAL units above PIECE in pieces."""
    out: list[Payload] = []
    for nal in split_annexb(unit):
        head, body = nal[:header], nal[header:]
        pieces = [body[i : i + PIECE] for i in range(0, len(body), PIECE)] or [b""]
        out.append(Payload(b"\x00\x00\x00\x01" + head + pieces[0], pts))
        out += [Payload(piece, pts) for piece in pieces[1:]]
    return out


def _reference(decoder_name: str, unit: bytes) -> np.ndarray:
    """The unit decoded whole by a fresh decoder."""
    codec = av.CodecContext.create(decoder_name, "r")
    frames = codec.decode(av.Packet(unit)) or codec.decode(None)
    return frames[0].to_ndarray(format="rgb24")


def _reader(decoder_name: str) -> _Keyframes:
    codec: Any = av.CodecContext.create(decoder_name, "r")
    _prepare_decoder(codec)
    return _Keyframes(codec, unparsed=True)


@pytest.mark.parametrize("slices", [1, 4])
def test_a_keyframe_decodes_with_its_last_payload_and_not_before(slices: int) -> None:
    """An H.264 keyframe in one slice or four, each in pieces: the whole picture, at its last piece.

    Nothing comes out of part of it (a slice or three), and the next unit
    is not needed: the frame comes before it begins.
    """
    units = _encode("libx264", 1, slices=slices)
    payloads = _payloads(units[0], 0, header=1)
    assert sum(p.data.startswith(b"\x00\x00\x00\x01") for p in payloads) >= slices + 2
    reader = _reader("h264")
    got = [reader.push(payload) for payload in payloads]
    assert got[:-1] == [None] * (len(payloads) - 1)
    assert got[-1] is not None
    assert np.array_equal(got[-1].to_ndarray(format="rgb24"), _reference("h264", units[0]))


@pytest.mark.parametrize("slices", [1, 4])
def test_a_keyframe_in_hundreds_of_pieces_is_decoded_once_per_slice(
    slices: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a piece shorter than a full one may end a slice: one decode per slice, not per piece."""
    decodes: list[bool] = []
    real_decode = rtsp._decode

    def decode(*args: Any, **kwargs: Any) -> Any:
        frame = real_decode(*args, **kwargs)
        decodes.append(frame is not None)
        return frame

    monkeypatch.setattr(rtsp, "_decode", decode)
    units = _encode("libx264", 1, slices=slices, picture=_noise)
    payloads = _payloads(units[0], 0, header=1)
    assert len(payloads) > 100
    reader = _reader("h264")
    got = [reader.push(payload) for payload in payloads]
    assert got[-1] is not None
    assert np.array_equal(got[-1].to_ndarray(format="rgb24"), _reference("h264", units[0]))
    assert decodes == [False] * (slices - 1) + [True]


@pytest.mark.parametrize("slices", [1, 4])
def test_a_keyframe_missing_its_last_piece_makes_no_picture(slices: int) -> None:
    """A keyframe whose last piece never came: no picture of it; the next keyframe decodes."""
    units = _encode("libx264", 3, slices=slices)
    reader = _reader("h264")
    truncated = _payloads(units[0], 0, header=1)[:-1]
    following = _payloads(units[1], 3000, header=1)  # a P-frame
    assert [reader.push(p) for p in truncated + following] == [None] * (
        len(truncated) + len(following)
    )
    assert reader.end() is None
    frames = [reader.push(p) for p in _payloads(units[2], 6000, header=1)]
    assert frames[-1] is not None
    assert np.array_equal(frames[-1].to_ndarray(format="rgb24"), _reference("h264", units[2]))


def test_an_h265_keyframe_comes_when_the_next_unit_begins() -> None:
    """H.265 (no early decode): the keyframe comes with the next unit's first payload, whole."""
    units = _encode("libx265", 2)
    reader = _reader("hevc")
    first = _payloads(units[0], 0, header=2)
    assert [reader.push(p) for p in first] == [None] * len(first)
    frame = reader.push(_payloads(units[1], 3000, header=2)[0])
    assert frame is not None
    assert np.array_equal(frame.to_ndarray(format="rgb24"), _reference("hevc", units[0]))


def test_the_stream_end_completes_the_unit_held() -> None:
    """The last unit of a stream that ends is whole: end() decodes it."""
    units = _encode("libx265", 1)
    reader = _reader("hevc")
    assert [reader.push(p) for p in _payloads(units[0], 0, header=2)] == [None] * len(
        _payloads(units[0], 0, header=2)
    )
    frame = reader.end()
    assert frame is not None
    assert np.array_equal(frame.to_ndarray(format="rgb24"), _reference("hevc", units[0]))


def test_units_are_told_apart_without_a_new_timestamp() -> None:
    """Two units under one timestamp: the second's first slice begins a new unit.

    FFmpeg gives a camera's first two units the same timestamp when its RTP
    clock starts at 0. The first unit is still decoded on its own, whole.
    """
    units = _encode("libx265", 2)
    reader = _reader("hevc")
    first = _payloads(units[0], 0, header=2)
    assert [reader.push(p) for p in first] == [None] * len(first)
    frame = reader.push(_payloads(units[1], 0, header=2)[0])
    assert frame is not None
    assert np.array_equal(frame.to_ndarray(format="rgb24"), _reference("hevc", units[0]))


def test_a_unit_beyond_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that grows past the bound (a camera that never changes timestamp) is refused."""
    units = _encode("libx265", 1)
    payloads = _payloads(units[0], 0, header=2)
    monkeypatch.setattr(rtsp, "_MAX_UNIT_BYTES", len(units[0]) - 1)
    reader = _reader("hevc")
    assert [reader.push(payload) for payload in payloads[:-1]] == [None] * (len(payloads) - 1)
    with pytest.raises(InvalidImageError, match="access unit too large") as err:
        reader.push(payloads[-1])
    assert err.value.kind == "too_large"


def test_an_early_try_ffmpeg_refuses_does_not_end_the_grab(monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg refusing part of a keyframe (an error, not just no picture) is one failed try."""
    real_decode = rtsp._decode
    calls: list[int] = []

    def decode(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(rtsp, "_decode", decode)
    units = _encode("libx264", 1, slices=4, picture=_noise)
    reader = _reader("h264")
    got = [reader.push(payload) for payload in _payloads(units[0], 0, header=1)]
    assert got[-1] is not None
    assert np.array_equal(got[-1].to_ndarray(format="rgb24"), _reference("h264", units[0]))
    assert len(calls) == 4
