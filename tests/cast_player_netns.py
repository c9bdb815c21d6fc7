"""Inner half of tests/test_cast_player.py: runs only inside that test's network namespace.

Not collected by the suite (no ``test_`` prefix); tests/test_cast_player.py runs
it under ``ip netns exec`` with pytest. Home Assistant's real cast integration
with a Nest Hub whose pychromecast is mocked (tests/test_cast.py's fixtures)
receives LocalCam's LOAD; the URL in it is then played the two ways a Cast
receiver's web player can: hls.js (what the Default Media Receiver and most
web players use) and Chromium's own HLS player, in headless Chromium. Each
must play, and show the porch camera's colour. Everything listens on the
namespace's own loopback.
"""

import asyncio
from collections.abc import AsyncIterator
import io
import json
import os
from pathlib import Path
import time
from typing import Any

import aiohttp
from aiohttp import web
from homeassistant.core import HomeAssistant
from PIL import Image, ImageStat
import pytest

from virtualcam import VirtualCamera, color_for

from .e2e_support import DevTools, in_private_netns, open_page, poll, start_chromium, stop
from .test_cast import (  # noqa: F401 - fixtures used by name
    RECEIVER,
    FakeCastDevice,
    _cast,
    _fast_lifecycle,
    _stop_streams,
    cast_mocks,
    http_port,
    localcam,
    porch,
    receiver,
)

HLSJS = Path(os.environ.get("LOCALCAM_HLSJS", ""))
OUT = Path(os.environ.get("LOCALCAM_CAST_PLAYER_OUT", "/nonexistent"))
PLAY_TIMEOUT = 45.0
VIDEO_SIZE = (640, 360)

pytestmark = pytest.mark.skipif(
    not in_private_netns() or not HLSJS.is_file(),
    reason="runs only inside tests/test_cast_player.py's namespace, with hls.js",
)

PLAYER_HTML = """<!doctype html>
<html><body style="margin:0;background:#000">
<video id="v" muted autoplay playsinline style="width:{width}px;height:{height}px"></video>
<script src="/hls.min.js"></script>
<script>
const query = new URLSearchParams(location.search);
const src = query.get("src");
const video = document.getElementById("v");
window.player = {
  kind: query.get("player"),
  native: video.canPlayType("application/vnd.apple.mpegurl"),
  error: null,
};
video.addEventListener("error", () => {
  const error = video.error;
  window.player.error = "media error " + (error ? error.code + " " + error.message : "?");
});
if (window.player.kind === "native") {
  video.src = src;
} else {
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (data.fatal) window.player.error = data.type + ": " + data.details;
  });
  hls.loadSource(src);
  hls.attachMedia(video);
}
video.play().catch(() => {});
</script></body></html>
""".replace("{width}", str(VIDEO_SIZE[0])).replace("{height}", str(VIDEO_SIZE[1]))

STATE = """(() => {
  const v = document.getElementById("v");
  if (!v || !window.player) return null;  // the page is still loading
  return {time: v.currentTime, ready: v.readyState, paused: v.paused,
          width: v.videoWidth, error: window.player.error, native: window.player.native};
})()"""


@pytest.fixture
async def page_server(socket_enabled: None) -> AsyncIterator[str]:
    """Serve the player page and hls.js from another origin, as a receiver app is."""

    async def player(_request: web.Request) -> web.Response:
        return web.Response(text=PLAYER_HTML, content_type="text/html")

    script = await asyncio.to_thread(HLSJS.read_bytes)

    async def hlsjs(_request: web.Request) -> web.Response:
        return web.Response(body=script, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/player.html", player)
    app.router.add_get("/hls.min.js", hlsjs)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/player.html"
    finally:
        await runner.cleanup()


async def _play(devtools: DevTools, page: str, url: str, kind: str) -> dict[str, Any]:
    """Open the player on the cast URL; wait until its video plays (time advancing)."""
    query = aiohttp.helpers.quote(url, safe="")
    started = time.monotonic()
    await devtools.call("Page.navigate", {"url": f"{page}?player={kind}&src={query}"})
    last: list[float] = []

    async def playing() -> dict[str, Any] | None:
        state = await devtools.evaluate(STATE)
        if state is None:
            return None
        if state["error"]:
            raise AssertionError(
                f"{kind} player: {state['error']} (canPlayType {state['native']!r})"
            )
        advanced = bool(last) and state["time"] > last[-1] + 0.2
        last.append(state["time"])
        if state["ready"] >= 2 and not state["paused"] and state["width"] > 0 and advanced:
            return state
        return None

    state = await poll(playing, PLAY_TIMEOUT, f"the {kind} player to play the cast URL", 0.25)
    return {**state, "seconds_to_playing": time.monotonic() - started}


def _centre_colour(png: bytes) -> tuple[int, ...]:
    """Median colour of the central 40 % of the video element."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = VIDEO_SIZE
    box = (int(width * 0.3), int(height * 0.3), int(width * 0.7), int(height * 0.7))
    return tuple(int(v) for v in ImageStat.Stat(image.crop(box)).median[:3])


async def test_cast_url_plays_in_hlsjs_and_chromium(
    hass: HomeAssistant,
    porch: str,  # noqa: F811 - the fixture imported from test_cast
    receiver: FakeCastDevice,  # noqa: F811
    http_port: int,  # noqa: F811
    camera: VirtualCamera,
    page_server: str,
    tmp_path: Path,
) -> None:
    """Play the URL LocalCam casts in hls.js and in Chromium's own HLS player; report both.

    Each player gets a cast of its own (a new token, as a second receiver or a
    second cast would), so each starts from a playlist nobody has loaded yet.
    The native player goes first, on a stream that has just started (one part):
    the harder start for it, since its immediate reload must wait for part two.
    The outer test checks the figures: whether each played, and its colour.
    """
    results: dict[str, Any] = {
        "camera_colour": camera.config.color,
        "palette": [color_for(i) for i in range(8)],
    }
    # LOCALCAM_CHROMIUM_LOG=1: Chromium's media logs land in chromium.log beside the profile.
    verbose = ["--enable-logging", "--v=1"] if os.environ.get("LOCALCAM_CHROMIUM_LOG") else []
    chromium, port = await start_chromium(tmp_path / "profile", verbose)
    try:
        async with aiohttp.ClientSession() as session:
            devtools = await open_page(session, port)
            await devtools.call("Media.enable")  # the players' own logs, for a failure report
            try:
                for kind in ("native", "hlsjs"):
                    called = time.monotonic()
                    await _cast(hass, porch, mode="live", duration=120)
                    url = receiver.loads[-1]["media"]["contentId"]
                    results[f"{kind}_cast_call_seconds"] = time.monotonic() - called
                    try:
                        state = await _play(devtools, page_server, url, kind)
                    except (AssertionError, TimeoutError) as err:
                        # Reported to the outer test, which decides what must play.
                        results[kind] = {"error": str(err)[:4000]}
                        continue
                    shot = tmp_path / f"{kind}.png"
                    await devtools.screenshot(shot)
                    state["colour"] = _centre_colour(shot.read_bytes())
                    results[kind] = state
            finally:
                await devtools.close()
    finally:
        await stop(chromium)
        await hass.services.async_call(
            "localcam", "stop_cast", {"media_player": RECEIVER}, blocking=True
        )
        await asyncio.to_thread(OUT.write_text, json.dumps(results))
