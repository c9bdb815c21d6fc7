"""JPEG integrity checks, encoding and scaling (CPU work: call from a thread).

This module is the layer that guarantees no broken image is ever cached or
served: every still, whatever its source, passes ``validate_jpeg`` first.
"""

from collections.abc import Callable
import threading
from typing import TYPE_CHECKING, Final, Literal

from .errors import InvalidImageError

if TYPE_CHECKING:
    import numpy as np
    from turbojpeg import TurboJPEG

SOI: Final = b"\xff\xd8"
EOI: Final = b"\xff\xd9"
MAX_JPEG_BYTES: Final = 8 * 1024 * 1024
MAX_DIMENSION: Final = 16384
# About 50 megapixels (an 8K frame is 33): a frame that decodes to more would
# take hundreds of MB to scale. No camera LocalCam serves sends one.
MAX_PIXELS: Final = 50_000_000
# Scans (SOS markers) a JPEG may have: a camera's is baseline (one), a
# progressive one about ten. Each scan costs a pass over every block when it
# is decoded (scaled or turned), so a few MB of tiny scans take minutes of
# CPU (libjpeg-turbo's own TJFLAG_LIMITSCANS stops at 500). 0xFF 0xDA is
# never inside entropy-coded data (a 0xFF there is stuffed with 0x00).
MAX_SCANS: Final = 100
SOS: Final = b"\xff\xda"
# TurboJPEG's colour spaces a picture can be scaled in (TJCS_RGB, TJCS_YCbCr,
# TJCS_GRAY). CMYK and YCCK JPEGs (print files, never a camera's) decode to
# no RGB image: HA's own scaling of one for a card raised an error (a 500).
_SCALABLE_COLORSPACES: Final = frozenset({0, 1, 2})
JPEG_CONTENT_TYPES: Final = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
# Some cameras pad their JPEGs after the end marker; tolerate a little.
_TRAILING_PADDING: Final = b"\x00\r\n \t"
_MAX_PADDING: Final = 64

_lock = threading.Lock()
_turbojpeg: TurboJPEG | None = None


def turbojpeg() -> TurboJPEG:
    """Return the process-wide TurboJPEG handle (loads libturbojpeg once)."""
    global _turbojpeg  # noqa: PLW0603 - one native handle per process
    with _lock:
        if _turbojpeg is None:
            from turbojpeg import TurboJPEG  # noqa: PLC0415 - loads a shared library

            _turbojpeg = TurboJPEG()
        return _turbojpeg


def loaded() -> bool:
    """Whether libturbojpeg is loaded (loading it is blocking file I/O)."""
    return _turbojpeg is not None


def check_content_type(content_type: str) -> None:
    """Refuse a declared type that is not a JPEG (an HTML page, an MJPEG stream).

    Also called at a reply's headers, before its body is read: a snapshot
    URL that streams MJPEG (multipart/x-mixed-replace, never ending) is
    refused at once rather than read until the still's deadline.

    A reply that declares no type at all (some cheap cameras' CGI) is judged
    by its bytes alone: validate_jpeg's markers and header still refuse an
    HTML page or a cut body. A declared type that is not a JPEG is refused.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type not in JPEG_CONTENT_TYPES:
        raise InvalidImageError(f"content type {media_type}", kind="content_type")


def validate_jpeg(
    data: bytes, content_type: str | None = None, max_bytes: int = MAX_JPEG_BYTES
) -> tuple[int, int]:
    """Check that ``data`` is one whole, decodable JPEG; return (width, height).

    The real failures this catches: zero-length replies, HTML error pages
    served with 200, bodies cut short by a dropped connection, and garbage.
    """
    if not data:
        raise InvalidImageError("empty reply", kind="empty")
    if len(data) > max_bytes:
        raise InvalidImageError(f"larger than {max_bytes} bytes", kind="too_large")
    if content_type is not None:
        check_content_type(content_type)
    if not data.startswith(SOI):
        raise InvalidImageError("no JPEG start marker", kind="not_jpeg")
    tail = data[-_MAX_PADDING - 2 :].rstrip(_TRAILING_PADDING)
    if not tail.endswith(EOI):
        raise InvalidImageError("truncated (no JPEG end marker)", kind="truncated")
    if data.count(SOS) > MAX_SCANS:
        raise InvalidImageError(f"more than {MAX_SCANS} scans", kind="too_many_scans")
    try:
        width, height, _subsample, colorspace = turbojpeg().decode_header(data)
    except OSError as err:
        raise InvalidImageError("header does not decode", kind="undecodable") from err
    if colorspace not in _SCALABLE_COLORSPACES:
        raise InvalidImageError("a CMYK or YCCK picture", kind="colorspace")
    if not (
        0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION and width * height <= MAX_PIXELS
    ):
        raise InvalidImageError(f"implausible size {width}x{height}", kind="bad_size")
    return int(width), int(height)


def encode_bgr(array: np.ndarray, quality: int = 85) -> bytes:
    """Encode a BGR24 frame as JPEG."""
    return bytes(turbojpeg().encode(array, quality=quality))


def cover_size(src_width: int, src_height: int, width: int, height: int) -> tuple[int, int] | None:
    """The smallest size with the source's aspect that covers ``width``x``height``.

    One side equals the request exactly and the other is at least as large
    (rounded up), so the picture fills the card without being upscaled.
    None when the source is no larger than that: it is served as it is.
    """
    if width * src_height >= height * src_width:  # the width decides
        if width >= src_width:
            return None
        return width, -(-src_height * width // src_width)
    if height >= src_height:
        return None
    return -(-src_width * height // src_height), height


def scale_jpeg(data: bytes, width: int | None, height: int | None) -> tuple[bytes, int, int]:
    """Scale a JPEG down for a card that asked for ``width``x``height``.

    The result has exactly the ``cover_size`` of the request. That matters
    beyond looks: HA's camera_proxy runs its own best-effort scaling
    (``scale_jpeg_camera_image``) on whatever the entity returns, on the event
    loop, for every request, and it leaves a picture alone only when 7/8 of
    it no longer covers the request. A TurboJPEG scaling factor alone (k/8)
    often lands above that, and HA then scaled the cached copy again on every
    request, a second lossy encode. So: decode with the smallest DCT factor
    that still covers the request (a fraction of a full decode), resample the
    rest of the way (Pillow, which Home Assistant itself requires) and encode
    once. Returns the JPEG and its size; the original when no smaller size is
    asked for, or when this JPEG cannot be scaled (the same frame, unscaled).
    """
    src_width, src_height, _s, _c = turbojpeg().decode_header(data)
    target = cover_size(src_width, src_height, width, height) if width and height else None
    if target is None:
        return data, int(src_width), int(src_height)
    factor = min(
        (
            (num, den)
            for num, den in turbojpeg().scaling_factors
            if num < den
            and -(-src_width * num // den) >= target[0]
            and -(-src_height * num // den) >= target[1]
        ),
        key=lambda f: f[0] / f[1],
        default=(1, 1),
    )
    import numpy as np  # noqa: PLC0415 - only scaled requests need these
    from PIL import Image  # noqa: PLC0415
    from turbojpeg import TJPF_RGB  # noqa: PLC0415

    try:
        pixels = turbojpeg().decode(data, pixel_format=TJPF_RGB, scaling_factor=factor)
    except OSError:
        # Decodable header, undecodable pixels (a 12-bit or lossless JPEG):
        # the full frame is still this camera's current, valid picture.
        return data, int(src_width), int(src_height)
    if (pixels.shape[1], pixels.shape[0]) != target:
        image = Image.fromarray(pixels).resize(target, Image.Resampling.BICUBIC)
        pixels = np.asarray(image)
    return bytes(turbojpeg().encode(pixels, quality=80, pixel_format=TJPF_RGB)), *target


# The markers before the picture data a camera's JPEG may carry (APPn,
# comments, tables): more than this and its EXIF is not looked for.
_MAX_HEADER_SEGMENTS: Final = 32
_EXIF_ORIENTATION_TAG: Final = 0x0112
# EXIF's Orientation says how to turn the stored picture for display (a
# viewer applies it): the turn, as a key of _TURNS, that does that. (EXIF 6
# and 8 are the quarter turns Home Assistant's setting numbers the other way.)
_EXIF_TURN: Final = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation of a JPEG (1, as stored, when it has none or it cannot be read).

    A plain walk of the header segments up to the picture data, bounded in
    count: no decode, a few microseconds.
    """
    pos = 2  # after SOI
    for _ in range(_MAX_HEADER_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return 1
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no EXIF before them
            return 1
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag of an EXIF block's first directory (1 when absent or malformed)."""
    order: Literal["little", "big"]
    if tiff[:2] == b"II":
        order = "little"
    elif tiff[:2] == b"MM":
        order = "big"
    else:
        return 1
    if len(tiff) < 8:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == _EXIF_ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if value in _EXIF_TURN else 1
    return 1


def orient_jpeg(data: bytes, orientation: int, *, exif: int = 1) -> tuple[bytes, int, int]:
    """The picture turned as Home Assistant's camera setting *Orientation* turns its stream.

    ``orientation`` is the setting's value (EXIF's numbering, 1 to 8, with
    the meanings Home Assistant's stream gives them: 2 mirror, 3 rotate 180,
    4 flip, 5 rotate left and flip, 6 rotate left, 7 rotate right and flip,
    8 rotate right). Home Assistant turns only the stream and stills taken
    from it; LocalCam's other stills (snapshot URL, its own grabs) are turned
    here, so a camera's stills look the same whichever source served them.
    Returns the JPEG and its size; 1 (or an unknown value) leaves it as it is.

    ``exif`` is the JPEG's own EXIF Orientation (``exif_orientation``): the
    picture is first turned upright as a viewer would show it, then as the
    setting says. The result carries no EXIF, so every copy of it (the card
    sizes re-encoded from it too) shows the same way up everywhere.
    """
    import numpy as np  # noqa: PLC0415 - only turned cameras need these
    from turbojpeg import TJPF_RGB  # noqa: PLC0415

    turns = [_TURNS[t] for t in (_EXIF_TURN.get(exif), orientation) if t in _TURNS]
    try:
        decoded = turbojpeg().decode(data, pixel_format=TJPF_RGB) if turns else None
    except OSError:
        # Decodable header, undecodable pixels (a 12-bit or lossless JPEG):
        # the picture as the camera sent it, rather than none.
        decoded = None
    if decoded is None:
        width, height, _s, _c = turbojpeg().decode_header(data)
        return data, int(width), int(height)
    for turn in turns:
        decoded = turn(decoded)
    pixels = np.ascontiguousarray(decoded)
    encoded = bytes(turbojpeg().encode(pixels, quality=85, pixel_format=TJPF_RGB))
    return encoded, int(pixels.shape[1]), int(pixels.shape[0])


def _transpose(pixels: np.ndarray) -> np.ndarray:
    """Rows become columns (the mirror along the top-left to bottom-right diagonal)."""
    return pixels.transpose(1, 0, 2)


# Rows x columns x channels; each the turn its setting names (see orient_jpeg).
_TURNS: Final[dict[int, Callable[[np.ndarray], np.ndarray]]] = {
    2: lambda p: p[:, ::-1],  # mirror: left and right swap
    3: lambda p: p[::-1, ::-1],  # rotate 180
    4: lambda p: p[::-1],  # flip: top and bottom swap
    5: _transpose,  # rotate left, then flip
    6: lambda p: _transpose(p)[::-1],  # rotate left (a quarter turn anticlockwise)
    7: lambda p: _transpose(p[::-1, ::-1]),  # rotate right, then flip
    8: lambda p: _transpose(p[::-1]),  # rotate right (a quarter turn clockwise)
}
