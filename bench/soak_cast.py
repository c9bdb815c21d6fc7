"""The soak's cast traffic: Home Assistant's cast integration and an emulated Cast receiver.

A `virtualcam.cast.CastReceiver` (Cast v2 over TLS, eureka_info, a player that
fetches and decodes what it is sent) listens on its own loopback address; the
soak's hass adds HA's real `cast` integration with that address as a known
host, so the receiver shows up as a `media_player` the way a Nest Hub does.
Then, through the run, LocalCam's `localcam.cast` action sends one camera
after another to it, now and then stops it with `localcam.stop_cast`, and
this module checks what the receiver's player showed and what happened to
the URLs it was given:

- every picture the player decoded is the cast camera's (foreign must be 0);
- the time from the action call to the first picture on the receiver;
- the URL of a replaced or stopped cast answers 404 within 10 s (ANCHORS.md).

HA's cast integration runs zeroconf; the soak runs all this only inside a
network namespace of its own (bench/soak.py), where nothing but loopback
exists.
"""

import asyncio
from dataclasses import dataclass, field
import statistics
import time
from typing import Any

import aiohttp

from bench.harness import Hass
from virtualcam import nearest_camera
from virtualcam.cast import CastReceiver, Playback

RECEIVER_HOST = "127.0.0.9"
RECEIVER_NAME = "Soak kitchen display"
# ANCHORS.md, casting: the old URL answers 404 within 10 s of stop or replacement.
DEAD_URL_TARGET = 10.0
FIRST_PICTURE_TIMEOUT = {"live": 20.0, "snapshot": 10.0}
# Max per-channel distance between a decoded picture and its camera's colour
# (H.264 at the soak's small size, and JPEG): anything further is not that camera.
TOLERANCE = 40


def shows_camera(
    colour: tuple[int, int, int], colors: list[tuple[int, int, int]], index: int
) -> bool:
    """Whether a decoded picture's colour is camera `index`'s (nearest, and close)."""
    nearest = nearest_camera(colour, colors)
    return (
        nearest == index
        and max(abs(a - b) for a, b in zip(colour, colors[nearest], strict=True)) <= TOLERANCE
    )


async def poll_until_gone(
    http: aiohttp.ClientSession, url: str, limit: float
) -> tuple[float | None, int | None, int]:
    """GET `url` every 0.5 s until it answers 404, for at most `limit` seconds.

    Returns (seconds until the 404 or None, the last status (0: no answer), polls).
    """
    started = time.monotonic()
    status: int | None = None
    polls = 0
    while time.monotonic() - started < limit and polls < 1000:
        polls += 1
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientError, TimeoutError, OSError:
            status = 0
        if status == 404:
            return time.monotonic() - started, status, polls
        await asyncio.sleep(0.5)
    return None, status, polls


async def add_cast_receiver(hass: Hass, host: str, name: str, timeout: float = 90) -> str:
    """Set HA's cast integration up with `host` as a known host; return its media_player.

    The user's way: the cast config flow through HA's HTTP API, which asks
    for known hosts (for a network where mDNS does not reach). pychromecast
    then polls the host's eureka_info and connects.
    """
    flow = await hass.post_json("/api/config/config_entries/flow", {"handler": "cast"})
    for _ in range(4):
        if flow.get("type") != "form":
            break
        flow = await hass.post_json(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"known_hosts": [host]} if flow.get("step_id") == "config" else {},
        )
    if flow.get("type") != "create_entry":
        raise RuntimeError(f"cast config flow ended with {flow}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in await hass.get_json("/api/states"):
            if (
                state["entity_id"].startswith("media_player.")
                and state["attributes"].get("friendly_name") == name
                and state["state"] != "unavailable"
            ):
                return str(state["entity_id"])
        await asyncio.sleep(0.5)
    raise RuntimeError(f"HA's cast integration never showed the receiver at {host}")


@dataclass
class CastCounters:
    """What the cast traffic saw."""

    casts: int = 0
    service_errors: dict[str, int] = field(default_factory=dict)
    played: int = 0
    not_played: dict[str, int] = field(default_factory=dict)
    right_camera: int = 0
    foreign: list[dict[str, Any]] = field(default_factory=list)
    first_picture_s: dict[str, list[float]] = field(default_factory=dict)
    stops: int = 0
    dead_url_s: list[float] = field(default_factory=list)
    url_alive: list[dict[str, Any]] = field(default_factory=list)
    pictures: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


class CastTraffic:
    """The receiver, HA's cast entry for it, and the casting loop."""

    def __init__(self, hass: Hass, colors: list[tuple[int, int, int]], every: float) -> None:
        """Nothing runs until start()."""
        self.hass = hass
        self.colors = colors
        self.every = every
        self.receiver = CastReceiver(RECEIVER_HOST, name=RECEIVER_NAME, max_play_seconds=900)
        self.media_player = ""
        self.counters = CastCounters()
        self.began = time.monotonic()  # reset when the casting loop starts
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Start the receiver; HA's cast integration finds it as a known host."""
        await self.receiver.start()

    async def add_to_hass(self) -> None:
        """Add HA's cast integration (known host = the receiver) and wait for its player."""
        self.media_player = await add_cast_receiver(self.hass, RECEIVER_HOST, RECEIVER_NAME)

    async def stop(self) -> None:
        """Stop the receiver and any URL check still running."""
        for task in list(self._tasks):
            task.cancel()
        await self.receiver.stop()

    # -- the casting loop --

    async def run(self, cams: list[Any], stop_at: float, paused: Any, rng: Any) -> None:
        """Cast a camera every `every` seconds until `stop_at`; every fourth action stops."""
        self.began = time.monotonic()
        for n in range(100_000):
            await asyncio.sleep(self.every)
            if time.monotonic() >= stop_at:
                break
            if paused():
                continue
            if n % 4 == 3:
                await self.stop_cast()
            else:
                cam = rng.choice(cams)
                await self.cast(cam, "snapshot" if n % 4 == 2 else "live")
        # Let the last URL checks finish (each is bounded).
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=DEAD_URL_TARGET + 5)

    async def _action(self, service: str, body: dict[str, Any]) -> str | None:
        """Call a LocalCam action; None when it worked, else the error's short form."""
        try:
            await self.hass.post_json(f"/api/services/localcam/{service}", body)
        except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError) as err:
            text = str(err)
            return text[text.find("HTTP") :][:80] if "HTTP" in text else type(err).__name__
        return None

    async def cast(self, cam: Any, mode: str) -> None:
        """Cast one camera; check the receiver plays that camera, and only it."""
        c = self.counters
        c.casts += 1
        previous = self.receiver.playing
        before = len(self.receiver.playbacks)
        called = time.monotonic()
        # "t": seconds since traffic began, as the soak's fault events count them.
        record: dict[str, Any] = {
            "t": round(called - self.began, 1),
            "camera": cam.index,
            "mode": mode,
        }
        body = {
            "entity_id": cam.entity_id,
            "media_player": self.media_player,
            "mode": mode,
            "duration": 120,
        }
        if (error := await self._action("cast", body)) is not None:
            c.service_errors[error] = c.service_errors.get(error, 0) + 1
            c.log.append({**record, "error": error})
            return

        def shown() -> Playback | None:
            for playback in self.receiver.playbacks[before:]:
                if f"/{cam.entity_id}/" in playback.content_id and playback.first_picture_at:
                    return playback
            return None

        await self.receiver.wait_for(lambda: shown() is not None, FIRST_PICTURE_TIMEOUT[mode])
        playback = shown()
        if playback is None:
            new = self.receiver.playbacks[before:]
            reason = (new[-1].ended or "no picture") if new else "no LOAD"
            c.not_played[reason] = c.not_played.get(reason, 0) + 1
            record["not_played"] = reason
        else:
            c.played += 1
            assert playback.first_picture_at is not None
            seconds = playback.first_picture_at - called
            c.first_picture_s.setdefault(mode, []).append(seconds)
            record["first_picture_s"] = round(seconds, 2)
            self._check(cam, playback)
        c.log.append(record)
        if previous is not None and previous is not playback:
            self._watch_url(previous, "replaced")

    async def stop_cast(self) -> None:
        """Stop whatever LocalCam cast to the receiver; its URL must die."""
        current = self.receiver.playing
        if (error := await self._action("stop_cast", {"media_player": self.media_player})) is None:
            self.counters.stops += 1
            if current is not None:
                self._watch_url(current, "stopped")
        else:
            key = f"stop: {error}"
            self.counters.service_errors[key] = self.counters.service_errors.get(key, 0) + 1

    def _check(self, cam: Any, playback: Playback) -> None:
        """Every colour the player showed must be the cast camera's."""
        c = self.counters
        c.pictures += playback.pictures
        for colour in playback.colours:
            if shows_camera(colour, self.colors, cam.index):
                continue
            nearest = nearest_camera(colour, self.colors)
            c.foreign.append({"asked": cam.index, "colour": colour, "nearest": nearest})
            return
        # Every picture of this playback (one LOAD, or a still re-sent by a refresh).
        c.right_camera += 1

    def check_all(self, cams: list[Any]) -> None:
        """After the run: colours decoded later in each playback (live) are checked too."""
        by_entity = {cam.entity_id: cam for cam in cams}
        self.counters.foreign.clear()
        self.counters.right_camera = 0
        self.counters.pictures = 0
        for playback in self.receiver.playbacks:
            entity = next((e for e in by_entity if f"/{e}/" in playback.content_id), None)
            if entity is not None and playback.colours:
                self._check(by_entity[entity], playback)

    def _watch_url(self, playback: Playback, why: str) -> None:
        """Poll (bounded) the URL of a cast that ended until it answers 404."""

        async def watch() -> None:
            dead_after, _, _ = await poll_until_gone(
                self.hass.http, playback.content_id, DEAD_URL_TARGET + 5
            )
            if dead_after is not None:
                self.counters.dead_url_s.append(dead_after)
            else:
                self.counters.url_alive.append({"why": why, "session": playback.session})

        task = asyncio.create_task(watch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def report(self) -> dict[str, Any]:
        """The cast section of the soak's report."""
        c = self.counters
        first = {
            mode: {
                "n": len(values),
                "median_s": round(statistics.median(values), 2),
                "max_s": round(max(values), 2),
            }
            for mode, values in c.first_picture_s.items()
            if values
        }
        return {
            "receiver": (
                "virtualcam.cast.CastReceiver on 127.0.0.9 (Cast v2 over TLS, eureka_info),"
                " found by HA's cast integration as a known host"
            ),
            "media_player": self.media_player,
            "casts": c.casts,
            "stops": c.stops,
            "service_errors": c.service_errors,
            "played": c.played,
            "not_played": c.not_played,
            "playbacks_all_right_camera": c.right_camera,
            "pictures_decoded": c.pictures,
            "foreign_pictures": len(c.foreign),
            "foreign": c.foreign[:20],
            "call_to_first_picture": first,
            "dead_url_checked": len(c.dead_url_s) + len(c.url_alive),
            "dead_url_max_s": round(max(c.dead_url_s), 2) if c.dead_url_s else None,
            "url_still_alive": c.url_alive,
            "log": c.log[:200],
            "receiver_connections": self.receiver.connections_accepted,
            "receiver_protocol_errors": self.receiver.protocol_errors[:10],
        }
