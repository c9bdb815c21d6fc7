"""Setup, unload, reload, and the errors a camera can raise at setup."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.camera import async_get_image
from homeassistant.config_entries import (
    SOURCE_REAUTH,
    SOURCE_RECONFIGURE,
    ConfigEntryState,
    UnknownEntry,
)
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError, HomeAssistantError
from homeassistant.helpers import (
    device_registry as dr,
    entity_registry as er,
    issue_registry as ir,
)
from homeassistant.helpers.update_coordinator import UpdateFailed
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components import localcam
from custom_components.localcam import coordinator as coordinator_module
from custom_components.localcam.const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_CODEC,
    CONF_IDENTITY,
    CONF_MAIN_PROFILE,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_STREAM_URL,
    DEFAULT_SNAPSHOT_MAX_AGE,
    DOMAIN,
    HEALTH_INTERVAL_SECONDS,
)
from custom_components.localcam.core.errors import CannotConnectError
from custom_components.localcam.core.models import RtspTransport
from virtualcam import CameraConfig, Fault, VirtualCamera
from virtualcam.camera import DEFAULT_PROFILES, OnvifProfileSpec

from .conftest import (
    add_onvif_entry,
    camera_config,
    damaged_entry,
    main_entity_id,
    make_entry,
    onvif_camera_config,
    onvif_form,
    set_up_camera,
    setup_entry,
)

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


async def test_setup_unload_reload(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """An entry loads one device and one camera entity, unloads and reloads."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.LOADED
    entity_id = main_entity_id(hass, entry)
    device = dr.async_get(hass).async_get_device_by_identifier(
        (DOMAIN, entry.unique_id), entry.entry_id
    )
    assert device is not None
    assert device.name == entry.title
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state != STATE_UNAVAILABLE
    assert state.name == entry.title  # has_entity_name with the primary name None

    assert await hass.config_entries.async_unload(entry.entry_id)
    assert entry.state is ConfigEntryState.NOT_LOADED
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED


async def test_unreachable_camera_retries(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A camera that does not answer at setup puts the entry in retry."""
    camera.fault = Fault.REFUSE
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_wrong_credentials_start_reauth(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A 401 at setup fails the entry and starts a reauth flow."""
    camera.fault = Fault.UNAUTHORIZED
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == [SOURCE_REAUTH]


async def test_invalid_allowed_networks(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """Options that cannot be parsed fail setup with a clear error."""
    entry = make_entry(camera, options={CONF_ALLOWED_NETWORKS: "10.0.0.0/33"})
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.reason is not None


@pytest.mark.parametrize("stored", [None, -1.0, 0.0, 3600.0])
async def test_an_unusable_stored_max_age_falls_back_to_the_default(
    hass: HomeAssistant, camera: VirtualCamera, stored: Any
) -> None:
    """A max age the form would refuse (NaN stored as null, a hand edit) is the default.

    float(None) failed setup with a bare TypeError; a max age of 0 made
    every still too old.
    """
    entry = make_entry(camera, options={CONF_SNAPSHOT_MAX_AGE: stored})
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.LOADED
    for stream in entry.runtime_data.streams.values():
        assert stream.cache.max_age == DEFAULT_SNAPSHOT_MAX_AGE
    image = await async_get_image(hass, main_entity_id(hass, entry))
    assert image.content[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    ("options", "transport"),
    [
        ({CONF_RTSP_TRANSPORT: "TCP"}, RtspTransport.TCP),
        ({CONF_RTSP_TRANSPORT: None}, RtspTransport.TCP),
        ({CONF_RTSP_TRANSPORT: "udp"}, RtspTransport.UDP),
        ({CONF_ALLOWED_NETWORKS: None}, RtspTransport.TCP),
    ],
)
async def test_stored_options_the_form_would_not_save_set_up_with_defaults(
    hass: HomeAssistant,
    camera: VirtualCamera,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
    transport: RtspTransport,
) -> None:
    """An unknown RTSP transport is the default one; null networks are none.

    Both failed setup with a bare ValueError / AttributeError and a traceback.
    """
    entry = make_entry(camera, options=options)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.LOADED
    assert "Traceback" not in caplog.text
    for stream in entry.runtime_data.streams.values():
        assert stream.client.source.rtsp_transport is transport
    image = await async_get_image(hass, main_entity_id(hass, entry))
    assert image.content[:2] == b"\xff\xd8"


async def test_stored_networks_that_are_not_text_fail_setup_translated(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Stored networks of another type are the invalid networks error, not a crash."""
    entry = make_entry(camera, options={CONF_ALLOWED_NETWORKS: ["10.8.0.0/24"]})
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.error_reason_translation_key == "invalid_networks"


@pytest.mark.parametrize(
    "damage",
    [
        {"drop": CONF_CAMERA_ID},
        {"drop": CONF_STREAM_URL},
        {CONF_MAIN_PROFILE: "gone"},
    ],
)
async def test_damaged_stored_data_fails_setup_with_a_clear_error(
    hass: HomeAssistant,
    camera: VirtualCamera,
    caplog: pytest.LogCaptureFixture,
    damage: dict[str, str],
) -> None:
    """Entry data setup cannot use (a hand edit): a translated error, not a KeyError."""
    entry = damaged_entry(camera, damage)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.error_reason_translation_key == "stored_data_incomplete"
    # HA logs a ConfigEntryError with its traceback; nothing else is raised.
    raised = [r.exc_info[0] for r in caplog.records if r.exc_info and r.exc_info[0]]
    assert raised == [ConfigEntryError]


async def test_a_re_pinned_camera_s_device_gets_exactly_its_new_mac(
    hass: HomeAssistant, camera: VirtualCamera, caplog: pytest.LogCaptureFixture
) -> None:
    """Setup replaces the device's MAC with the entry's, through this entry's own device.

    Without a deprecated registry lookup (HA reports those as a warning,
    and the lookup by identifier alone may find another entry's device).
    """
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"}}
    )
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:99"}}
    )
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    [device] = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
    assert device.connections == {(dr.CONNECTION_NETWORK_MAC, "aa:bb:cc:00:11:99")}
    assert "Detected that custom integration" not in caplog.text


async def _next_health_check(hass: HomeAssistant, freezer: FrozenDateTimeFactory) -> None:
    """Move past one health interval and let the check (and what it starts) finish."""
    freezer.tick(timedelta(seconds=HEALTH_INTERVAL_SECONDS + 1))
    async_fire_time_changed(hass)
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_unavailable_and_back(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """The health check marks the camera unavailable, and available again."""
    _entry, entity_id = await set_up_camera(hass, camera)

    camera.fault = Fault.REFUSE
    await _next_health_check(hass, freezer)
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state == STATE_UNAVAILABLE

    camera.fault = None
    await _next_health_check(hass, freezer)
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state != STATE_UNAVAILABLE


async def test_a_healthy_check_writes_no_state(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """A minute's DESCRIBE that changes nothing costs no entity state write."""
    entry, entity_id = await set_up_camera(hass, camera)
    before = hass.states.get(entity_id)
    assert before is not None
    # HA updates a state's last_reported in place when it is written unchanged.
    reported = before.last_reported
    describes = camera.stats.describe_requests
    checked = entry.runtime_data.coordinator.data.checked_at
    await _next_health_check(hass, freezer)
    assert camera.stats.describe_requests > describes  # the check ran ...
    assert entry.runtime_data.coordinator.data.checked_at > checked  # ... and is recorded
    after = hass.states.get(entity_id)
    assert after is not None
    assert after.last_reported == reported  # ... but nothing was written


async def test_a_health_check_is_one_describe(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """Once the camera's Digest challenge is known, each minute's check is one DESCRIBE."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    await _next_health_check(hass, freezer)  # learns the challenge (if setup did not)
    for _ in range(3):
        describes = camera.stats.describe_requests
        challenges = camera.stats.unauthorized_responses
        await _next_health_check(hass, freezer)
        assert camera.stats.describe_requests == describes + 1
        assert camera.stats.unauthorized_responses == challenges


async def _set_up_with_mac(hass: HomeAssistant, camera: VirtualCamera, mac: str) -> MockConfigEntry:
    """The camera's entry, pinned to ``mac`` (as if the flow had read it on the link), set up."""
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_IDENTITY: {"mac": mac}})
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def test_a_different_device_at_the_address(
    hass: HomeAssistant, camera: VirtualCamera, freezer: FrozenDateTimeFactory
) -> None:
    """Another MAC at the camera's address: unavailable, a repair issue, no frames."""
    entry = await _set_up_with_mac(hass, camera, "aa:bb:cc:00:11:22")
    entity_id = main_entity_id(hass, entry)
    issue_id = f"identity_mismatch_{entry.entry_id}"
    # The kernel's neighbour table is the edge: it now names another device.
    with patch(
        "custom_components.localcam.core.snapshot.neighbour_mac", return_value="aa:bb:cc:00:11:99"
    ):
        with pytest.raises(HomeAssistantError) as err:
            await async_get_image(hass, entity_id)
        await _next_health_check(hass, freezer)
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == STATE_UNAVAILABLE
        assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None
    assert entry.runtime_data.cache.stats.upstream_fetches >= 1
    assert entry.runtime_data.cache._full_frame is None  # nothing of it was cached
    assert err.value.translation_key == "identity_mismatch"
    await _next_health_check(hass, freezer)
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None


async def test_a_check_that_ends_after_removal_raises_no_issue(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A health check under way when its entry is removed finds another device: no issue.

    The removal deleted the entry's issues; one created after it would stay
    for an entry that is gone, with a fix flow that can only abort.
    """
    entry = await _set_up_with_mac(hass, camera, "aa:bb:cc:00:11:22")
    coordinator = entry.runtime_data.coordinator
    await hass.config_entries.async_remove(entry.entry_id)
    await hass.async_block_till_done()
    # The check's end, after the removal (HA's coordinator starts no new one
    # once shut down, so its last step is run as an in-flight one would end).
    # The kernel's neighbour table is the edge: it now names another device.
    with (
        patch(
            "custom_components.localcam.core.snapshot.neighbour_mac",
            return_value="aa:bb:cc:00:11:99",
        ),
        pytest.raises(UpdateFailed),
    ):
        await coordinator._async_update_data()
    assert coordinator.last_error == "identity_mismatch"  # the check did see it
    issue_id = f"identity_mismatch_{entry.entry_id}"
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None


async def test_removing_a_camera_removes_its_repair_issues(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A deleted entry's repair issues go with it; another camera's stay."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    issues = ir.async_get(hass)
    ids = [f"{p}{entry.entry_id}" for p in ("uri_not_local_", "h265_only_", "identity_mismatch_")]
    for issue_id in [*ids, "h265_only_another-entry"]:
        ir.async_create_issue(
            hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=ir.IssueSeverity.WARNING,
            translation_key="h265_only",
            translation_placeholders={"name": "x"},
        )
    await hass.config_entries.async_remove(entry.entry_id)
    await hass.async_block_till_done()
    assert [issue_id for issue_id in ids if issues.async_get_issue(DOMAIN, issue_id)] == []
    assert issues.async_get_issue(DOMAIN, "h265_only_another-entry") is not None


@asynccontextmanager
async def _onvif_entity(
    hass: HomeAssistant, config: CameraConfig
) -> AsyncIterator[tuple[VirtualCamera, MockConfigEntry, str]]:
    """An ONVIF virtual camera on loopback (no MAC visible), added through the flow.

    Yields the camera, its entry and its main entity's id; unloads and stops after.
    """
    cam = VirtualCamera(config)
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam)
        entity_id = next(
            e.entity_id
            for e in er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
            if e.disabled_by is None
        )
        yield cam, entry, entity_id
    finally:
        await hass.config_entries.async_unload(entry.entry_id)
        await cam.stop()


async def test_a_profile_the_camera_no_longer_reports_leaves_no_entity(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """After a reconfigure, a profile the camera dropped leaves no entity behind.

    It stayed as "no longer provided" and kept its entity id; a renamed main
    profile's new entity got ``…_2``.
    """
    cam = VirtualCamera(camera_config("cam5", 5, onvif=True, serial="SERIAL-5"))
    await cam.start()
    registry = er.async_get(hass)
    try:
        entry = await add_onvif_entry(hass, cam)
        ids = {e.unique_id for e in er.async_entries_for_config_entry(registry, entry.entry_id)}
        assert ids == {"serial_SERIAL-5_main", "serial_SERIAL-5_sub"}
        main_id = main_entity_id(hass, entry)
        cam.config.profiles = DEFAULT_PROFILES[:1]  # reset: it reports only its main
        await _reconfigure_onvif(hass, entry, cam)
        assert list(entry.runtime_data.streams) == ["main"]
        left = er.async_entries_for_config_entry(registry, entry.entry_id)
        assert [(e.unique_id, e.entity_id) for e in left] == [("serial_SERIAL-5_main", main_id)]
        await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


async def _reconfigure_onvif(
    hass: HomeAssistant, entry: MockConfigEntry, cam: VirtualCamera
) -> None:
    """Run the ONVIF reconfigure flow with the camera's own address and credentials."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_RECONFIGURE, "entry_id": entry.entry_id}
    )
    result = await hass.config_entries.flow.async_configure(result["flow_id"], onvif_form(cam))
    assert result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done()


async def test_entities_follow_profile_tokens_a_camera_renamed(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A firmware update renames the ONVIF tokens: the user's entities follow them.

    Removing the entities of gone tokens deleted the main camera's entity
    with the id, name and icon the user gave it (automations and dashboards
    name it); the new one got the default id.
    """
    cam = VirtualCamera(camera_config("cam7", 7, onvif=True, serial="SERIAL-7"))
    await cam.start()
    registry = er.async_get(hass)
    try:
        entry = await add_onvif_entry(hass, cam)
        main_id = main_entity_id(hass, entry)
        registry.async_update_entity(
            main_id, name="Front door", icon="mdi:door", new_entity_id="camera.front_door"
        )
        sub_id = registry.async_get_entity_id("camera", DOMAIN, "serial_SERIAL-7_sub")
        assert sub_id is not None
        registry.async_update_entity(sub_id, disabled_by=None, new_entity_id="camera.door_sub")
        cam.config.profiles = (
            OnvifProfileSpec("Profile_000", "mainStream"),
            OnvifProfileSpec("Profile_001", "subStream", divisor=2),
        )
        await _reconfigure_onvif(hass, entry, cam)
        assert entry.runtime_data.main == "Profile_000"
        left = {e.entity_id: e for e in er.async_entries_for_config_entry(registry, entry.entry_id)}
        assert set(left) == {"camera.front_door", "camera.door_sub"}
        main = left["camera.front_door"]
        assert main.unique_id == "serial_SERIAL-7_Profile_000"
        assert (main.name, main.icon) == ("Front door", "mdi:door")
        assert left["camera.door_sub"].unique_id == "serial_SERIAL-7_Profile_001"
        assert left["camera.door_sub"].disabled_by is None
        await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


def _forget_still(entry: MockConfigEntry) -> None:
    """Drop the main stream's cached still, so that the next request fetches."""
    entry.runtime_data.streams[entry.runtime_data.main].cache._full_frame = None


async def test_a_device_that_names_none_of_the_camera_s_fields_gets_no_still(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """No MAC visible, and the device at the address reports an empty serial: no still.

    Nothing it says differs, but nothing shows it is this camera either; an
    impostor need not answer the identity queries at all.
    """
    config = onvif_camera_config(5, "127.0.0.1", 0, 0, "02:00:00:00:00:05")
    async with _onvif_entity(hass, config) as (cam, entry, entity_id):
        assert (await async_get_image(hass, entity_id)).content
        cam.config = replace(config, serial=None)
        _forget_still(entry)
        with pytest.raises(HomeAssistantError):
            await async_get_image(hass, entity_id)
        cam.config = config
        assert (await async_get_image(hass, entity_id)).content


@pytest.mark.parametrize(
    ("serial", "requests"),
    [
        # Clock and device information: the serial, which no broadcast carries.
        ("SERIAL-4", 2),
        # No serial: clock, information, interfaces, endpoint reference.
        (None, 4),
    ],
)
async def test_the_identity_check_after_each_fetch_is_light(
    hass: HomeAssistant, socket_enabled: None, serial: str | None, requests: int
) -> None:
    """No MAC visible (loopback): each still is followed by an identity-only ONVIF read.

    The whole read (profiles and their URIs, about ten requests) is the health
    check's, once a minute.
    """
    config = onvif_camera_config(4, "127.0.0.1", 0, 0, "02:00:00:00:00:04")
    async with _onvif_entity(hass, replace(config, serial=serial)) as (cam, entry, entity_id):
        whole = cam.stats.onvif_requests  # the flow's read and setup's first (whole) check
        await async_get_image(hass, entity_id)
        first = cam.stats.onvif_requests - whole
        assert first == requests
        _forget_still(entry)
        before = cam.stats.onvif_requests
        await async_get_image(hass, entity_id)
        assert cam.stats.onvif_requests - before == first


async def test_the_minute_s_check_reads_the_whole_description_only_every_quarter_hour(
    hass: HomeAssistant, socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No MAC visible: the minute's check asks who the device is (two requests), not ten.

    The whole description (profiles, the addresses the camera reports) is
    read at setup and then every WHOLE_READ_INTERVAL: it changes with the
    camera's settings, not by the minute.
    """
    config = onvif_camera_config(6, "127.0.0.1", 0, 0, "02:00:00:00:00:06")
    async with _onvif_entity(hass, config) as (cam, entry, _entity_id):
        coordinator = entry.runtime_data.coordinator
        before = cam.stats.onvif_requests
        await coordinator.async_refresh()
        light = cam.stats.onvif_requests - before
        assert light == 2  # clock and device information: the serial
        monkeypatch.setattr(localcam, "WHOLE_READ_INTERVAL", 0.0)
        before = cam.stats.onvif_requests
        await coordinator.async_refresh()
        assert cam.stats.onvif_requests - before > 2 * light  # profiles and their URIs too


@pytest.mark.parametrize(
    ("changed", "value"),
    [("device_uuid", "8f0e6f8e-0000-4000-8000-000000000001"), ("mac", "02:00:00:00:00:55")],
)
async def test_the_whole_read_judges_the_camera_as_the_minute_s_check_does(
    hass: HomeAssistant,
    socket_enabled: None,
    monkeypatch: pytest.MonkeyPatch,
    changed: str,
    value: str,
) -> None:
    """No MAC on the link; the camera keeps its serial but reports another UUID or MAC.

    The minute's light check (serial) and the quarter-hourly whole read must
    agree. Before, the whole read called it a different device: unavailable
    and a repair, then itself again a minute later, every quarter hour.
    """
    config = onvif_camera_config(5, "127.0.0.1", 0, 0, "02:00:00:00:00:05")
    async with _onvif_entity(hass, config) as (cam, entry, _entity_id):
        coordinator = entry.runtime_data.coordinator
        issue_id = f"identity_mismatch_{entry.entry_id}"
        cam.config = replace(config, **{changed: value})
        verdicts = []
        for whole in (False, True, False):
            monkeypatch.setattr(localcam, "WHOLE_READ_INTERVAL", 0.0 if whole else 15 * 60.0)
            await coordinator.async_refresh()
            await hass.async_block_till_done()
            repair = ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None
            verdicts.append((coordinator.last_update_success, repair))
        assert verdicts == [(True, False)] * 3


async def test_a_whole_read_that_ends_after_removal_raises_no_issue(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera reporting a public address, read by a check that outlives its entry: no issue."""
    cam = VirtualCamera(onvif_camera_config(7, "127.0.0.1", 0, 0, "02:00:00:00:00:07"))
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam)
        probe = entry.runtime_data.streams[entry.runtime_data.main].client.identity_probe
        assert probe is not None
        await hass.config_entries.async_remove(entry.entry_id)
        await hass.async_block_till_done()
        cam.config.reported_host = "203.0.113.9"
        with patch.object(localcam, "WHOLE_READ_INTERVAL", 0.0):
            await probe(True)  # the whole read of a check still under way
        issue_id = f"uri_not_local_{entry.entry_id}"
        assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
    finally:
        await cam.stop()


LINK_MAC = "02:00:00:00:00:07"


async def test_the_outside_address_notice_is_raised_and_cleared_for_a_camera_on_the_link(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """An ONVIF camera whose MAC the link shows still gets (and loses) its uri_not_local issue.

    README: the notice goes "at the next check that reads its whole
    description (at most 15 minutes)". A camera on the same link as Home
    Assistant (the usual case) has its MAC visible after every connection.
    """
    cam = VirtualCamera(onvif_camera_config(7, "127.0.0.1", 0, 0, LINK_MAC))
    await cam.start()
    try:
        # The link shows the camera's own MAC (as on a real LAN; loopback shows none).
        with patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=LINK_MAC):
            entry = await add_onvif_entry(hass, cam)
            assert entry.data[CONF_IDENTITY].get("mac") == LINK_MAC
            issue_id = f"uri_not_local_{entry.entry_id}"
            cam.config.reported_host = "203.0.113.9"
            with patch("custom_components.localcam.WHOLE_READ_INTERVAL", 0.0):
                assert await hass.config_entries.async_reload(entry.entry_id)
                await hass.async_block_till_done()
                assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None
                cam.config.reported_host = None
                await entry.runtime_data.coordinator.async_refresh()
                assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
    finally:
        await cam.stop()


@pytest.mark.parametrize("meanwhile", ["removed", "reconfigured"])
async def test_a_re_pin_whose_entry_changed_during_the_device_read_touches_nothing(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture, meanwhile: str
) -> None:
    """A check run outside the entry's tasks (``homeassistant.update_entity``) re-pins a
    camera by its serial while the user removes or reconfigures the entry: nothing is written.

    The check is not one of the entry's background tasks, so neither cancels
    it. The removed entry was written anyway (UnknownEntry, logged as an
    unexpected error with its traceback); the reconfigured one got the old
    device's identity, pinning the new camera to the old one's serial.
    """
    cam = VirtualCamera(onvif_camera_config(7, "127.0.0.1", 0, 0, LINK_MAC))
    await cam.start()
    link = "02:00:00:aa:bb:99"  # a MAC-rewriting repeater: the re-pin case
    reconfigured = {"serial": "SERIAL-OF-THE-NEW-CAMERA"}
    try:
        entry = await add_onvif_entry(hass, cam)
        coordinator = entry.runtime_data.coordinator
        real = coordinator_module.async_observe_identity

        async def observe_then_changed(*args: Any, **kwargs: Any) -> Any:
            seen = await real(*args, **kwargs)
            if meanwhile == "removed":
                await hass.config_entries.async_remove(entry.entry_id)
            else:
                hass.config_entries.async_update_entry(
                    entry, data={**entry.data, CONF_IDENTITY: reconfigured}
                )
            return seen

        with (
            patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=link),
            patch("custom_components.localcam.helpers.neighbour_mac", return_value=link),
            patch.object(coordinator_module, "async_observe_identity", observe_then_changed),
        ):
            await coordinator.async_refresh()
            await hass.async_block_till_done(wait_background_tasks=True)
        if meanwhile == "removed":
            assert hass.config_entries.async_get_entry(entry.entry_id) is None
            # The check failed as any mismatch does.
            assert not isinstance(coordinator.last_exception, UnknownEntry)
            assert "Unexpected error" not in caplog.text
        else:
            assert entry.data[CONF_IDENTITY] == reconfigured
            await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


async def test_the_main_camera_entity_survives_a_main_stream_that_takes_a_former_sub_token(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A firmware update drops the main profile's token and reports the old sub token first.

    The main stream's entity, with the id and settings the user gave it, stays
    the main camera's and stays enabled; it was removed, and the main stream
    was left to the former sub stream's entity, disabled by default: no
    enabled camera entity at all.
    """
    cam = VirtualCamera(camera_config("cam6", 6, onvif=True, serial="SERIAL-6"))
    await cam.start()
    registry = er.async_get(hass)
    try:
        entry = await add_onvif_entry(hass, cam)
        main_id = main_entity_id(hass, entry)
        registry.async_update_entity(main_id, new_entity_id="camera.front_door")
        cam.config.profiles = (
            OnvifProfileSpec("sub", "mainStream"),
            OnvifProfileSpec("Profile_002", "subStream", divisor=2),
        )
        await _reconfigure_onvif(hass, entry, cam)
        assert entry.runtime_data.main == "sub"
        main = registry.async_get("camera.front_door")
        assert main is not None
        assert main.unique_id == "serial_SERIAL-6_sub"
        assert main.disabled_by is None
        assert hass.states.get("camera.front_door") is not None
        # The former sub stream's entity follows the new sub stream.
        left = er.async_entries_for_config_entry(registry, entry.entry_id)
        assert {e.unique_id for e in left} == {"serial_SERIAL-6_sub", "serial_SERIAL-6_Profile_002"}
        await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


async def test_a_camera_added_by_url_whose_stream_is_h265_gets_the_note(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The H.265 note is not for ONVIF cameras only: a URL camera streaming H.265 gets it too.

    Its stream's codec is read when it is added or reconfigured (stored as
    the entry's codec); once it streams H.264, the note goes with the reload.
    """
    data = {**make_entry(camera).data, CONF_CODEC: "hevc"}
    entry = MockConfigEntry(domain=DOMAIN, title="hevc", unique_id=data[CONF_CAMERA_ID], data=data)
    await setup_entry(hass, entry)
    issue = ir.async_get(hass).async_get_issue(DOMAIN, f"h265_only_{entry.entry_id}")
    assert issue is not None
    assert issue.translation_key == "h265_only"
    hass.config_entries.async_update_entry(entry, data={**data, CONF_CODEC: "h264"})
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert ir.async_get(hass).async_get_issue(DOMAIN, f"h265_only_{entry.entry_id}") is None
    await hass.config_entries.async_unload(entry.entry_id)


async def test_a_camera_on_the_link_is_not_read_again_within_the_interval(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """After its whole read, a camera the link proves gets no ONVIF request for 15 minutes."""
    cam = VirtualCamera(onvif_camera_config(7, "127.0.0.1", 0, 0, LINK_MAC))
    await cam.start()
    try:
        with patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=LINK_MAC):
            entry = await add_onvif_entry(hass, cam)
            coordinator = entry.runtime_data.coordinator
            await coordinator.async_refresh()  # the whole read is done by now
            before = cam.stats.onvif_requests
            await coordinator.async_refresh()
            await coordinator.async_refresh()
            assert coordinator.last_update_success
            assert cam.stats.onvif_requests == before
    finally:
        await cam.stop()


async def test_a_failing_report_read_is_best_effort_and_not_retried_each_check(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The MAC proved the camera: a failing whole read neither fails the check nor repeats."""
    cam = VirtualCamera(onvif_camera_config(7, "127.0.0.1", 0, 0, LINK_MAC))
    await cam.start()
    reads: list[bool] = []

    async def unreadable(*_args: Any, **_kwargs: Any) -> Any:
        reads.append(True)
        raise CannotConnectError("the device description cannot be read")

    try:
        with patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=LINK_MAC):
            entry = await add_onvif_entry(hass, cam)
            with patch("custom_components.localcam.read_entry_device", unreadable):
                assert await hass.config_entries.async_reload(entry.entry_id)
                await hass.async_block_till_done()
                coordinator = entry.runtime_data.coordinator
                for _ in range(3):
                    await coordinator.async_refresh()
                    assert coordinator.last_update_success
                assert len(reads) == 1
    finally:
        await cam.stop()


async def test_a_stale_main_entity_of_a_gone_token_does_not_replace_the_main_one(
    hass: HomeAssistant,
) -> None:
    """Two registry entries say "main": the current main stream's, and a gone stream's.

    A disabled entity is never added, so its translation key stays what it
    was when its stream was the main one (the user since chose another main
    profile). When that stream's token goes, it is removed; the current main
    entity, which already holds the main stream's id, keeps it.
    """
    entry = MockConfigEntry(domain=DOMAIN, data={})
    entry.add_to_hass(hass)
    registry = er.async_get(hass)
    old = registry.async_get_or_create(
        "camera",
        DOMAIN,
        "cam_old",
        config_entry=entry,
        translation_key="main",
        disabled_by=er.RegistryEntryDisabler.USER,
    )
    current = registry.async_get_or_create(
        "camera", DOMAIN, "cam_new", config_entry=entry, translation_key="main"
    )
    localcam._async_sync_profile_entities(hass, entry, ["cam_new", "cam_sub"], "cam_new")
    assert registry.async_get(old.entity_id) is None
    kept = registry.async_get(current.entity_id)
    assert kept is not None
    assert kept.unique_id == "cam_new"
