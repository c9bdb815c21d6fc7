"""Generate LocalCam's Home Assistant brand images (icon and logo, light and dark)."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
BRAND_DIR = ROOT / "custom_components" / "localcam" / "brand"

SUPERSAMPLE = 4
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf"),
    Path("/Library/Fonts/DejaVuSans-Bold.ttf"),
    Path("C:/Windows/Fonts/DejaVuSans-Bold.ttf"),
)
WORDMARK = ("Local", "Cam")

# Mark geometry in units of the mark's side (the mark is a square, 1.0 x 1.0).
STROKE = 0.095
HOUSE = ((0.5, 0.0), (1.0, 0.45), (1.0, 1.0), (0.0, 1.0), (0.0, 0.45))
LENS_CENTER = (0.5, 0.62)
LENS_HOUSING = 0.265  # outer radius of the lens barrel
LENS_RIM = (0.19, 0.215)  # inner and outer radius of the glass rim
LENS_IRIS = 0.12
LENS_PUPIL = 0.055
GLINT = (0.155, 200.0, 250.0, 0.03)  # arc radius, start and end angle, width

# Logo layout in units of the logo's height.
LOGO_GAP = 0.15
LOGO_TEXT_CAP = 0.39  # cap height of the wordmark
LOGO_TEXT_CENTER = LENS_CENTER[1]  # the wordmark is level with the lens


@dataclass(frozen=True, slots=True)
class Palette:
    """Colours of one brand variant."""

    house: str
    housing: str
    rim: str
    glass: str
    iris: str
    pupil: str
    glint: str
    word: str
    word_accent: str


NAVY = "#0D2B45"
BLUE = "#03A9F4"
LIGHT = Palette(
    house=BLUE,
    housing=NAVY,
    rim=BLUE,
    glass=NAVY,
    iris=BLUE,
    pupil=NAVY,
    glint="#FFFFFF",
    word=NAVY,
    word_accent=BLUE,
)
DARK = Palette(
    house="#29B6F6",
    housing="#CFD8DC",
    rim="#29B6F6",
    glass=NAVY,
    iris=BLUE,
    pupil=NAVY,
    glint="#FFFFFF",
    word="#F5F7FA",
    word_accent="#29B6F6",
)


def _inset_polygon(points: np.ndarray, inset: float) -> np.ndarray:
    """Return a convex polygon with every edge moved inwards by inset."""
    count = len(points)
    centroid = points.mean(axis=0)
    lines: list[tuple[np.ndarray, float]] = []
    for i in range(count):
        a, b = points[i], points[(i + 1) % count]
        direction = (b - a) / np.linalg.norm(b - a)
        normal = np.array([-direction[1], direction[0]])
        if np.dot(centroid - a, normal) < 0:
            normal = -normal
        lines.append((normal, float(np.dot(normal, a)) + inset))
    result = []
    for i in range(count):
        (n1, c1), (n2, c2) = lines[i - 1], lines[i]
        result.append(np.linalg.solve(np.array([n1, n2]), np.array([c1, c2])))
    return np.array(result)


def _outline_mask(points: np.ndarray, width: float, size: int) -> Image.Image:
    """Return an L mask of a closed polyline stroked with round joins."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dist = np.full((size, size), np.inf)
    for i in range(len(points)):
        a, b = points[i], points[(i + 1) % len(points)]
        ab = b - a
        t = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / float(np.dot(ab, ab))
        t = np.clip(t, 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(xs - a[0] - t * ab[0], ys - a[1] - t * ab[1]))
    return Image.fromarray(np.where(dist <= width / 2, 255, 0).astype(np.uint8), "L")


def _disc(draw: ImageDraw.ImageDraw, center: tuple[float, float], radius: float, fill: str) -> None:
    """Draw a filled circle."""
    x, y = center
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)


def render_mark(side: int, palette: Palette) -> Image.Image:
    """Render the house-and-lens mark aliased at side x side; callers downsample it."""
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    # The stroke centreline is the house inset by half the stroke; it is then
    # stretched vertically so the round-capped roof also touches the top edge.
    half = STROKE * side / 2
    centreline = _inset_polygon(np.array(HOUSE) * side, half)
    top, bottom = centreline[:, 1].min() - half, centreline[:, 1].max() + half
    centreline[:, 1] = half + (centreline[:, 1] - top - half) * (side - 2 * half) / (
        bottom - top - 2 * half
    )
    image.paste(palette.house, (0, 0), _outline_mask(centreline, STROKE * side, side))
    draw = ImageDraw.Draw(image)
    center = (LENS_CENTER[0] * side, LENS_CENTER[1] * side)
    rim_inner, rim_outer = LENS_RIM
    for radius, colour in (
        (LENS_HOUSING, palette.housing),
        (rim_outer, palette.rim),
        (rim_inner, palette.glass),
        (LENS_IRIS, palette.iris),
        (LENS_PUPIL, palette.pupil),
    ):
        _disc(draw, center, radius * side, colour)
    radius, start, stop, width = GLINT
    box = (
        center[0] - radius * side,
        center[1] - radius * side,
        center[0] + radius * side,
        center[1] + radius * side,
    )
    draw.arc(box, start, stop, fill=palette.glint, width=round(width * side))
    for angle in np.radians((start, stop)):  # round caps, centred on the arc's stroke
        mid = (radius - width / 2) * side
        cap = (center[0] + mid * np.cos(angle), center[1] + mid * np.sin(angle))
        _disc(draw, cap, width * side / 2, palette.glint)
    return image


def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Return DejaVu Sans Bold at size, or Pillow's built-in font if it is absent."""
    for candidate in FONT_CANDIDATES:
        if candidate.is_file():
            return ImageFont.truetype(str(candidate), size)
    return ImageFont.load_default(size=size)


def render_wordmark(cap_height: int, palette: Palette) -> Image.Image:
    """Render the two-tone "LocalCam" wordmark, trimmed, with the given cap height."""
    _, cap_top, _, cap_bottom = load_font(100).getbbox("L")
    font = load_font(max(1, round(100 * cap_height / max(1, cap_bottom - cap_top))))
    first, second = WORDMARK
    left, top, right, bottom = (round(v) for v in font.getbbox(first + second))
    image = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    origin = (2 - left, 2 - top)
    draw.text(origin, first, font=font, fill=palette.word)
    draw.text(
        (origin[0] + font.getlength(first), origin[1]),
        second,
        font=font,
        fill=palette.word_accent,
    )
    return _trim(image)


def _trim(image: Image.Image) -> Image.Image:
    """Crop an RGBA image to its non-transparent pixels."""
    bbox = image.getchannel("A").getbbox()
    return image.crop(bbox) if bbox else image


def _downsample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Anti-alias a supersampled RGBA image down to size."""
    return _trim(image.resize(size, Image.Resampling.LANCZOS))


def make_icon(side: int, palette: Palette) -> Image.Image:
    """Return the square icon at side x side pixels."""
    return _downsample(render_mark(side * SUPERSAMPLE, palette), (side, side))


def make_logo(height: int, palette: Palette) -> Image.Image:
    """Return the landscape logo (mark plus wordmark) at the given height."""
    big = height * SUPERSAMPLE
    mark = render_mark(big, palette)
    word = render_wordmark(round(LOGO_TEXT_CAP * big), palette)
    gap = round(LOGO_GAP * big)
    canvas = Image.new("RGBA", (big + gap + word.width, big), (0, 0, 0, 0))
    canvas.alpha_composite(mark, (0, 0))
    canvas.alpha_composite(word, (big + gap, round(LOGO_TEXT_CENTER * big - word.height / 2)))
    width = round(canvas.width / SUPERSAMPLE)
    return _downsample(canvas, (width, height))


def main() -> None:
    """Write all eight brand images into the integration's brand folder."""
    BRAND_DIR.mkdir(parents=True, exist_ok=True)
    for prefix, palette in (("", LIGHT), ("dark_", DARK)):
        for suffix, scale in (("", 1), ("@2x", 2)):
            outputs = {
                f"{prefix}icon{suffix}.png": make_icon(256 * scale, palette),
                f"{prefix}logo{suffix}.png": make_logo(128 * scale, palette),
            }
            for name, image in outputs.items():
                image.save(BRAND_DIR / name, optimize=True)
                print(f"{name}: {image.width}x{image.height}")


if __name__ == "__main__":
    main()
