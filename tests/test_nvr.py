"""An ONVIF device with several profiles (an NVR's channels) over its life."""

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

from homeassistant.components.camera import async_get_image
from homeassistant.config_entries import SOURCE_REAUTH, ConfigEntry, ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers import entity_registry as er, issue_registry as ir
import pytest

from custom_components.localcam import config_flow
from custom_components.localcam.const import CONF_PROFILES, DOMAIN
from virtualcam import VirtualCamera
from virtualcam.camera import Fault, OnvifProfileSpec

from .conftest import add_onvif_entry, camera_config, onvif_flow
from .test_init import _reconfigure_onvif

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")

# A two-channel NVR: each channel is a profile with a stream path of its own.
NVR_PROFILES = (
    OnvifProfileSpec("ch1", "Channel 1", path="/stream/ch1"),
    OnvifProfileSpec("ch2", "Channel 2", path="/stream/ch2"),
)


@asynccontextmanager
async def _onvif_device(
    hass: HomeAssistant, index: int, profiles: tuple[OnvifProfileSpec, ...] | None = None
) -> AsyncIterator[tuple[VirtualCamera, ConfigEntry]]:
    """An ONVIF device (serial S-<index>) added to Home Assistant; unloaded and stopped after."""
    extra: dict[str, Any] = {} if profiles is None else {"profiles": profiles}
    cam = VirtualCamera(
        camera_config(f"nvr{index}", index, onvif=True, serial=f"S-{index}", **extra)
    )
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam)
        yield cam, entry
        await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


async def _go_dark(hass: HomeAssistant, entry: ConfigEntry, tokens: Collection[str]) -> None:
    """These profiles' cameras are unplugged: the NVR answers their streams 404; set up again."""
    assert await hass.config_entries.async_unload(entry.entry_id)
    profiles = [
        {**p, "stream_url": p["stream_url"].replace("/stream/", "/gone/"), "snapshot_url": None}
        if p["token"] in tokens
        else dict(p)
        for p in entry.data[CONF_PROFILES]
    ]
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_PROFILES: profiles})
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def test_one_dead_nvr_channel_leaves_the_other_channels_available(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Channel 1's camera is unplugged; the NVR answers its DESCRIBE with 404.

    The NVR itself answers, and channel 2 streams. The health check of an
    ONVIF entry looked at the main profile (channel 1) only: its failure made
    every channel of the NVR unavailable (and failed the setup after a
    restart, so that no channel got an entity at all).
    """
    registry = er.async_get(hass)
    async with _onvif_device(hass, 11, NVR_PROFILES) as (_cam, entry):
        assert entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.main == "ch1"
        ch2 = registry.async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_ch2")
        assert ch2 is not None
        registry.async_update_entity(ch2, disabled_by=None)
        await hass.async_block_till_done()
        await _go_dark(hass, entry, {"ch1"})
        assert entry.state is ConfigEntryState.LOADED
        state = hass.states.get(ch2)
        assert state is not None
        assert state.state != STATE_UNAVAILABLE
        image = await async_get_image(hass, ch2)
        assert image.content.startswith(b"\xff\xd8")
        # Channel 1 itself shows as down.
        ch1 = registry.async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_ch1")
        assert ch1 is not None
        state = hass.states.get(ch1)
        assert state is not None
        assert state.state == STATE_UNAVAILABLE


async def test_a_profile_whose_snapshot_uri_fails_gets_its_stills_from_its_stream(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Only the main profile's snapshot URI was tested before configure.

    The sub profile (another channel of an NVR) reports a snapshot URI where
    nothing answers: it was stored untested, and every still of that entity
    failed for good, though its stream plays. The README promises a snapshot
    URI that gives no JPEG is left out, the stills then coming from the stream.
    """
    profiles = (
        OnvifProfileSpec("main", "mainStream"),
        OnvifProfileSpec("sub", "subStream", divisor=2, snapshot_path="/no-such-still.jpg"),
    )
    registry = er.async_get(hass)
    async with _onvif_device(hass, 12, profiles) as (_cam, entry):
        stored = {p["token"]: p["snapshot_url"] for p in entry.data[CONF_PROFILES]}
        assert stored["main"] is not None  # it works: kept
        assert stored["sub"] is None  # it gives no JPEG: left out
        sub = registry.async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_sub")
        assert sub is not None
        registry.async_update_entity(sub, disabled_by=None)
        await hass.config_entries.async_reload(entry.entry_id)
        await hass.async_block_till_done()
        image = await async_get_image(hass, sub)
        assert image.content.startswith(b"\xff\xd8")


async def test_a_snapshot_uri_two_channels_report_is_trusted_for_neither(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """An NVR firmware reports channel 1's snapshot URI for every channel.

    Each channel is a profile of its own video source (SourceToken); one URI
    cannot show two sources, so channel 2's entity served channel 1's
    picture as its own still. A snapshot URI reported for profiles of
    different video sources is left out: their stills come from their streams.
    Profiles of one source (a channel's main and sub stream) may share one.
    """
    profiles = (
        OnvifProfileSpec("ch1", "Channel 1", path="/stream/ch1", source="video0"),
        OnvifProfileSpec("ch1s", "Channel 1 sub", path="/stream/ch1s", source="video0"),
        OnvifProfileSpec("ch2", "Channel 2", path="/stream/ch2", source="video1"),
        OnvifProfileSpec(
            "ch3", "Channel 3", path="/stream/ch3", source="video2", snapshot_path="/ch3.jpg"
        ),
    )
    async with _onvif_device(hass, 13, profiles) as (_cam, entry):
        assert entry.state is ConfigEntryState.LOADED
        stored = {p["token"]: p["snapshot_url"] for p in entry.data[CONF_PROFILES]}
        assert stored["ch1"] is None
        assert stored["ch1s"] is None
        assert stored["ch2"] is None


async def test_every_channel_of_a_16_channel_nvr_gets_an_entity(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A 16-channel NVR reports a main and a sub profile per channel: 32 profiles.

    read_device kept the first 16 (MAX_PROFILES) and dropped the rest with a
    debug line: channels 9 to 16 got no entity, with nothing said, though
    the README says an NVR's channels each get one (and MAX_SOAP_TAGS was
    sized for a 64-channel NVR's GetProfiles).
    """
    profiles = tuple(
        OnvifProfileSpec(
            f"ch{n}{kind}", f"Channel {n} {kind}", path=f"/stream/{n}{kind}", source=f"video{n}"
        )
        for n in range(1, 17)
        for kind in ("main", "sub")
    )
    async with _onvif_device(hass, 14, profiles) as (_cam, entry):
        assert entry.state is ConfigEntryState.LOADED
        assert len(entry.data[CONF_PROFILES]) == 32
        assert "ch16main" in entry.runtime_data.streams


async def test_the_main_profile_stays_the_main_one_across_a_reconfigure(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The user switches the camera's main stream to H.265, then reconfigures (a new password).

    The flow took the first H.264 profile as the main one each time: the sub
    stream became the main profile, so its entity, disabled by default, was
    the device's main camera, left disabled; the user's enabled camera was
    renamed to "<device> mainStream" and the health check and the repairs
    watched the sub stream. A profile the camera still reports stays main.
    """
    registry = er.async_get(hass)
    async with _onvif_device(hass, 15) as (cam, entry):
        assert entry.runtime_data.main == "main"
        main_id = registry.async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_main")
        assert main_id is not None
        cam.config.profiles = (
            OnvifProfileSpec("main", "mainStream", encoding="H265"),
            OnvifProfileSpec("sub", "subStream", divisor=2),
        )
        await _reconfigure_onvif(hass, entry, cam)
        assert entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.main == "main"
        main = registry.async_get(main_id)
        assert main is not None
        assert main.translation_key == "main"
        assert main.disabled_by is None


async def test_snapshot_uris_left_when_the_form_s_time_is_up_are_not_waited_for(
    hass: HomeAssistant, socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each channel's snapshot URI is tested, but all within one bound: the rest are left out.

    An NVR whose 32 channels' stills all hang would otherwise hold the form
    32 times the still's time limit. A URI not tested is not stored; that
    profile's stills come from its stream.
    """
    monkeypatch.setattr(config_flow, "SNAPSHOT_TESTS_SECONDS", 0.0)
    async with _onvif_device(hass, 16, NVR_PROFILES) as (_cam, entry):
        assert entry.state is ConfigEntryState.LOADED
        assert {p["token"]: p["snapshot_url"] for p in entry.data[CONF_PROFILES]} == {
            "ch1": None,
            "ch2": None,
        }


async def test_an_nvr_whose_tried_channels_are_all_dark_is_down(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Every channel the check may try is refused: the device is down, after a bounded look.

    The main stream's refusal stands (the entry retries its setup); the check
    tries at most OTHER_STREAM_TRIES other stream URLs, each once, a URL that
    two profiles share (a channel's sub stream on its main path) once only.
    """
    profiles = (
        OnvifProfileSpec("ch1", "Channel 1", path="/stream/ch1"),
        OnvifProfileSpec("ch1s", "Channel 1 sub", path="/stream/ch1", divisor=2),
        *(OnvifProfileSpec(f"ch{n}", f"Channel {n}", path=f"/stream/ch{n}") for n in range(2, 7)),
    )
    async with _onvif_device(hass, 17, profiles) as (cam, entry):
        assert entry.state is ConfigEntryState.LOADED
        asked = cam.stats.describe_requests - cam.stats.unauthorized_responses
        # Channels 1 to 5 go dark; channel 6 would answer, past the tries.
        await _go_dark(hass, entry, {"ch1", "ch1s", "ch2", "ch3", "ch4", "ch5"})
        assert entry.state is ConfigEntryState.SETUP_RETRY
        # The main stream, then 4 others (ch1s shares ch1's URL: not asked twice).
        assert cam.stats.describe_requests - cam.stats.unauthorized_responses - asked == 5


@asynccontextmanager
async def _nvr_with_dark_main(
    hass: HomeAssistant, index: int
) -> AsyncIterator[tuple[VirtualCamera, ConfigEntry]]:
    """A two-channel NVR whose main channel (ch1) answers 404; ch2 streams."""
    async with _onvif_device(hass, index, NVR_PROFILES) as (cam, entry):
        await _go_dark(hass, entry, {"ch1"})
        assert entry.state is ConfigEntryState.LOADED
        assert entry.runtime_data.coordinator.data.down == frozenset({"ch1"})
        yield cam, entry


async def test_a_401_on_the_other_channel_starts_reauth(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The dark channel answers 404, the live one now 401: a reauth, not 'cannot connect'."""
    async with _nvr_with_dark_main(hass, 31) as (cam, entry):
        coordinator = entry.runtime_data.coordinator
        cam.set_fault(Fault.UNAUTHORIZED)  # the NVR's password was changed
        await coordinator.async_refresh()
        await hass.async_block_till_done()
        assert isinstance(coordinator.last_exception, ConfigEntryAuthFailed)
        assert entry.async_get_active_flows(hass, {SOURCE_REAUTH})
        cam.set_fault(None)


async def test_another_device_behind_the_other_channel_raises_the_repair(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The dark channel answers 404; the device answering the live one is another device."""
    async with _nvr_with_dark_main(hass, 32) as (cam, entry):
        coordinator = entry.runtime_data.coordinator
        cam.config.serial = "S-OTHER"  # another device took the NVR's address
        await coordinator.async_refresh()
        await hass.async_block_till_done()
        assert coordinator.last_error == "identity_mismatch"
        issue_id = f"identity_mismatch_{entry.entry_id}"
        assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None


async def test_a_profile_on_the_refused_main_stream_shows_unavailable_too(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Two profiles report one stream URI (main and a second encoder of channel 1).

    That URI now answers 404; channel 2 proves the device. The main profile's
    entity shows unavailable, but the other profile on the very same refused
    URI still showed available, though its stream is the one refused.
    """
    profiles = (
        OnvifProfileSpec("ch1", "Channel 1", path="/stream/ch1", source="v1"),
        OnvifProfileSpec("ch1b", "Channel 1 again", path="/stream/ch1", source="v1"),
        OnvifProfileSpec("ch2", "Channel 2", path="/stream/ch2", source="v2"),
    )
    registry = er.async_get(hass)
    async with _onvif_device(hass, 33, profiles) as (_cam, entry):
        ch1b = registry.async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_ch1b")
        assert ch1b is not None
        registry.async_update_entity(ch1b, disabled_by=None)
        await _go_dark(hass, entry, {"ch1", "ch1b"})
        assert entry.state is ConfigEntryState.LOADED
        state = hass.states.get(ch1b)
        assert state is not None
        assert state.state == STATE_UNAVAILABLE


async def test_an_nvr_whose_first_channel_is_dark_can_be_added(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Channel 1 has no camera (the NVR answers its stream with 404); channel 2 streams.

    The health check copes with a dark main channel, but the flow probed only
    the first H.264 profile's stream: such an NVR could not be added at all
    (nor reauthed or reconfigured while that channel is dark).
    """
    profiles = (
        OnvifProfileSpec("ch1", "Channel 1", path="/gone/ch1", source="v1"),
        OnvifProfileSpec("ch2", "Channel 2", path="/stream/ch2", source="v2"),
    )
    cam = VirtualCamera(camera_config("nvr34", 34, onvif=True, serial="S-34", profiles=profiles))
    await cam.start()
    try:
        result = await onvif_flow(hass, cam)
        assert result["type"] is FlowResultType.CREATE_ENTRY, result.get("errors")
        entry = result["result"]
        assert entry.state is ConfigEntryState.LOADED
        assert {p["token"] for p in entry.data[CONF_PROFILES]} == {"ch1", "ch2"}
        assert await hass.config_entries.async_unload(entry.entry_id)
    finally:
        await cam.stop()


@pytest.mark.parametrize(
    ("paths", "fault", "error"),
    [
        # Every channel dark: the main one's refusal, after the others were tried.
        (("/gone/ch1", "/gone/ch2"), None, "cannot_connect"),
        # The main stream fails otherwise (a redirect): said as it is, no other tried.
        (("/stream/ch1", "/stream/ch2"), Fault.REDIRECT, "redirected"),
    ],
)
async def test_an_nvr_that_plays_no_stream_is_not_added(
    hass: HomeAssistant,
    socket_enabled: None,
    paths: tuple[str, str],
    fault: Fault | None,
    error: str,
) -> None:
    """No channel plays, or the main one fails otherwise than by a refusal: the form says why."""
    profiles = (
        OnvifProfileSpec("ch1", "Channel 1", path=paths[0], source="v1"),
        OnvifProfileSpec("ch2", "Channel 2", path=paths[1], source="v2"),
    )
    cam = VirtualCamera(camera_config("nvr35", 35, onvif=True, serial="S-35", profiles=profiles))
    await cam.start()
    try:
        cam.fault = fault
        result = await onvif_flow(hass, cam)
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {"base": error}
        assert not hass.config_entries.async_entries(DOMAIN)
    finally:
        cam.fault = None
        await cam.stop()
