"""Integrity checks and scaling of JPEG stills (core.jpeg)."""

import io

from homeassistant.components.camera.img_util import find_supported_scaling_factor
from homeassistant.components.stream.core import TRANSFORM_IMAGE_FUNCTION
import numpy as np
from PIL import Image, ImageOps
import pytest

from custom_components.localcam.core.errors import InvalidImageError
from custom_components.localcam.core.jpeg import (
    EOI,
    SOI,
    cover_size,
    exif_orientation,
    orient_jpeg,
    scale_jpeg,
    validate_jpeg,
)


def _jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_valid_jpeg_returns_its_size() -> None:
    """A whole JPEG passes and reports its dimensions."""
    assert validate_jpeg(_jpeg(64, 48), "image/jpeg") == (64, 48)


def test_padding_after_end_marker_is_tolerated() -> None:
    """Cameras that pad after FFD9 with zeros or CRLF are not rejected."""
    assert validate_jpeg(_jpeg() + b"\r\n\x00\x00", "image/jpeg; charset=binary") == (64, 48)


def _with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with other dimensions written into its frame header (SOF0)."""
    at = data.index(b"\xff\xc0")
    # FFC0, length (2), precision (1), then height and width (2 each).
    dims = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return data[: at + 5] + dims + data[at + 9 :]


@pytest.mark.parametrize(
    ("body", "content_type", "reason", "kind"),
    [
        (b"", "image/jpeg", "empty reply", "empty"),
        (
            b"<html><body>500 Internal Error</body></html>",
            "text/html",
            "content type text/html",
            "content_type",
        ),
        (b"<html>error</html>", None, "no JPEG start marker", "not_jpeg"),
        (
            _jpeg()[: len(_jpeg()) // 2],
            "image/jpeg",
            "truncated (no JPEG end marker)",
            "truncated",
        ),
        (
            b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9",
            "image/jpeg",
            "implausible size 0x0",
            "bad_size",
        ),
        (
            _jpeg(),
            "application/octet-stream",
            "content type application/octet-stream",
            "content_type",
        ),
        # Each side under the 16384 cap, but 56 megapixels: hundreds of MB to scale.
        (
            _with_dimensions(_jpeg(), 8000, 7000),
            "image/jpeg",
            "implausible size 8000x7000",
            "bad_size",
        ),
    ],
    ids=["empty", "html-page", "html-without-type", "truncated", "garbage", "wrong-type", "56mp"],
)
def test_bad_images_are_rejected(
    body: bytes, content_type: str | None, reason: str, kind: str
) -> None:
    """Each real-world failure gets its own clear reason, and a fixed kind for counters."""
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(body, content_type)
    assert err.value.reason == reason
    assert err.value.kind == kind
    assert err.value.translation_key == "invalid_image"


def test_a_reply_that_declares_no_type_is_judged_by_its_bytes() -> None:
    """No Content-Type at all: a whole JPEG passes, an HTML page still does not."""
    assert validate_jpeg(_jpeg(), "") == validate_jpeg(_jpeg(), "image/jpeg")
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(b"<html>error</html>", "")
    assert err.value.kind == "not_jpeg"


def test_a_large_frame_under_the_pixel_cap_passes() -> None:
    """An 8K frame (33 megapixels) is a real camera's and passes."""
    assert validate_jpeg(_with_dimensions(_jpeg(), 7680, 4320), "image/jpeg") == (7680, 4320)


def test_size_cap() -> None:
    """A body over the cap is refused before decoding."""
    with pytest.raises(InvalidImageError, match="larger than 100 bytes"):
        validate_jpeg(_jpeg(), "image/jpeg", max_bytes=100)


def _color_jpeg(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).convert(mode).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("source", "request_size", "expected"),
    [
        ((640, 360), (160, 90), (160, 90)),  # a TurboJPEG factor (1/4) hits it exactly
        ((640, 360), (250, 141), (251, 141)),  # between factors: 3/8 < it < 1/2
        ((1920, 1080), (1000, 563), (1001, 563)),  # between 1/2 and 5/8
        ((704, 576), (300, 100), (300, 246)),  # a wider box: the width decides
        ((1280, 720), (100, 100), (178, 100)),  # below 1/8: factor 1/8, then resampled
    ],
)
def test_scale_covers_request_exactly(
    source: tuple[int, int], request_size: tuple[int, int], expected: tuple[int, int]
) -> None:
    """The scaled still keeps the aspect, covers the request and meets it on one side."""
    scaled, width, height = scale_jpeg(_jpeg(*source), *request_size)
    assert (width, height) == expected == validate_jpeg(scaled)
    assert cover_size(*source, *request_size) == expected


def test_scaled_stills_pass_through_home_assistants_own_scaler() -> None:
    """HA's camera_proxy re-scales what an entity returns unless 7/8 of it no longer covers.

    A cached scaled still must reach the card as cached: never scaled a second
    time (lossy, and on HA's event loop for every request). Checked for the
    sizes cards ask for: every width from 17 px up, at the camera's aspect,
    at 2:1 and at a square box, on common camera resolutions.
    """
    checked = 0
    for src_w, src_h in ((640, 360), (704, 576), (1280, 720), (1280, 960), (2560, 1440)):
        for want_w in range(17, src_w + 40, 3):
            for want_h in (-(-want_w * src_h // src_w), want_w // 2, want_w, 50):
                size = cover_size(src_w, src_h, want_w, want_h)
                if size is None:
                    assert want_w >= src_w or want_h >= src_h
                    continue
                checked += 1
                assert size[0] >= want_w
                assert size[1] >= want_h
                assert size[0] <= src_w
                assert size[1] <= src_h
                assert abs(size[0] / size[1] - src_w / src_h) < 2 / min(size)
                assert find_supported_scaling_factor(*size, want_w, want_h) is None
    assert checked > 5_000


def test_an_undecodable_frame_is_returned_whole_and_grey_is_scaled() -> None:
    """scale_jpeg hands back a frame TurboJPEG cannot decode to RGB unchanged; greyscale scales.

    validate_jpeg refuses such a frame (a CMYK one) before anything is
    cached, so none reaches a card (see test_a_cmyk_jpeg_is_invalid...).
    """
    cmyk = _color_jpeg(640, 360, "CMYK")
    assert scale_jpeg(cmyk, 160, 90) == (cmyk, 640, 360)
    gray = _color_jpeg(640, 360, "L")
    scaled, width, height = scale_jpeg(gray, 161, 90)
    assert (width, height) == (161, 91) == validate_jpeg(scaled)


def test_scale_is_a_no_op_without_a_smaller_request() -> None:
    """No size, or a size at least as large, returns the original bytes."""
    original = _jpeg(64, 48)
    assert scale_jpeg(original, None, None) == (original, 64, 48)
    assert scale_jpeg(original, 128, 96) == (original, 64, 48)


def _quadrants_jpeg() -> tuple[bytes, np.ndarray]:
    """A 64x32 picture of four coloured quadrants, as a JPEG and as RGB pixels."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:16, :32] = QUADRANTS[0]
    pixels[:16, 32:] = QUADRANTS[1]
    pixels[16:, :32] = QUADRANTS[2]
    pixels[16:, 32:] = QUADRANTS[3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue(), pixels


QUADRANTS = ((220, 20, 20), (20, 220, 20), (20, 20, 220), (230, 230, 230))


def _corners(rgb: np.ndarray) -> list[int]:
    """Which quadrant colour is nearest each corner (clockwise from top left)."""
    height, width = rgb.shape[:2]
    spots = [(4, 4), (4, width - 5), (height - 5, width - 5), (height - 5, 4)]
    colors = np.array(QUADRANTS, dtype=np.int64)
    return [
        int(((colors - rgb[y, x].astype(np.int64)) ** 2).sum(axis=1).argmin()) for y, x in spots
    ]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_still_is_turned_as_home_assistant_turns_its_stream(orientation: int) -> None:
    """Each Orientation setting turns the picture exactly as HA's stream turns its keyframes."""
    data, pixels = _quadrants_jpeg()
    turned, width, height = orient_jpeg(data, orientation)
    expected = TRANSFORM_IMAGE_FUNCTION[orientation](pixels)
    got = np.asarray(Image.open(io.BytesIO(turned)).convert("RGB"))
    assert (width, height) == (expected.shape[1], expected.shape[0]) == (got.shape[1], got.shape[0])
    assert _corners(got) == _corners(expected)
    assert (turned is data) == (orientation == 1)


def test_an_unknown_or_undecodable_orientation_leaves_the_picture_as_it_is() -> None:
    """A value outside 1-8, or pixels TurboJPEG cannot give as RGB: the camera's own picture."""
    data, _ = _quadrants_jpeg()
    assert orient_jpeg(data, 9) == (data, 64, 32)
    cmyk = _color_jpeg(64, 32, "CMYK")
    assert orient_jpeg(cmyk, 3) == (cmyk, 64, 32)


def _with_exif(data: bytes, orientation: int, *, big_endian: bool = False) -> bytes:
    """The JPEG with an EXIF block whose Orientation is ``orientation`` (Pillow writes it)."""
    exif = Image.Exif()
    exif.endian = ">" if big_endian else "<"
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
@pytest.mark.parametrize("exif", range(1, 9))
def test_a_still_with_exif_orientation_is_turned_as_a_viewer_shows_it(
    exif: int, big_endian: bool
) -> None:
    """A camera's EXIF Orientation is read and applied as Pillow's exif_transpose does.

    Then HA's Orientation setting on top (here 3, rotate 180); the result
    carries no EXIF, so a viewer shows it exactly as encoded.
    """
    data, _ = _quadrants_jpeg()
    tagged = _with_exif(data, exif, big_endian=big_endian)
    assert exif_orientation(tagged) == exif
    shown = Image.open(io.BytesIO(tagged))
    upright = np.asarray(ImageOps.exif_transpose(shown).convert("RGB"))
    for setting in (1, 3):
        turned, width, height = orient_jpeg(tagged, setting, exif=exif_orientation(tagged))
        expected = TRANSFORM_IMAGE_FUNCTION[setting](upright)
        got = Image.open(io.BytesIO(turned))
        assert got.getexif().get(0x0112, 1) == 1 or turned is tagged
        rgb = np.asarray(got.convert("RGB"))
        assert (width, height) == (expected.shape[1], expected.shape[0]) == rgb.shape[1::-1]
        assert _corners(rgb) == _corners(expected)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xd8", id="only SOI"),
        pytest.param(
            b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX\x00*\x00\x00\x00\x08", id="bad order"
        ),
        pytest.param(
            b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\x00\x00", id="bad offset"
        ),
        pytest.param(
            b"\xff\xd8\xff\xe1\xff\xffExif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff", id="cut"
        ),
        pytest.param(b"\xff\xd8" + b"\xff\xfe\x00\x02" * 40, id="many segments"),
        pytest.param(b"\xff\xd8\x00\x00\x00\x00", id="not a marker"),
    ],
)
def test_a_malformed_or_missing_exif_block_reads_as_no_orientation(data: bytes) -> None:
    """Garbage, a cut block or an endless header: 1 (as stored), never an error."""
    assert exif_orientation(data) == 1
    assert exif_orientation(_jpeg()) == 1


@pytest.mark.parametrize(
    ("width", "height"), [(16385, 64), (64, 16385)], ids=["too-wide", "too-tall"]
)
def test_each_side_is_capped_even_under_the_pixel_cap(width: int, height: int) -> None:
    """A side over 16384 is refused although the frame has few pixels (1 megapixel here)."""
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(_with_dimensions(_jpeg(), width, height), "image/jpeg")
    assert err.value.kind == "bad_size"


def test_size_cap_is_exact() -> None:
    """A body of exactly the cap passes; one byte more is refused."""
    data = _jpeg()
    assert validate_jpeg(data, "image/jpeg", max_bytes=len(data)) == (64, 48)
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(data + b"\x00", "image/jpeg", max_bytes=len(data))
    assert err.value.kind == "too_large"


def test_a_body_with_both_markers_but_no_jpeg_header_is_undecodable() -> None:
    """Both markers, but a header libjpeg-turbo cannot read: refused, never taken for a picture."""
    data = SOI + SOI + EOI  # libjpeg-turbo: "two SOI markers", a fatal header error
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(data, "image/jpeg")
    assert err.value.kind == "undecodable"


def _segments(data: bytes) -> list[tuple[int, bytes]]:
    """A JPEG's marker segments, each scan with its entropy-coded data."""
    pos, out = 2, []
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            i = end
            while True:
                j = data.index(b"\xff", i)
                if data[j + 1] == 0 or 0xD0 <= data[j + 1] <= 0xD7:
                    i = j + 2
                    continue
                break
            end = j
        out.append((marker, data[pos:end]))
        pos = end
    return out


def scan_bomb(repeats: int, size: int = 2048) -> bytes:
    """A valid-looking progressive JPEG whose smallest scan repeats ``repeats`` times.

    Tiny on the wire (16 bytes a scan), yet libjpeg-turbo walks every block
    of the picture once per scan: an 8 MB one takes minutes of CPU to
    decode, however small the scaling factor.
    """
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buf, "JPEG", progressive=True)
    segments = _segments(buf.getvalue())
    smallest = min((s for m, s in segments if m == 0xDA), key=len)
    return b"\xff\xd8" + b"".join(s for _m, s in segments) + smallest * repeats + b"\xff\xd9"


def test_a_normal_progressive_jpeg_is_still_valid() -> None:
    """An ordinary progressive JPEG (about ten scans) passes as before."""
    buf = io.BytesIO()
    Image.new("RGB", (640, 360), (1, 2, 3)).save(buf, "JPEG", progressive=True)
    assert validate_jpeg(buf.getvalue(), "image/jpeg") == (640, 360)


def test_a_jpeg_with_thousands_of_scans_is_invalid() -> None:
    """validate_jpeg refuses the bomb before anything decodes it."""
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(scan_bomb(5000), "image/jpeg")
    assert err.value.translation_key == "invalid_image"


@pytest.mark.parametrize(("mode", "valid"), [("CMYK", False), ("L", True), ("RGB", True)])
def test_a_cmyk_jpeg_is_invalid_grey_and_colour_are_not(mode: str, valid: bool) -> None:
    """A CMYK JPEG (a print file, never a camera's) decodes to no RGB picture: invalid_image.

    Served, a card's request for it made Home Assistant's own scaling raise
    (a 500 with a traceback in the log).
    """
    buffer = io.BytesIO()
    Image.new(mode, (64, 48)).save(buffer, "JPEG")
    if valid:
        assert validate_jpeg(buffer.getvalue(), "image/jpeg") == (64, 48)
    else:
        with pytest.raises(InvalidImageError) as err:
            validate_jpeg(buffer.getvalue(), "image/jpeg")
        assert err.value.kind == "colorspace"
