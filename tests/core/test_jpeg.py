"""Integrity checks and scaling of JPEG stills (core.jpeg)."""

import io

from PIL import Image
import pytest

from custom_components.localcam.core.errors import InvalidImageError
from custom_components.localcam.core.jpeg import scale_jpeg, validate_jpeg


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


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"", "image/jpeg", "empty reply"),
        (b"<html><body>500 Internal Error</body></html>", "text/html", "content type text/html"),
        (b"<html>error</html>", None, "no JPEG start marker"),
        (_jpeg()[: len(_jpeg()) // 2], "image/jpeg", "truncated (no JPEG end marker)"),
        (b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9", "image/jpeg", "implausible size 0x0"),
        (_jpeg(), "application/octet-stream", "content type application/octet-stream"),
    ],
    ids=["empty", "html-page", "html-without-type", "truncated", "garbage", "wrong-type"],
)
def test_bad_images_are_rejected(body: bytes, content_type: str | None, reason: str) -> None:
    """Each real-world failure gets its own clear reason."""
    with pytest.raises(InvalidImageError) as err:
        validate_jpeg(body, content_type)
    assert err.value.reason == reason
    assert err.value.translation_key == "invalid_image"


def test_size_cap() -> None:
    """A body over the cap is refused before decoding."""
    with pytest.raises(InvalidImageError, match="larger than 100 bytes"):
        validate_jpeg(_jpeg(), "image/jpeg", max_bytes=100)


def test_scale_covers_request_and_shrinks() -> None:
    """Scaling never goes below the requested size, and does shrink."""
    original = _jpeg(640, 360)
    scaled, width, height = scale_jpeg(original, 160, 90)
    assert (width, height) == validate_jpeg(scaled)
    assert 160 <= width < 640
    assert 90 <= height < 360


def test_scale_is_a_no_op_without_a_smaller_request() -> None:
    """No size, or a size at least as large, returns the original bytes."""
    original = _jpeg(64, 48)
    assert scale_jpeg(original, None, None) == (original, 64, 48)
    assert scale_jpeg(original, 128, 96) == (original, 64, 48)
