"""Casting benchmark: HA's `camera.play_stream` beside LocalCam's `localcam.cast`.

One real Home Assistant with LocalCam and HA's own cast integration, two
virtual cameras, and one emulated Cast receiver (virtualcam/cast.py) that HA
finds as a known host. The receiver's player fetches what it is sent and
decodes it; "playing" here means its first decoded picture, and the picture's
colour says which camera it shows. For each way of casting, from a cold
camera (its entry reloaded, so no stream runs), several trials measure:

- service call -> LOAD on the receiver -> first picture of the right camera;
- what the URL does after the receiver is sent another camera, and after
  `media_player.media_stop`: LocalCam's must answer 404 within 10 s
  (ANCHORS.md), HA's is polled the same way for as long.

HA's `play_stream` and LocalCam's live mode run on the same LocalCam camera
entity (the same camera, the same HA stream component): only the casting
path differs. HA's cast integration runs zeroconf, so the benchmark runs
itself inside a network namespace holding only loopback (needs root and
`ip`); everything listens on 127.0.0.x there.

Usage: bench/cast [--quick] [--trials N]
"""

import argparse
import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import CAMERA_PASSWORD, CAMERA_USER, ROOT, CamHost, Hass
from bench.soak_cast import add_cast_receiver, poll_until_gone, shows_camera
from tests.e2e_support import in_private_netns
from tests.netns import can_make_namespace, rerun_in_namespace
from virtualcam.cast import CastReceiver, Playback

RESULTS = ROOT / "bench" / "results"
SELF = Path(__file__).resolve()
RECEIVER_HOST = "127.0.0.9"
RECEIVER_NAME = "Bench kitchen display"
PLAY_TIMEOUT = 30.0
URL_WATCH = 15.0  # how long an old URL is polled (ANCHORS' bound is 10 s)
TARGET_LIVE_S = 2.0
TARGET_SNAPSHOT_S = 0.5
TARGET_DEAD_URL_S = 10.0
HA = "HA play_stream"
LIVE = "LocalCam live"
SNAPSHOT = "LocalCam snapshot"


@dataclass
class Trial:
    """One cast from a cold camera."""

    way: str
    camera: str
    call_s: float | None = None
    load_s: float | None = None
    first_picture_s: float | None = None
    right_camera: bool | None = None
    url_host: str | None = None
    error: str | None = None
    cold: bool = True  # False: the replacement cast (another camera, receiver busy)


@dataclass
class UrlWatch:
    """What an old cast URL did after the receiver moved on."""

    way: str
    after: str  # "replaced" or "media_stop"
    dead_after_s: float | None = None  # None: still answering when the watch ended
    last_status: int | None = None
    polls: int = 0


@dataclass
class Results:
    """Everything measured."""

    trials: list[Trial] = field(default_factory=list)
    urls: list[UrlWatch] = field(default_factory=list)


def log(text: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[{datetime.now(UTC):%H:%M:%S}] {text}\n")
    sys.stderr.flush()


class CastBench:
    """Cameras, hass, the receiver, and the trials."""

    def __init__(self, trials: int) -> None:
        """Nothing runs until run()."""
        self.trials = trials
        self.cams = CamHost()
        self.hass = Hass(config_dir=Path(tempfile.mkdtemp(prefix="localcam-cast-bench-")))
        self.receiver = CastReceiver(RECEIVER_HOST, name=RECEIVER_NAME, max_play_seconds=120)
        self.media_player = ""
        self.entries: dict[str, str] = {}
        self.entities: dict[str, str] = {}
        self.colors: list[tuple[int, int, int]] = []
        self.results = Results()

    async def setup(self) -> None:
        """Two cameras, the receiver, hass with LocalCam and HA's cast."""
        await self.cams.start(
            {
                "username": CAMERA_USER,
                "password": CAMERA_PASSWORD,
                "width": 640,
                "height": 360,
                "fps": 10.0,
                "cameras": [
                    {"name": "porch", "gop": 1.0, "http": True},
                    {"name": "garage", "gop": 1.0, "http": True},
                ],
            }
        )
        self.colors = [self.cams.color(name) for name in self.cams.cameras]
        await self.receiver.start()
        await self.hass.start([])
        for name, info in self.cams.cameras.items():
            entry = await self.hass.add_localcam(info["rtsp_url"], info["snapshot_url"])
            self.entries[name] = entry
            self.entities[name] = await self.hass.entity_for_entry(entry)
            await self.hass.wait_available(self.entities[name], 60)
        self.media_player = await add_cast_receiver(self.hass, RECEIVER_HOST, RECEIVER_NAME)
        log(f"hass up; cameras {self.entities}; receiver {self.media_player}")

    async def teardown(self) -> None:
        """Stop hass, the receiver and the cameras (by PID where they are processes)."""
        for step in (self.hass.stop, self.receiver.stop, self.cams.stop):
            try:
                await step()
            except Exception as err:
                log(f"teardown: {type(err).__name__}: {err}")

    # -- one trial --

    async def service(self, domain: str, service: str, body: dict[str, Any]) -> None:
        """Call a service through HA's REST API (blocking, as an automation's call)."""
        await self.hass.post_json(f"/api/services/{domain}/{service}", body)

    async def cold(self, camera: str) -> None:
        """Receiver idle, camera entry reloaded (no stream, empty cache)."""
        if self.receiver.playing is not None and self.receiver.playing.ended is None:
            await self.service("media_player", "media_stop", {"entity_id": self.media_player})
            await self.receiver.wait_for(
                lambda: self.receiver.playing is None or self.receiver.playing.ended is not None,
                10,
            )
        await self.hass.reload_entry(self.entries[camera])
        await self.hass.wait_available(self.entities[camera], 30)
        await asyncio.sleep(1.0)

    async def cast(self, way: str, camera: str) -> tuple[Trial, Playback | None]:
        """Cast one camera one way; wait (bounded) for its first picture on the receiver."""
        trial = Trial(way, camera)
        entity = self.entities[camera]
        before = len(self.receiver.playbacks)
        started = time.monotonic()
        try:
            if way == HA:
                body = {"entity_id": entity, "media_player": self.media_player, "format": "hls"}
                await self.service("camera", "play_stream", body)
            else:
                mode = "live" if way == LIVE else "snapshot"
                body = {"entity_id": entity, "media_player": self.media_player, "mode": mode}
                await self.service("localcam", "cast", body)
        except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError) as err:
            trial.error = f"{type(err).__name__}: {err}"[:200]
            return trial, None
        trial.call_s = time.monotonic() - started

        def shown() -> Playback | None:
            for playback in self.receiver.playbacks[before:]:
                if playback.first_picture_at is not None:
                    return playback
            return None

        await self.receiver.wait_for(lambda: shown() is not None, PLAY_TIMEOUT)
        loads = self.receiver.playbacks[before:]
        if loads:
            trial.load_s = loads[0].loaded_at - started
            trial.url_host = urlsplit(loads[0].content_id).hostname
        playback = shown()
        if playback is None:
            trial.error = (loads[-1].ended or "no picture") if loads else "no LOAD"
            return trial, None
        assert playback.first_picture_at is not None
        trial.first_picture_s = playback.first_picture_at - started
        assert playback.colour is not None
        index = list(self.cams.cameras).index(camera)
        trial.right_camera = shows_camera(playback.colour, self.colors, index)
        return trial, playback

    async def watch_url(self, way: str, after: str, url: str) -> UrlWatch:
        """Poll an old URL every 0.5 s until it answers 404, for at most URL_WATCH s."""
        dead_after, status, polls = await poll_until_gone(self.hass.http, url, URL_WATCH)
        return UrlWatch(way, after, dead_after_s=dead_after, last_status=status, polls=polls)

    async def run_way(self, way: str) -> None:
        """Trials from a cold camera; the last one also watches its URL die (or not)."""
        for index in range(self.trials):
            camera = "porch" if index % 2 == 0 else "garage"
            await self.cold(camera)
            trial, playback = await self.cast(way, camera)
            self.results.trials.append(trial)
            log(
                f"{way} {camera}: call {fmt(trial.call_s)} s, first picture "
                f"{fmt(trial.first_picture_s)} s, right camera {trial.right_camera}"
                + (f", error {trial.error}" if trial.error else "")
            )
            if index != self.trials - 1 or playback is None:
                continue
            # Replaced by another camera, then stopped: do the old URLs die?
            other = "garage" if camera == "porch" else "porch"
            replaced_url = playback.content_id
            second, second_playback = await self.cast(way, other)
            second.cold = False
            self.results.trials.append(second)
            self.results.urls.append(await self.watch_url(way, "replaced", replaced_url))
            if second_playback is not None:
                await self.service("media_player", "media_stop", {"entity_id": self.media_player})
                self.results.urls.append(
                    await self.watch_url(way, "media_stop", second_playback.content_id)
                )

    async def run(self) -> Results:
        """Set up, run each way in turn, tear down."""
        try:
            await self.setup()
            for way in (HA, LIVE, SNAPSHOT):
                await self.run_way(way)
        finally:
            await self.teardown()
        return self.results


def fmt(value: float | None) -> str:
    """Seconds for the table."""
    return "-" if value is None else f"{value:.2f}"


def median(values: list[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


def report(results: Results) -> str:
    """The table and the summary beside ANCHORS.md."""
    lines = ["", "Casting: service call -> first picture on the emulated receiver (cold camera)"]
    lines.append(
        f"  {'way':<18} {'trials':>6} {'call s':>7} {'LOAD s':>7} {'first pic s':>22}"
        f" {'right cam':>9}  URL host"
    )
    summary: dict[str, float | None] = {}
    # Met only when every cold trial showed its own camera's picture.
    all_right: dict[str, bool] = {}
    for way in (HA, LIVE, SNAPSHOT):
        rows = [t for t in results.trials if t.way == way and t.cold]
        pictures = [t.first_picture_s for t in rows if t.first_picture_s is not None]
        summary[way] = median(pictures)
        all_right[way] = bool(rows) and all(
            t.right_camera and t.first_picture_s is not None for t in rows
        )
        calls = [t.call_s for t in rows if t.call_s is not None]
        loads = [t.load_s for t in rows if t.load_s is not None]
        spread = f"{fmt(median(pictures))} ({fmt(min(pictures, default=None))}-"
        spread += f"{fmt(max(pictures, default=None))})"
        right = sum(bool(t.right_camera) for t in rows)
        hosts = sorted({t.url_host or "-" for t in rows})
        errors = [t.error for t in rows if t.error]
        lines.append(
            f"  {way:<18} {len(rows):>6} {fmt(median(calls)):>7} {fmt(median(loads)):>7}"
            f" {spread:>22} {right:>5}/{len(rows):<3}  {','.join(hosts)}"
            + (f"  errors: {errors}" if errors else "")
        )
    lines += ["", "Old URLs after the receiver was sent another camera / media_stop"]
    for watch in results.urls:
        outcome = (
            f"404 after {watch.dead_after_s:.1f} s"
            if watch.dead_after_s is not None
            else f"still answering {watch.last_status} after {URL_WATCH:.0f} s"
        )
        lines.append(f"  {watch.way:<18} after {watch.after:<10} {outcome}")
    ha, live, snap = summary[HA], summary[LIVE], summary[SNAPSHOT]
    dead = [w for w in results.urls if w.way != HA]
    worst = max((w.dead_after_s or 1e9 for w in dead), default=None)
    lines += [
        "",
        "SUMMARY (ratio = LocalCam / HA; below 1 is better)",
        f"  live:     {fmt(live)} s vs HA {fmt(ha)} s, ratio "
        f"{fmt(live / ha if live and ha else None)}; target <= {TARGET_LIVE_S} s, "
        "every trial its own camera: "
        f"{'yes' if live is not None and live <= TARGET_LIVE_S and all_right[LIVE] else 'NO'}",
        f"  snapshot: {fmt(snap)} s vs HA {fmt(ha)} s, ratio "
        f"{fmt(snap / ha if snap and ha else None)}; target <= {TARGET_SNAPSHOT_S} s, "
        "every trial its own camera: "
        + (
            "yes"
            if snap is not None and snap <= TARGET_SNAPSHOT_S and all_right[SNAPSHOT]
            else "NO"
        ),
        f"  old URL 404 within {TARGET_DEAD_URL_S:.0f} s of replacement/stop: "
        + (
            f"worst {worst:.1f} s: {'yes' if worst <= TARGET_DEAD_URL_S else 'NO'}"
            if worst is not None and worst < 1e9
            else "NO (one never died)"
            if worst is not None
            else "-"
        ),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(prog="bench/cast", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials per way")
    parser.add_argument("--trials", type=int, default=0, help="trials per way (default 4)")
    parser.add_argument("--json", type=Path, help="results path (default bench/results/)")
    args = parser.parse_args(argv)
    args.trials = args.trials or (2 if args.quick else 4)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.json = args.json or RESULTS / f"cast-{stamp}.json"
    return args


async def main_async(args: argparse.Namespace) -> int:
    """Run and report."""
    started = time.monotonic()
    async with asyncio.timeout(60 + args.trials * 3 * 60):
        results = await CastBench(args.trials).run()
    text = report(results)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "trials": [t.__dict__ for t in results.trials],
                "urls": [w.__dict__ for w in results.urls],
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}  ({time.monotonic() - started:.0f} s)")
    return 0


def main() -> int:
    """Entry point: re-run inside a loopback-only namespace first."""
    args = parse_args()
    if not in_private_netns():
        if not can_make_namespace():
            sys.exit("bench/cast needs root and `ip`: it runs in a network namespace")
        return rerun_in_namespace([sys.executable, str(SELF), *sys.argv[1:]], "lccast", ROOT)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
