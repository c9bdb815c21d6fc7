"""LocalCam's own idle CPU: what its once-a-minute health checks cost (run by bench/idle).

Not collected by the suite (no ``test_`` prefix). ``bench/run`` measures the
whole hass process with 32 idle cameras, and there hass's own idle work
(0.06-1.8 % of a core on the benchmark host, with no camera at all) swamps
what 32 cameras add. This probe measures LocalCam's part alone: one test
Home Assistant with 32 LocalCam cameras, the virtual cameras on a thread and
event loop of their own (their side of each request is not counted), and the
CPU time of Home Assistant's event-loop thread over a window of health checks
less the same window with none. 32 checks are started together, as
HealthRounds starts a round; the window holds many rounds, so the figure per
check is a mean over hundreds. At one check per camera per minute (the
target's "one light request per camera per minute"), the share of a core is
checks per minute times CPU per check.

Home Assistant's debug mode (asyncio's per-callback stack capture) and
pytest's DEBUG log capture are switched off for the measurement: a real
Home Assistant runs without either.
"""

import asyncio
from collections.abc import Awaitable, Callable
import json
import logging
import os
import statistics
import threading
import time
from typing import Any

from homeassistant.core import HomeAssistant
import pytest

from custom_components.localcam.const import HEALTH_INTERVAL_SECONDS
from virtualcam import CameraFarm

from .conftest import CAM_PASSWORD, CAM_USER, make_entry, setup_entry

CAMERAS = int(os.environ.get("LOCALCAM_IDLE_CAMERAS", "32"))
ROUNDS = int(os.environ.get("LOCALCAM_IDLE_ROUNDS", "40"))  # per window
ROUND_GAP = float(os.environ.get("LOCALCAM_IDLE_GAP", "0.25"))  # seconds between round starts
WINDOWS = 3
OUT = os.environ.get("LOCALCAM_PROBE_OUT")
# Longer than the suite's per-test limit: the windows alone take
# 2 * WINDOWS * ROUNDS * ROUND_GAP seconds (a minute by default).
pytestmark = pytest.mark.timeout(120 + 2 * WINDOWS * ROUNDS * ROUND_GAP)


class FarmThread:
    """The virtual cameras, on their own thread and event loop (bounded start and stop)."""

    def __init__(self, farm: CameraFarm) -> None:
        """Bind the farm; nothing runs yet."""
        self.farm = farm
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="idle-probe-cameras")

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.farm.start()
            except BaseException as err:
                self._error = err
                self._ready.set()
                raise
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.farm.stop()

        asyncio.run(main())  # shuts its default executor down too

    def start(self) -> None:
        """Start the cameras; raise what their start raised."""
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the virtual cameras did not start within 60 s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop the cameras and their thread (bounded)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def _loop_cpu(seconds: float, work: Callable[[], Awaitable[Any]] | None) -> float:
    """CPU seconds of this (Home Assistant's event-loop) thread over ROUNDS round slots."""
    start = time.thread_time()
    for _ in range(ROUNDS):
        slot = asyncio.get_running_loop().time() + seconds
        if work is not None:
            await work()
        await asyncio.sleep(max(0.0, slot - asyncio.get_running_loop().time()))
    return time.thread_time() - start


async def test_idle_cpu_per_camera(hass: HomeAssistant, socket_enabled: None) -> None:
    """Print and record CPU per health check, and the share of a core it makes."""
    hass.loop.set_debug(False)
    for name in ("", "asyncio", "homeassistant", "custom_components", "virtualcam"):
        logging.getLogger(name).setLevel(logging.WARNING)
    farm = FarmThread(
        CameraFarm(
            CAMERAS,
            base_name="idle",
            username=CAM_USER,
            password=CAM_PASSWORD,
            width=320,
            height=180,
            fps=2.0,
        )
    )
    farm.start()
    try:
        entries = [make_entry(cam) for cam in farm.farm.cameras]
        for entry in entries:
            await setup_entry(hass, entry)
        coordinators = [entry.runtime_data.coordinator for entry in entries]

        async def one_round() -> None:
            await asyncio.gather(*(c.async_refresh() for c in coordinators))

        await one_round()  # warm: first-use caches, remembered Digest challenges
        per_check: list[float] = []
        for _ in range(WINDOWS):
            quiet = await _loop_cpu(ROUND_GAP, None)
            busy = await _loop_cpu(ROUND_GAP, one_round)
            per_check.append((busy - quiet) / (ROUNDS * CAMERAS))
        assert all(c.last_update_success for c in coordinators)
    finally:
        farm.stop()
    ms = statistics.median(per_check) * 1e3
    checks_per_second = CAMERAS / HEALTH_INTERVAL_SECONDS
    share = 100 * checks_per_second * ms / 1e3
    print(
        f"\nidle CPU of {CAMERAS} cameras (health checks on HA's event loop): "
        f"{ms:.3f} ms per check (windows {' / '.join(f'{x * 1e3:.3f}' for x in per_check)}), "
        f"one per camera every {HEALTH_INTERVAL_SECONDS:g} s: {share:.4f} % of one core "
        f"(target <= 0.1 %); HA generic: no idle work"
    )
    if OUT:
        result = {
            "cameras": CAMERAS,
            "ms_per_check": ms,
            "ms_per_check_windows": [x * 1e3 for x in per_check],
            "interval_seconds": HEALTH_INTERVAL_SECONDS,
            "pct_one_core": share,
        }
        with open(OUT, "w", encoding="utf-8") as handle:  # noqa: ASYNC230 - a few bytes, once
            json.dump(result, handle)
