"""core.rtsp._Keyframes: keyframes out of FFmpeg's unparsed RTP payloads, each once it is whole.

The payloads are made here as a camera's packetizer cuts them (RFC 6184 and
7798: a NAL unit up to the payload size whole, a larger one in FU pieces of
exactly the payload size but the last: virtualcam's own packetizer for
H.264) and as FFmpeg's RTSP demuxer then hands them over with its parser off
(a start code and the header before each whole NAL unit and each first
piece; the other pieces bare). The pictures come from libx264 and libx265;
every frame is compared with the same access unit decoded whole by a fresh
decoder.
"""

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest

from custom_components.localcam.core import rtsp
from custom_components.localcam.core.errors import InvalidImageError
from custom_components.localcam.core.rtsp import _Keyframes, _prepare_decoder
from virtualcam.media import _MAX_PAYLOAD, packetize, split_annexb

WIDTH, HEIGHT = 640, 352
START = b"\x00\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class Payload:
    """What PyAV's demux() yields for one RTP payload (the parts _Keyframes reads)."""

    data: bytes
    pts: int = 0

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_keyframe(self) -> bool:
        return False  # the parser sets it; with the parser off, FFmpeg never does

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
    codec_name: str,
    frames: int,
    *,
    params: str = "keyint=2:min-keyint=2:bframes=0",
    picture: Callable[[int], np.ndarray] = _picture,
) -> list[bytes]:
    """Access units (Annex B) of ``frames`` pictures, in decoding order."""
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = Fraction(1, 10)
    if codec_name == "libx264":
        codec.options = {"x264-params": f"scenecut=0:{params}", "threads": "1"}
    else:
        codec.options = {"x265-params": f"scenecut=0:log-level=error:{params}"}
    units: list[bytes] = []
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(picture(index), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        units += [bytes(packet) for packet in codec.encode(frame)]
    units += [bytes(packet) for packet in codec.encode(None)]
    assert len(units) == frames
    return units


def _h264(unit: bytes, pts: int = 0) -> list[Payload]:
    """An H.264 access unit as FFmpeg hands it over, cut by virtualcam's packetizer."""
    out = []
    for rtp in packetize(split_annexb(unit)):
        if rtp[0] & 0x1F != 28:  # a whole NAL unit
            out.append(Payload(START + rtp, pts))
        elif rtp[1] & 0x80:  # FU-A, first piece: FFmpeg rebuilds the NAL unit header
            out.append(Payload(START + bytes(((rtp[0] & 0xE0) | (rtp[1] & 0x1F),)) + rtp[2:], pts))
        else:
            out.append(Payload(rtp[2:], pts))
    return out


def _h265(unit: bytes, pts: int = 0) -> list[Payload]:
    """An H.265 access unit as FFmpeg hands it over: FU pieces as full as an RTP payload."""
    out = []
    piece = _MAX_PAYLOAD - 3  # payload header and FU header
    for nal in split_annexb(unit):
        if len(nal) <= _MAX_PAYLOAD:
            out.append(Payload(START + nal, pts))
            continue
        body = nal[2:]
        out.append(Payload(START + nal[:2] + body[:piece], pts))
        out += [Payload(body[i : i + piece], pts) for i in range(piece, len(body), piece)]
    return out


def _starts(payloads: list[Payload], nal_type: int) -> list[int]:
    """Indexes of the payloads that start an H.264 NAL unit of ``nal_type``."""
    return [
        i
        for i, p in enumerate(payloads)
        if p.data.startswith(START) and p.data[4] & 0x1F == nal_type
    ]


def _reference(decoder_name: str, unit: bytes) -> np.ndarray:
    """The unit decoded whole by a fresh decoder."""
    codec = av.CodecContext.create(decoder_name, "r")
    frames = codec.decode(av.Packet(unit)) or codec.decode(None)
    return frames[0].to_ndarray(format="rgb24")


class _Reader:
    """A _Keyframes fed as a session feeds it, each payload read at the test's ``now``."""

    def __init__(self, keyframes: _Keyframes) -> None:
        self.keyframes = keyframes
        self.now = 0.0

    def push(self, payload: Any) -> Any | None:
        return self.keyframes.push(payload, self.now)

    def end(self) -> Any | None:
        return self.keyframes.end()


def _reader(decoder_name: str) -> _Reader:
    codec: Any = av.CodecContext.create(decoder_name, "r")
    _prepare_decoder(codec)
    return _Reader(_Keyframes(codec, unparsed=True))


def _same(frame: Any, picture: np.ndarray) -> bool:
    return frame is not None and np.array_equal(frame.to_ndarray(format="rgb24"), picture)


@pytest.mark.parametrize("slices", [1, 4])
def test_a_keyframe_decodes_with_its_last_payload_and_not_before(slices: int) -> None:
    """An H.264 keyframe in one slice or four, each in pieces: the whole picture, at its last piece.

    Nothing comes out of part of it, and the next unit is not needed: the
    frame comes before it begins.
    """
    units = _encode("libx264", 1, params=f"keyint=2:bframes=0:slices={slices}", picture=_noise)
    payloads = _h264(units[0])
    assert len(_starts(payloads, 5)) == slices
    reader = _reader("h264")
    got = [reader.push(payload) for payload in payloads]
    assert got[:-1] == [None] * (len(payloads) - 1)
    assert _same(got[-1], _reference("h264", units[0]))


@pytest.mark.parametrize("slices", [1, 4])
def test_a_keyframe_goes_in_slice_by_slice_then_once_whole(
    slices: int, decodes: list[bool]
) -> None:
    """Dozens of pieces: one feed per slice (none per piece), then one decode of the whole."""
    units = _encode("libx264", 1, params=f"keyint=2:bframes=0:slices={slices}", picture=_noise)
    payloads = _h264(units[0])
    assert len(payloads) > 50
    reader = _reader("h264")
    decodes.clear()
    got = [reader.push(payload) for payload in payloads]
    assert _same(got[-1], _reference("h264", units[0]))
    assert decodes == [False] * (slices - 1) + [True, True]


def test_a_whole_nal_unit_as_long_as_a_payload_is_no_reason_to_decode_early(
    decodes: list[bool],
) -> None:
    """A whole NAL unit of a full payload's size (a byte more than a full piece's body) does not
    make full pieces look short: the keyframe after it is still fed at slice ends only."""
    units = _encode("libx264", 1, params="keyint=2:bframes=0:slices=2", picture=_noise)
    reader = _reader("h264")
    filler = Payload(START + bytes([0x0C]) + b"\xff" * (_MAX_PAYLOAD - 2) + b"\x80")  # type 12
    assert reader.push(filler) is None
    decodes.clear()
    got = [reader.push(payload) for payload in _h264(units[0])]
    assert _same(got[-1], _reference("h264", units[0]))
    assert decodes == [False, True, True]


@pytest.mark.parametrize(("slices", "lost"), [(1, "last piece"), (4, "last piece"), (4, "slice")])
def test_a_keyframe_missing_a_part_makes_no_picture(slices: int, lost: str) -> None:
    """A keyframe whose last piece (or last slice) never came: no picture of it at all.

    The next keyframe decodes.
    """
    units = _encode("libx264", 3, params=f"keyint=2:bframes=0:slices={slices}", picture=_noise)
    reader = _reader("h264")
    first = _h264(units[0])
    cut = first[:-1] if lost == "last piece" else first[: _starts(first, 5)[-1]]
    following = _h264(units[1])  # a P-frame: its first slice ends the cut keyframe's unit
    assert [reader.push(p) for p in cut + following] == [None] * (len(cut) + len(following))
    assert reader.end() is None
    got = [reader.push(p) for p in _h264(units[2])]
    assert _same(got[-1], _reference("h264", units[2]))


def test_a_timestamp_that_changes_within_a_unit_does_not_split_it() -> None:
    """FFmpeg recomputes timestamps at each RTCP sender report, even within a unit: no matter."""
    units = _encode("libx264", 1, params="keyint=2:bframes=0:slices=4", picture=_noise)
    payloads = _h264(units[0])
    second_slice = _starts(payloads, 5)[1]
    payloads = payloads[:second_slice] + [Payload(p.data, 1) for p in payloads[second_slice:]]
    reader = _reader("h264")
    got = [reader.push(payload) for payload in payloads]
    assert got[:-1] == [None] * (len(payloads) - 1)
    assert _same(got[-1], _reference("h264", units[0]))


def test_a_unit_joined_after_its_first_slice_is_never_decoded() -> None:
    """A session that begins mid-picture (its first slice already gone): nothing from that unit."""
    units = _encode("libx264", 3, params="keyint=2:bframes=0:slices=4", picture=_noise)
    reader = _reader("h264")
    first = _h264(units[0])
    joined = first[_starts(first, 5)[1] :]
    stream = joined + _h264(units[1])
    assert [reader.push(p) for p in stream] == [None] * len(stream)
    got = [reader.push(p) for p in _h264(units[2])]
    assert _same(got[-1], _reference("h264", units[2]))


def test_a_keyframe_that_lost_its_first_slice_makes_no_picture() -> None:
    """Mid-session, a keyframe's first slice lost (UDP): its unit begins at its parameter sets
    with a later slice, and nothing comes of it; the keyframe before and after it decode."""
    units = _encode("libx264", 5, params="keyint=2:bframes=0:slices=4", picture=_noise)
    reader = _reader("h264")
    got = [reader.push(p) for p in _h264(units[0]) + _h264(units[1])]
    assert _same(got[len(_h264(units[0])) - 1], _reference("h264", units[0]))
    damaged = _h264(units[2])
    first, second = _starts(damaged, 5)[:2]
    stream = damaged[:first] + damaged[second:] + _h264(units[3])
    assert [reader.push(p) for p in stream] == [None] * len(stream)
    got = [reader.push(p) for p in _h264(units[4])]
    assert _same(got[-1], _reference("h264", units[4]))


def test_a_reordering_stream_is_not_fed_early(decodes: list[bool]) -> None:
    """With B-frames the decoder holds every picture back: no feeds, one decode at the boundary."""
    units = _encode("libx264", 6, params="keyint=4:min-keyint=4:bframes=2:b-adapt=0:slices=4")
    reader = _reader("h264")
    for unit in units[:4]:
        for payload in _h264(unit):
            reader.push(payload)
    decodes.clear()
    got = [reader.push(p) for p in _h264(units[4])]  # the second keyframe
    assert got == [None] * len(got)
    assert decodes == [False]  # the unit before it, at its boundary; none of its own yet
    frame = reader.push(_h264(units[5])[0])
    assert _same(
        frame,
        _reference("h264", b"".join(START + n for n in split_annexb(units[0])[:2]) + units[4]),
    )


def test_nal_units_before_every_slice_neither_split_the_picture_nor_count_as_slices(
    decodes: list[bool],
) -> None:
    """A prefix NAL unit (type 14, SVC) before each of eight slices: one unit still, fed at
    slice ends only, and decoded whole as its last piece comes."""
    units = _encode("libx264", 1, params="keyint=2:bframes=0:slices=8", picture=_noise)
    prefix = Payload(START + bytes([0x6E, 0x80, 0x00, 0x00]))
    plain = _h264(units[0])
    payloads = []
    for index, payload in enumerate(plain):
        if index in _starts(plain, 5):
            payloads.append(prefix)
        payloads.append(payload)
    reader = _reader("h264")
    decodes.clear()
    got = [reader.push(payload) for payload in payloads]
    assert got[:-1] == [None] * (len(payloads) - 1)
    assert _same(got[-1], _reference("h264", units[0]))
    assert decodes == [False] * 7 + [True, True]


def test_an_aggregate_holding_a_first_slice_begins_a_unit() -> None:
    """A STAP-A of [prefix NAL unit, a picture's first slice]: the unit before it is whole there."""
    units = _encode("libx264", 2, params="keyint=2:bframes=0:slices=16")
    first = _h264(units[0])
    assert all(p.data.startswith(START) for p in first)  # whole NAL units: nothing early
    slices = [n for n in split_annexb(units[1]) if n[0] & 0x1F in (1, 5)]
    aggregate = Payload(START + bytes([0x6E, 0x80, 0x00, 0x00]) + START + slices[0])
    reader = _reader("h264")
    assert [reader.push(p) for p in first] == [None] * len(first)
    assert _same(reader.push(aggregate), _reference("h264", units[0]))


def test_open_gop_keyframes_of_a_reordering_stream_come_with_the_next_unit() -> None:
    """B-frames, open GOP: each I-frame (no IDR) comes out when the unit after it begins.

    No NAL type marks such an I-frame; the decoder holds it back for
    reordering, and is drained after each unit that gave no picture.
    """
    units = _encode(
        "libx264", 20, params="keyint=6:min-keyint=6:bframes=3:b-pyramid=normal:open-gop=1"
    )
    headers = b"".join(START + n for n in split_annexb(units[0]) if n[0] & 0x1F in (7, 8))
    pictures = {  # decoding index -> the intra picture, decoded on its own
        index: _reference("h264", headers + unit)
        for index, unit in enumerate(units)
        if _intra(unit)
    }
    reader = _reader("h264")
    returned = {}
    for index, unit in enumerate(units):
        for offset, payload in enumerate(_h264(unit)):
            if (frame := reader.push(payload)) is not None:
                returned[index] = (offset, frame.to_ndarray(format="rgb24"))
    intra = sorted(pictures)
    assert len(intra) >= 3
    assert set(returned) == {index + 1 for index in intra if index + 1 < len(units)}
    for index in intra[:-1]:
        offset, picture = returned[index + 1]
        assert offset == 0
        assert np.array_equal(picture, pictures[index])


def _intra(unit: bytes) -> bool:
    """Whether an H.264 unit is an I picture (slice_type I: ue(v) 2 or 7 after first_mb 0)."""
    slices = [n for n in split_annexb(unit) if n[0] & 0x1F in (1, 5)]
    bits = "".join(f"{b:08b}" for b in slices[0][1:4])
    assert bits[0] == "1"  # first_mb_in_slice 0
    rest = bits[1:]
    zeros = len(rest) - len(rest.lstrip("0"))
    value = int(rest[zeros : 2 * zeros + 1], 2) - 1
    return value in (2, 7)


def test_a_keyframe_of_a_reordering_stream_missing_its_last_piece_makes_no_picture() -> None:
    """B-frames: the drain hands over what the decoder holds; a picture it had to fill in is
    refused (FFmpeg's corrupt flag)."""
    units = _encode("libx264", 8, params="keyint=4:min-keyint=4:bframes=2:b-adapt=0:slices=4")
    reader = _reader("h264")
    stream = _h264(units[0])[:-1] + [p for unit in units[1:4] for p in _h264(unit)]
    assert [reader.push(p) for p in stream] == [None] * len(stream)
    # The next keyframe (decoding index 4) comes when the unit after it begins.
    assert [reader.push(p) for p in _h264(units[4])] == [None] * len(_h264(units[4]))
    headers = b"".join(START + n for n in split_annexb(units[0]) if n[0] & 0x1F in (7, 8))
    assert _same(reader.push(_h264(units[5])[0]), _reference("h264", headers + units[4]))


def test_an_h265_keyframe_comes_when_the_next_unit_begins() -> None:
    """H.265 (no early decode): the keyframe comes with the next unit's first payload, whole."""
    units = _encode("libx265", 2, picture=_noise)
    reader = _reader("hevc")
    first = _h265(units[0])
    assert [reader.push(p) for p in first] == [None] * len(first)
    frame = reader.push(_h265(units[1])[0])
    assert _same(frame, _reference("hevc", units[0]))


def test_a_keyframe_decoded_at_the_next_unit_is_stamped_when_its_last_payload_came() -> None:
    """Aged from its own last byte, not from the next picture's first (a frame interval later).

    At 1 fps, or from a camera that stalls after a keyframe, stamping the
    decode time would make a still look up to a second (or more) younger
    than it is, and let it be served past max age.
    """
    units = _encode("libx265", 2, picture=_noise)
    reader = _reader("hevc")
    first = _h265(units[0])
    for index, payload in enumerate(first):
        reader.now = 10.0 + index * 0.001
        assert reader.push(payload) is None
    last_byte = reader.now
    reader.now = 12.0  # the next picture begins two seconds later
    assert reader.push(_h265(units[1])[0]) is not None
    assert reader.keyframes.completed_at == last_byte


def test_an_early_decoded_keyframe_is_stamped_when_it_became_whole() -> None:
    """H.264 decoded early: whole with the payload that completed it, stamped then."""
    units = _encode("libx264", 2)
    reader = _reader("h264")
    got = []
    for index, payload in enumerate(_h264(units[0])):
        reader.now = 20.0 + index * 0.001
        got.append(reader.push(payload))
    assert got[-1] is not None  # whole with its last payload, not at the next unit
    assert reader.keyframes.completed_at == reader.now


def test_the_stream_end_completes_the_unit_held() -> None:
    """The last unit of a stream that ends is whole: end() decodes it."""
    units = _encode("libx265", 1)
    reader = _reader("hevc")
    payloads = _h265(units[0])
    reader.now = 30.0
    assert [reader.push(p) for p in payloads] == [None] * len(payloads)
    reader.now = 31.0
    assert _same(reader.end(), _reference("hevc", units[0]))
    assert reader.keyframes.completed_at == 30.0  # its last payload's, not the end's


def test_a_unit_beyond_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that grows past the bound (a camera that never begins another) is refused."""
    units = _encode("libx265", 1)
    payloads = _h265(units[0])
    monkeypatch.setattr(rtsp, "_MAX_UNIT_BYTES", sum(p.size for p in payloads) - 1)
    reader = _reader("hevc")
    assert [reader.push(payload) for payload in payloads[:-1]] == [None] * (len(payloads) - 1)
    with pytest.raises(InvalidImageError, match="access unit too large") as err:
        reader.push(payloads[-1])
    assert err.value.kind == "too_large"


def test_a_unit_in_too_many_pieces_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the byte bound, but in more pieces than any camera sends: refused too."""
    units = _encode("libx265", 1)
    payloads = _h265(units[0])
    monkeypatch.setattr(rtsp, "_MAX_UNIT_PARTS", len(payloads) - 1)
    reader = _reader("hevc")
    assert [reader.push(payload) for payload in payloads[:-1]] == [None] * (len(payloads) - 1)
    with pytest.raises(InvalidImageError, match="access unit too large") as err:
        reader.push(payloads[-1])
    assert err.value.kind == "too_large"


def test_an_early_feed_ffmpeg_refuses_leaves_the_keyframe_to_its_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FFmpeg refusing a feed (an error, not just no picture): the unit is decoded whole later."""
    real_decode = rtsp._decode
    calls: list[int] = []

    def decode(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(rtsp, "_decode", decode)
    units = _encode("libx264", 2, params="keyint=2:bframes=0:slices=4", picture=_noise)
    reader = _reader("h264")
    first = [reader.push(payload) for payload in _h264(units[0])]
    assert first == [None] * len(first)
    assert _same(reader.push(_h264(units[1])[0]), _reference("h264", units[0]))


def _balanced(unit: bytes) -> list[Payload]:
    """An H.264 unit from a packetizer that cuts each NAL unit into pieces within a byte of
    each other (none full-size but for the first pieces), as FFmpeg hands it over."""
    out = []
    for nal in split_annexb(unit):
        if len(nal) <= _MAX_PAYLOAD:
            out.append(Payload(START + nal))
            continue
        body = nal[1:]
        count = -(-len(body) // (_MAX_PAYLOAD - 2))
        base, extra = divmod(len(body), count)
        sizes = [base + 1] * extra + [base] * (count - extra)
        pieces, at = [], 0
        for size in sizes:
            pieces.append(body[at : at + size])
            at += size
        out.append(Payload(START + nal[:1] + pieces[0]))
        out += [Payload(piece) for piece in pieces[1:]]
    return out


def test_a_packetizer_that_balances_its_pieces_gets_no_early_decode(decodes: list[bool]) -> None:
    """Pieces within a byte of each other tell no NAL unit's end: nothing is fed early (even
    after full-size pieces of another camera's packetizer were seen); the keyframe comes,
    whole, when the next unit begins."""
    units = _encode("libx264", 4, params="keyint=2:bframes=0", picture=_noise)
    reader = _reader("h264")
    for payload in _h264(units[0]) + _h264(units[1]):  # full pieces seen first
        reader.push(payload)
    balanced = _balanced(units[2])
    assert len({p.size for p in balanced if not p.data.startswith(START)}) == 2
    decodes.clear()
    assert [reader.push(p) for p in balanced] == [None] * len(balanced)
    assert decodes == [False]  # units[1] at its boundary: nothing of the keyframe's own
    assert _same(reader.push(_h264(units[3])[0]), _reference("h264", units[2]))
