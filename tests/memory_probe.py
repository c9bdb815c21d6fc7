"""Memory per configured camera, LocalCam beside HA's generic camera (run by bench/memory).

Not collected by the suite (no ``test_`` prefix). One test Home Assistant,
N virtual cameras on 127.0.0.1; for each contender, N config entries are set
up while ``tracemalloc`` traces Python allocations, after a few warm-up
entries (so module imports and first-use caches are not counted). Reports
the retained bytes per camera: what each configured camera costs, nobody
watching. Allocations made by pytest's log capture (``logging``/``traceback``
frames holding DEBUG records, which a real Home Assistant does not keep) are
left out. The hass-process RSS figure of bench/run is noisier: glibc's
per-thread arenas grow with the config flows' decoder threads.
"""

import gc
import json
import logging
import os
import traceback as traceback_module
import tracemalloc

from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

from virtualcam import CameraFarm

from .conftest import CAM_PASSWORD, CAM_USER, make_entry, setup_entry

CAMERAS = int(os.environ.get("LOCALCAM_MEMORY_CAMERAS", "32"))
WARMUP = 4
OUT = os.environ.get("LOCALCAM_PROBE_OUT")
NOT_COUNTED = (
    tracemalloc.Filter(False, logging.__file__),
    tracemalloc.Filter(False, traceback_module.__file__),
)


def _generic_entry(snapshot_url: str, index: int) -> MockConfigEntry:
    """A generic camera as its config flow stores it (still URL, Digest)."""
    return MockConfigEntry(
        domain="generic",
        version=2,
        title=f"generic {index}",
        data={},
        options={
            "still_image_url": snapshot_url,
            "username": CAM_USER,
            "password": CAM_PASSWORD,
            "content_type": "image/jpeg",
            "advanced": {
                "authentication": "digest",
                "framerate": 2.0,
                "verify_ssl": True,
                "limit_refetch_to_url_change": False,
            },
        },
    )


async def _per_camera(hass: HomeAssistant, entries: list[MockConfigEntry]) -> float:
    """Retained Python allocations per entry set up, in KB."""
    for entry in entries[:WARMUP]:
        await setup_entry(hass, entry)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot().filter_traces(NOT_COUNTED)
    for entry in entries[WARMUP:]:
        await setup_entry(hass, entry)
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(NOT_COUNTED)
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / (len(entries) - WARMUP) / 1024


async def test_memory_per_camera(hass: HomeAssistant, socket_enabled: None) -> None:
    """Print and record KB per configured camera for LocalCam and generic."""
    assert await async_setup_component(hass, "stream", {})
    farm = CameraFarm(
        CAMERAS + WARMUP,
        base_name="mem",
        username=CAM_USER,
        password=CAM_PASSWORD,
        width=320,
        height=180,
        fps=2.0,
    )
    await farm.start()
    try:
        localcam = await _per_camera(hass, [make_entry(cam) for cam in farm.cameras])
        generic = await _per_camera(
            hass,
            [
                _generic_entry(f"http://127.0.0.1:{cam.http_port}/snapshot.jpg", index)
                for index, cam in enumerate(farm.cameras)
            ],
        )
        assert len(hass.states.async_entity_ids("camera")) == 2 * (CAMERAS + WARMUP)
    finally:
        await farm.stop()
    print(
        f"\nmemory per configured camera ({CAMERAS} cameras, Python allocations retained): "
        f"LocalCam {localcam:.1f} KB, HA generic {generic:.1f} KB, "
        f"ratio {localcam / generic:.2f}"
    )
    if OUT:
        result = {"cameras": CAMERAS, "localcam_kb": localcam, "generic_kb": generic}
        with open(OUT, "w", encoding="utf-8") as handle:  # noqa: ASYNC230 - a few bytes, once
            json.dump(result, handle)
