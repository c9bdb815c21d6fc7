"""A real Home Assistant in a real browser: dashboard cards and live streams, by their pixels.

The test creates a network namespace holding only its own loopback and runs
tests/e2e_support.py in it under ``ip netns exec``: two virtual cameras (red and cyan),
``hass`` onboarded through the REST API with both cameras added through the config flow's
HTTP API, and headless Debian Chromium driven over the DevTools protocol. The screenshots
land in bench/results/screenshots/<time>/ (printed); this test checks their pixels. No
packet can leave the namespace: it has no link but its own `lo` and no default route; it is
deleted, and every process left in it killed by PID, whatever happens.
"""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any

from PIL import Image, ImageStat
import pytest

from virtualcam import nearest_camera

from .netns import BROWSER_IN_NAMESPACE, loopback_namespace

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = f"lce2e{os.getpid()}"
# Everything inside the driver (HA start, flows, browser, two streams) must fit here;
# it takes about 30 s on two CPUs.
BUDGET = 150
# Max per-channel distance from a camera's colour after JPEG or H.264 and scaling.
TOLERANCE = 40

pytestmark = BROWSER_IN_NAMESPACE


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations() -> None:
    """Override the suite's: no Home Assistant runs in this process, so no `hass` fixture."""


@pytest.fixture(autouse=True)
def _no_blocking_io() -> None:
    """Override the suite's: this test has no event loop and waits on subprocesses."""


def run_driver(state: Path, out: Path) -> tuple[dict[str, Any] | None, str]:
    """Run tests/e2e_support.py inside the namespace; its RESULT (or None) and its log."""
    proc = subprocess.Popen(
        [
            "ip", "netns", "exec", NAMESPACE,
            sys.executable, "-m", "tests.e2e_support",
            "--dir", str(state), "--out", str(out), "--budget", str(BUDGET),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=BUDGET + 30)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the driver then ends hass, Chromium and the cameras itself.
        os.kill(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=10)
    result = next(
        (json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")),
        None,
    )
    return result, f"{stdout[-2000:]}\n{stderr[-6000:]}"


def centre_colour(image: Image.Image, rect: list[int], fraction: float = 0.4) -> tuple[int, ...]:
    """Median colour of the central `fraction` of a CSS-pixel rectangle (scale factor 1)."""
    x, y, width, height = rect
    cx, cy = x + width / 2, y + height / 2
    half_w, half_h = width * fraction / 2, height * fraction / 2
    crop = image.crop((int(cx - half_w), int(cy - half_h), int(cx + half_w), int(cy + half_h)))
    return tuple(int(v) for v in ImageStat.Stat(crop).median[:3])


def assert_colour(
    seen: tuple[int, ...], colours: list[tuple[int, ...]], index: int, what: str
) -> None:
    """`seen` is camera `index`'s colour, and nearer to it than to any other camera's."""
    expected = colours[index]
    assert nearest_camera(seen, colours) == index, f"{what}: {seen}, expected {expected}"
    assert max(abs(a - b) for a, b in zip(seen, expected, strict=True)) <= TOLERANCE, (
        f"{what}: {seen} is too far from {expected}"
    )


@pytest.mark.hass_process
@pytest.mark.timeout(BUDGET + 90)
def test_dashboard_and_live_stream_in_headless_chromium(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each picture-entity card shows its camera's colour; each more-info dialog plays it."""
    shots = ROOT / "bench" / "results" / "screenshots" / time.strftime("%Y%m%d-%H%M%S")
    shots.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nbrowser screenshots: {shots}", flush=True)
    with loopback_namespace(NAMESPACE):
        result, log = run_driver(tmp_path, shots)
    if result is None:
        hass_log = tmp_path / "config" / "home-assistant.log"
        tail = hass_log.read_text(errors="replace")[-4000:] if hass_log.exists() else ""
        pytest.fail(f"the browser run failed (screenshots: {shots}):\n{log}\n{tail}")

    cameras = result["cameras"]
    colours = [tuple(camera["color"]) for camera in cameras]
    assert len(set(colours)) == 2, "the two cameras need different colours"

    dashboard = Image.open(result["dashboard"]["path"]).convert("RGB")
    assert dashboard.size == (1280, 900)
    cards = {card["entity_id"]: card for card in result["dashboard"]["cards"]}
    assert set(cards) == {camera["entity_id"] for camera in cameras}
    for index, camera in enumerate(cameras):
        card = cards[camera["entity_id"]]
        assert card["loaded"], card
        assert_colour(
            centre_colour(dashboard, card["image"]), colours, index, f"card {camera['entity_id']}"
        )

    assert [m["entity_id"] for m in result["more_info"]] == [c["entity_id"] for c in cameras]
    for index, (camera, more_info) in enumerate(zip(cameras, result["more_info"], strict=True)):
        assert more_info["dialog"], f"no more-info dialog titled {camera['title']}"
        (video,) = more_info["videos"]
        assert video["ready_state"] >= 2, video
        assert not video["paused"], video
        assert video["error"] is None, video
        image = Image.open(more_info["path"]).convert("RGB")
        assert_colour(
            centre_colour(image, video["rect"]), colours, index, f"video {camera['entity_id']}"
        )
    print(f"timings: {result['timings']}")
