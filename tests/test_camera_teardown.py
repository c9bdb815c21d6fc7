"""A camera entity's stream and stream checks end with the entity (unload, reload)."""

import asyncio
from collections.abc import Callable
from http import HTTPStatus
import time
from typing import Any
from unittest.mock import patch

from homeassistant.components.camera.helper import get_camera_from_entity_id
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import CoreState, HomeAssistant
from homeassistant.helpers import entity_registry as er
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.localcam.const import CONF_IDENTITY, DOMAIN
from virtualcam import Fault, VirtualCamera

from .conftest import main_entity_id, make_entry
from .test_camera import _running_stream

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


async def _until(hass: HomeAssistant, condition: Callable[[], bool], seconds: float = 10) -> bool:
    """Wait (bounded) until condition() holds; return whether it did."""
    for _ in range(int(seconds / 0.05)):
        await hass.async_block_till_done()
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def _stream_entry(hass: HomeAssistant, cam: VirtualCamera, **data: Any) -> MockConfigEntry:
    """A loaded entry for an RTSP-only camera (entry data updated with `data`)."""
    entry = make_entry(cam, snapshot=False)
    entry.add_to_hass(hass)
    if data:
        hass.config_entries.async_update_entry(entry, data={**entry.data, **data})
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    return entry


def _state(hass: HomeAssistant, entity_id: str) -> str | None:
    """An entity's state, or None without one."""
    state = hass.states.get(entity_id)
    return state.state if state is not None else None


async def _set_preload(hass_ws_client: WebSocketGenerator, entity_id: str, preload: bool) -> None:
    """Switch "preload stream" as the user does (the camera's settings dialog)."""
    client = await hass_ws_client()
    await client.send_json_auto_id(
        {"type": "camera/update_prefs", "entity_id": entity_id, "preload_stream": preload}
    )
    assert (await client.receive_json())["success"]


async def _preload(hass_ws_client: WebSocketGenerator, entity_id: str) -> bool:
    """The user's "preload stream" setting, as the settings dialog shows it."""
    client = await hass_ws_client()
    await client.send_json_auto_id({"type": "camera/get_prefs", "entity_id": entity_id})
    reply = await client.receive_json()
    assert reply["success"]
    return bool(reply["result"]["preload_stream"])


async def test_unload_ends_the_stream_and_its_checks(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """After unload no RTSP session is left, and the old stream starts no check or reauth."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    async with _running_stream(hass, entity_id, cam) as stream:
        assert cam.stats.active_play_sessions == 1

        assert await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
        assert entry.state is ConfigEntryState.NOT_LOADED
        # The worker's session ends with the entity, not at HLS's idle timeout (minutes).
        assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)

        # The camera now refuses the old credentials, and something still reports
        # a state change of the old stream (as its worker would on a reconnect):
        # nothing of the unloaded entry asks the camera, nothing starts a reauth.
        cam.fault = Fault.UNAUTHORIZED
        await cam.restart()
        describes = cam.stats.describe_requests
        stream._async_update_state(False)
        await _until(
            hass, lambda: bool(hass.config_entries.flow.async_progress_by_handler(DOMAIN)), 1
        )
        assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []
        assert cam.stats.describe_requests == describes
        assert cam.stats.active_play_sessions == 0


async def test_unload_cancels_a_running_stream_check(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A stream check waiting on the camera ends with the unload, not at its timeout."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    entity = get_camera_from_entity_id(hass, entity_id)
    async with _running_stream(hass, entity_id, cam) as stream:
        # The check's DESCRIBE is answered late (the worker's RTP keeps flowing);
        # the default 3 s is far longer than the few steps to the unload below.
        cam.fault = Fault.SLOW
        connections = cam.stats.rtsp_connections
        stream._async_update_state(True)  # the worker reports a reconnect: a check starts
        check = entity._auth_check  # type: ignore[attr-defined]
        assert check is not None
        assert await _until(hass, lambda: cam.stats.rtsp_connections > connections, 5)
        assert not check.done()  # waiting for the camera's answer

        assert await hass.config_entries.async_unload(entry.entry_id)
        assert check.cancelled()
        # A removed entity opens no stream again (a viewer that held on to it).
        assert await entity.async_create_stream() is None
        cam.fault = None
        await hass.async_block_till_done()
        assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []
        # The worker's (slowly answered) TEARDOWN ends its session too.
        assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 10)


async def test_a_preloaded_stream_ends_with_the_entry_and_keeps_the_setting(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, hass_ws_client: WebSocketGenerator
) -> None:
    """With "preload stream" on, unload still ends the worker; the user's setting stays on."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    await _set_preload(hass_ws_client, entity_id, True)
    async with _running_stream(hass, entity_id, cam) as stream:
        assert stream.dynamic_stream_settings.preload_stream
        assert await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
        assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)
    assert await _preload(hass_ws_client, entity_id)

    # Loaded again, the new entity's stream is preloaded as before, and ends with
    # the next unload too.
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    async with _running_stream(hass, entity_id, cam) as stream:
        assert cam.stats.active_play_sessions == 1
        assert stream.dynamic_stream_settings.preload_stream
        assert await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
        assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)
    assert await _preload(hass_ws_client, entity_id)


async def test_a_preloaded_stream_comes_back_after_a_reload(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, hass_ws_client: WebSocketGenerator
) -> None:
    """With "Preload stream" on, a reload (options, reauth, a move) starts the new stream.

    Home Assistant starts preloaded streams once, when it has started; before,
    the stream stayed off after any reload until Home Assistant restarted,
    with the setting still showing on. Nobody opens the stream here.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    await _set_preload(hass_ws_client, entity_id, True)
    assert cam.stats.play_sessions == 0  # the setting alone starts nothing until a load
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 1, 10)
    entity = get_camera_from_entity_id(hass, entity_id)
    assert entity.stream is not None
    assert "hls" in entity.stream.outputs()
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)


async def test_a_stream_is_not_preloaded_when_the_setting_is_off(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """The default: a reload opens no RTSP session to the camera."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    await asyncio.sleep(0.3)
    assert cam.stats.play_sessions == 0
    assert get_camera_from_entity_id(hass, main_entity_id(hass, entry)).stream is None


async def test_reload_leaves_one_stream_session(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A reload ends the old entity's stream; the new entity streams on its own."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    async with _running_stream(hass, entity_id, cam):
        assert await hass.config_entries.async_reload(entry.entry_id)
        await hass.async_block_till_done()
        assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)
    async with _running_stream(hass, entity_id, cam) as stream:
        assert cam.stats.active_play_sessions == 1
        assert stream.available
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)


async def test_a_preloaded_stream_that_reaches_another_device_is_stopped(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, hass_ws_client: WebSocketGenerator
) -> None:
    """The identity check stops the worker's session even with "preload stream" on."""
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam, **{CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"}})
    entity_id = main_entity_id(hass, entry)
    await _set_preload(hass_ws_client, entity_id, True)
    async with _running_stream(hass, entity_id, cam) as stream:
        assert cam.stats.active_play_sessions == 1
        # The kernel's neighbour table (the edge) now names another device.
        with patch(
            "custom_components.localcam.core.snapshot.neighbour_mac",
            return_value="aa:bb:cc:00:11:99",
        ):
            stream._async_update_state(True)  # a state change of the stream: a check runs
            assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)
            # ... then the health refresh it requests marks the entity unavailable.
            assert await _until(hass, lambda: _state(hass, entity_id) == "unavailable", 5)
        assert not stream.outputs()
    assert await _preload(hass_ws_client, entity_id)  # the user's setting is untouched
    await hass.config_entries.async_unload(entry.entry_id)


async def test_a_renamed_camera_still_streams(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A new entity id: HA removes and re-adds the same entity, which must stream again.

    Before, the re-added entity still counted itself removed: no live view
    (HLS) until the entry reloaded.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    entity = get_camera_from_entity_id(hass, entity_id)
    er.async_get(hass).async_update_entity(entity_id, new_entity_id="camera.front_door")
    await hass.async_block_till_done()
    assert get_camera_from_entity_id(hass, "camera.front_door") is entity
    stream = await entity.async_create_stream()
    assert stream is not None
    stream.add_provider("hls")
    await stream.start()
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 1, 10)
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)


async def test_a_stream_asked_for_during_the_removal_is_not_handed_out(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """The entry unloads while a new stream's address is checked: no stream, no worker left.

    Before, the stream came back to its caller (a viewer, a preload) after
    the removal had stopped it, and its worker then ran on against the
    camera's closed relay, logging an error at every retry.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity = get_camera_from_entity_id(hass, main_entity_id(hass, entry))
    checking, release = asyncio.Event(), asyncio.Event()
    real = entity._async_repin_stream  # type: ignore[attr-defined]

    async def slow_repin(stream: Any) -> None:
        checking.set()
        await release.wait()  # a slow name lookup
        await real(stream)

    with patch.object(entity, "_async_repin_stream", slow_repin):
        asked = asyncio.create_task(entity.async_create_stream())
        await checking.wait()
        assert await hass.config_entries.async_unload(entry.entry_id)
        release.set()
        assert await asked is None
    await asyncio.sleep(0.3)
    assert cam.stats.play_sessions == 0


async def test_a_preloaded_stream_comes_back_when_its_camera_does(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, hass_ws_client: WebSocketGenerator
) -> None:
    """A failed check stopped the stream (another device at the address); the camera is back.

    With "Preload stream" on, the stream starts again with the first check
    that passes, not at the next reload.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    await _set_preload(hass_ws_client, entity_id, True)
    coordinator = entry.runtime_data.coordinator
    coordinator.async_set_update_error(RuntimeError("another device answers"))
    assert _state(hass, entity_id) == "unavailable"
    assert cam.stats.play_sessions == 0
    await coordinator.async_refresh()  # the camera itself again
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 1, 10)
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert await _until(hass, lambda: cam.stats.active_play_sessions == 0, 5)


async def test_unloading_a_camera_that_hangs_while_streaming_is_prompt(
    hass: HomeAssistant, hass_client: Any, rtsp_only_camera: VirtualCamera
) -> None:
    """A camera that hangs while HA's stream runs unloads at once; a waiting still gets 503.

    The unload stopped HA's stream first, whose worker sat in FFmpeg on the
    camera's relay until FFmpeg's read timeout (about 9 s): the unload took
    that long, and a still waiting meanwhile got 504, not the unload's 503.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    client = await hass_client()
    async with _running_stream(hass, entity_id, cam):
        cam.fault = Fault.HANG  # nothing answered, RTP pauses
        await asyncio.sleep(0.3)
        still = asyncio.create_task(client.get(f"/api/localcam/snapshot/{entity_id}"))
        await asyncio.sleep(1.0)
        assert not still.done()
        started = time.monotonic()
        assert await hass.config_entries.async_unload(entry.entry_id)
        unload_took = time.monotonic() - started
        async with asyncio.timeout(10):
            resp = await still
        answered_after = time.monotonic() - started
        cam.fault = None
    assert resp.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert answered_after < 3.0
    assert unload_took < 3.0


async def test_home_assistant_stops_promptly_beside_a_camera_that_hangs_while_streaming(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, caplog: pytest.LogCaptureFixture
) -> None:
    """HA's stop waits for its stream workers: one stuck on a camera that hangs is freed.

    HA's stream integration stops every stream at EVENT_HOMEASSISTANT_STOP
    and waited about 9 s for this one (FFmpeg's read timeout on the relay).
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    async with _running_stream(hass, entity_id, cam):
        cam.fault = Fault.HANG  # nothing answered, RTP pauses
        await asyncio.sleep(0.3)
        started = time.monotonic()
        hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
        await hass.async_block_till_done()
        took = time.monotonic() - started
        cam.fault = None
    assert took < 3.0
    assert "Stopped stream workers" in caplog.text
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert "Unable to remove" not in caplog.text


async def test_no_re_pin_while_home_assistant_stops(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A check that ends while HA stops does not restart the stream HA is stopping.

    update_source then would read as the stop's own restart: the worker runs
    on and HA's stop waits for it for ever.
    """
    cam = rtsp_only_camera
    entry = await _stream_entry(hass, cam)
    entity_id = main_entity_id(hass, entry)
    async with _running_stream(hass, entity_id, cam):
        entity = get_camera_from_entity_id(hass, entity_id)
        stream = entity.stream
        assert stream is not None
        source = stream.source
        hass.set_state(CoreState.stopping)
        try:
            with patch.object(stream, "update_source") as update_source:
                assert entity._pin(stream, "rtsp://127.0.0.1:9/elsewhere") is False
        finally:
            hass.set_state(CoreState.running)
        update_source.assert_not_called()
        assert stream.source == source
