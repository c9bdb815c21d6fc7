"""Health checks: every camera checked in one round a minute, under the coordinator's rules."""

import asyncio
from datetime import timedelta
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.localcam import coordinator
from custom_components.localcam.const import CONF_CAMERA_ID, DOMAIN, HEALTH_INTERVAL_SECONDS
from custom_components.localcam.coordinator import HEALTH_CHECKS_PER_HOST, HealthRounds
from custom_components.localcam.core.netpolicy import host_and_port
from virtualcam import Fault, VirtualCamera

from .conftest import camera_config, entry_data, main_entity_id, make_entry, setup_entry


async def _tick(hass: HomeAssistant, freezer: FrozenDateTimeFactory, seconds: float) -> None:
    """Move the clock on, fire what fell due, and let the checks it started finish."""
    freezer.tick(timedelta(seconds=seconds))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


async def _loaded(hass: HomeAssistant, cam: VirtualCamera, **kwargs: Any) -> MockConfigEntry:
    """The camera's entry, set up (``kwargs`` as for make_entry)."""
    entry = make_entry(cam, **kwargs)
    await setup_entry(hass, entry)
    return entry


async def _update_entity(hass: HomeAssistant, entity_id: str) -> None:
    """Ask for a check as a user or automation does, and let it finish."""
    assert await async_setup_component(hass, "homeassistant", {})
    await hass.services.async_call(
        "homeassistant", "update_entity", {"entity_id": entity_id}, blocking=True
    )
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_cameras_set_up_apart_are_checked_in_one_round(
    hass: HomeAssistant,
    camera: VirtualCamera,
    rtsp_only_camera: VirtualCamera,
    freezer: FrozenDateTimeFactory,
) -> None:
    """A camera added half a minute after another is checked in the same round as it."""
    first = await _loaded(hass, camera)
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS / 2)
    second = await _loaded(hass, rtsp_only_camera)
    for _ in range(3):
        before = (camera.stats.describe_requests, rtsp_only_camera.stats.describe_requests)
        # The first camera's minute is over; the second's own minute is not.
        await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS / 2 + 1)
        assert camera.stats.describe_requests == before[0] + 1
        assert rtsp_only_camera.stats.describe_requests == before[1] + 1
        await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS / 2 - 1)
        assert camera.stats.describe_requests == before[0] + 1  # one check a minute
        assert rtsp_only_camera.stats.describe_requests == before[1] + 1
    assert first.runtime_data.coordinator.last_update_success
    assert second.runtime_data.coordinator.last_update_success


async def test_the_round_timer_stops_with_the_last_camera(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """No camera loaded, no timer: nothing of LocalCam wakes Home Assistant up."""
    entry = await _loaded(hass, camera)
    rounds = HealthRounds.of(hass)
    assert rounds.running
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert not rounds.running
    describes = camera.stats.describe_requests
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    assert camera.stats.describe_requests == describes
    # Loaded again: the rounds start again.
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert rounds.running
    describes = camera.stats.describe_requests
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    assert camera.stats.describe_requests == describes + 1


@pytest.fixture
def no_recheck_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds fired early in real time find the setup's checks recent: let them check anyway."""
    monkeypatch.setattr(coordinator, "HEALTH_RECHECK_SECONDS", 0)


@pytest.mark.usefixtures("no_recheck_pause")
async def test_a_hanging_camera_holds_back_no_other_check(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """One camera that never answers: the others' checks finish, its own is not repeated."""
    # No frozen clock here: the hung check and the healthy one run in real time.
    hanging = await _loaded(hass, camera)
    healthy = await _loaded(hass, rtsp_only_camera)
    healthy_checked = healthy.runtime_data.coordinator.data.checked_at
    camera.fault = Fault.HANG
    connections = camera.stats.rtsp_connections
    describes = rtsp_only_camera.stats.describe_requests
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=HEALTH_INTERVAL_SECONDS))
    for _ in range(200):  # bounded: 200 x 10 ms, below the hung check's 5 s limit
        if healthy.runtime_data.coordinator.data.checked_at > healthy_checked:
            break
        await asyncio.sleep(0.01)
    assert healthy.runtime_data.coordinator.data.checked_at > healthy_checked
    assert rtsp_only_camera.stats.describe_requests == describes + 1
    assert camera.stats.rtsp_connections == connections + 1  # its check is still waiting
    # The next round, while the hung check still waits: the healthy camera is
    # checked again, the hanging one is not asked a second time.
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=2 * HEALTH_INTERVAL_SECONDS))
    for _ in range(200):
        if rtsp_only_camera.stats.describe_requests == describes + 2:
            break
        await asyncio.sleep(0.01)
    assert rtsp_only_camera.stats.describe_requests == describes + 2
    # The hung check runs out its time (5 s); nothing was queued behind it.
    await hass.async_block_till_done(wait_background_tasks=True)
    assert camera.stats.rtsp_connections == connections + 1
    state = hass.states.get(main_entity_id(hass, hanging))
    assert state is not None
    assert state.state == STATE_UNAVAILABLE


async def test_a_check_asked_for_just_before_a_round_is_not_repeated_by_it(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """update_entity shortly before a round: the round leaves that camera for the next one."""
    entry = await _loaded(hass, camera)
    entity_id = main_entity_id(hass, entry)
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS - 5)
    describes = camera.stats.describe_requests
    await _update_entity(hass, entity_id)
    assert camera.stats.describe_requests == describes + 1
    await _tick(hass, freezer, 6)  # the round: 6 s after that check
    assert camera.stats.describe_requests == describes + 1
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS)  # the next round
    assert camera.stats.describe_requests == describes + 2


async def test_no_round_after_an_authentication_failure(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """A check answered 401 starts reauth; the rounds then leave the camera alone.

    As DataUpdateCoordinator's own timer would: asking again with credentials
    the camera refused only adds to its failed-login count.
    """
    entry = await _loaded(hass, camera)
    camera.fault = Fault.UNAUTHORIZED
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == [SOURCE_REAUTH]
    describes = camera.stats.describe_requests
    for _ in range(3):
        await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS)
    assert camera.stats.describe_requests == describes
    assert entry.state is ConfigEntryState.LOADED


async def test_polling_disabled_leaves_checks_to_the_user(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """The entry's "polling for changes" off: no rounds, but update_entity still checks."""
    entry = await _loaded(hass, camera, pref_disable_polling=True)
    entity_id = main_entity_id(hass, entry)
    describes = camera.stats.describe_requests
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    assert camera.stats.describe_requests == describes
    assert entry.runtime_data.coordinator.check_interval is None
    await _update_entity(hass, entity_id)
    assert camera.stats.describe_requests == describes + 1


@pytest.mark.usefixtures("no_recheck_pause")
async def test_one_host_answers_a_bounded_number_of_a_round_s_checks_at_once(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """An NVR's channels (several entries, one host and port) are checked a few at a time."""
    channels = HEALTH_CHECKS_PER_HOST + 2
    nvr = VirtualCamera(camera_config("nvr", 3, slow_delay=1.0))
    await nvr.start()
    try:
        for channel in range(channels):
            data = {**entry_data(nvr), CONF_CAMERA_ID: f"nvr-channel-{channel}"}
            entry = MockConfigEntry(
                domain=DOMAIN, title=f"channel {channel}", unique_id=data[CONF_CAMERA_ID], data=data
            )
            await setup_entry(hass, entry)
            assert entry.runtime_data.coordinator.last_update_success
        nvr.fault = Fault.SLOW  # every answer 1 s late: the checks overlap in time
        connections = nvr.stats.rtsp_connections
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=HEALTH_INTERVAL_SECONDS))
        for _ in range(20):  # bounded: 20 x 10 ms, well inside the first answers' 1 s
            await asyncio.sleep(0.01)
        assert nvr.stats.rtsp_connections == connections + HEALTH_CHECKS_PER_HOST
        # A round that comes while this one's checks still run or wait adds none
        # (firing it runs the camera's late answers too: they finish first).
        async_fire_time_changed(
            hass, dt_util.utcnow() + timedelta(seconds=2 * HEALTH_INTERVAL_SECONDS)
        )
        await hass.async_block_till_done(wait_background_tasks=True)
        assert nvr.stats.rtsp_connections == connections + channels  # the rest followed, once
        # (The jump also ran out the first checks' 5 s limits: their results say
        # nothing here, only how many checks reached the camera.)
    finally:
        await nvr.stop()


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("rtsp://192.168.1.20/ch1", "rtsp://192.168.1.20:554/ch2", True),
        ("rtsp://NVR.local:8554/a", "rtsp://nvr.local:8554/b?x=1", True),
        ("rtsps://192.168.1.20/a", "rtsps://192.168.1.20:322/a", True),
        ("rtsp://192.168.1.20/a", "rtsp://192.168.1.20:8554/a", False),
        ("rtsp://192.168.1.20/a", "rtsp://192.168.1.21/a", False),
    ],
)
def test_which_streams_count_as_one_host(first: str, second: str, same: bool) -> None:
    """The host as named (no lookup) and the port, the scheme's default filled in."""
    assert (host_and_port(first) == host_and_port(second)) is same


async def test_a_camera_without_its_entity_is_not_checked(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """The rounds check a camera while its entity listens, as the coordinator's timer did."""
    entry = await _loaded(hass, camera)
    entity_id = main_entity_id(hass, entry)
    describes = camera.stats.describe_requests
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    assert camera.stats.describe_requests == describes + 1
    # The user deletes the entity; the entry stays loaded.
    er.async_get(hass).async_remove(entity_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert entry.runtime_data.coordinator.check_interval is None
    assert not HealthRounds.of(hass).running
    describes = camera.stats.describe_requests
    await _tick(hass, freezer, HEALTH_INTERVAL_SECONDS + 1)
    assert camera.stats.describe_requests == describes
