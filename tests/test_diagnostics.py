"""Diagnostics hold no credentials, hosts or URLs."""

import json
from typing import Any

from homeassistant.components import camera as camera_component
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import CONF_PASSWORD
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
    get_diagnostics_for_device,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
from syrupy.assertion import SnapshotAssertion
from syrupy.matchers import path_type

from custom_components.localcam.const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_MAIN_PROFILE,
    CONF_ONVIF,
    CONF_PROFILES,
    CONF_STREAM_URL,
    DOMAIN,
)
from custom_components.localcam.core import snapshot_cache
from custom_components.localcam.core.netpolicy import REDACTED, redact_url
from custom_components.localcam.diagnostics import (
    _scrub_password,
    async_get_config_entry_diagnostics,
)
from virtualcam import Fault, VirtualCamera

from .conftest import (
    CAM_PASSWORD,
    CAM_USER,
    add_onvif_entry,
    camera_config,
    damaged_entry,
    entry_data,
    make_entry,
    setup_entry,
)

# Values that differ from run to run (the time of the health check); their
# type is pinned instead.
VOLATILE = path_type(
    {
        "health.last_checked": (str,),
        "streams.main.snapshot_cache.last_capture_age_seconds": (float,),
        "streams.main.snapshot_cache.slowest_still_seconds": (float,),
        "streams.main.snapshot_cache.stalled_after_seconds": (float,),
    }
)


async def test_diagnostics_are_redacted(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    snapshot: SnapshotAssertion,
) -> None:
    """Secrets, the camera's address and its identity hash are redacted; the shape is pinned.

    One still first, so the cache's counters show it: one miss, one upstream fetch.
    """
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    [entity_id] = hass.states.async_entity_ids("camera")
    await camera_component.async_get_image(hass, entity_id)
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port), entry.unique_id):
        assert secret not in text
    assert diagnostics == snapshot(matcher=VOLATILE)
    cache = diagnostics["streams"]["main"]["snapshot_cache"]
    # The still just taken is the camera's pace: a hang is an error after
    # twice that, never sooner than the floor.
    assert 0 < cache["slowest_still_seconds"] < 9
    paced = snapshot_cache.STALL_FACTOR * cache["slowest_still_seconds"]
    assert cache["stalled_after_seconds"] == pytest.approx(
        max(snapshot_cache.STALL_FLOOR, paced), abs=0.002
    )


async def test_device_diagnostics(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    device_registry: dr.DeviceRegistry,
    camera: VirtualCamera,
    snapshot: SnapshotAssertion,
) -> None:
    """The device's diagnostics: the entry's, its entities' states, no MAC."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    [entity_id] = hass.states.async_entity_ids("camera")
    await camera_component.async_get_image(hass, entity_id)
    [device] = dr.async_entries_for_config_entry(device_registry, entry.entry_id)
    diagnostics = await get_diagnostics_for_device(hass, hass_client, entry, device)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port), entry.unique_id):
        assert secret not in text
    assert diagnostics == snapshot(matcher=VOLATILE)


async def test_onvif_diagnostics_redact_identity_and_addresses(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """An ONVIF camera's MAC, serial, UUID, host and profile URLs are redacted."""

    cam = VirtualCamera(
        camera_config(
            "d", 0, color=(10, 200, 30), onvif=True, serial="SERIAL-XYZ", mac="02:00:00:12:34:56"
        )
    )
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam)
        diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
        text = json.dumps(diagnostics)
        for secret in ("SERIAL-XYZ", "02:00:00:12:34:56", "127.0.0.1", CAM_PASSWORD, CAM_USER):
            assert secret not in text
        assert diagnostics["identity_known"] == {"mac": True, "serial": True, "uuid": True}
        assert len(diagnostics["streams"]) == len(entry.data["profiles"])
        for profile in diagnostics["entry"]["data"]["profiles"]:
            assert profile["stream_url"].startswith("rtsp://**REDACTED**")
    finally:
        await hass.config_entries.async_unload(entry.entry_id)
        await cam.stop()


async def test_a_password_in_a_url_path_is_masked(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """A camera URL with the password as a bare path segment (no name=value to spot) hides it."""
    base = make_entry(camera)
    url = f"rtsp://127.0.0.1:{camera.rtsp_port}/{CAM_USER}/{CAM_PASSWORD}/ch1"
    profile = {"token": "main", "name": "main", "stream_url": url, "snapshot_url": None}
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=base.unique_id,
        data={**base.data, CONF_STREAM_URL: url, CONF_PROFILES: [profile]},
    )
    await setup_entry(hass, entry)  # the emulator has no such path: not loaded, still reported
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert CAM_PASSWORD not in json.dumps(diagnostics)
    # The path's other segments stay readable; only the password goes.
    assert diagnostics["entry"]["data"][CONF_STREAM_URL].endswith("/**REDACTED**/ch1")
    [shown] = diagnostics["entry"]["data"][CONF_PROFILES]
    assert shown["stream_url"].endswith("/**REDACTED**/ch1")


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        pytest.param(
            "rtsps://192.168.1.1:7441/Xk7pQ2mZ9aB3cD4e?enableSrtp",
            "Xk7pQ2mZ9aB3cD4e",
            "rtsps://**REDACTED**:**REDACTED**/**REDACTED**?**REDACTED**",
            id="UniFi Protect alias",
        ),
        pytest.param(
            "http://192.168.1.20/cgi/access_token=APIKEY-0123/snap.jpg",
            "APIKEY-0123",
            "http://**REDACTED**/cgi/access_token=**REDACTED**/snap.jpg",
            id="a name ending in token",
        ),
        pytest.param(
            "rtsp://192.168.1.20/h264Preview_01_main",
            None,
            "rtsp://**REDACTED**/h264Preview_01_main",
            id="an ordinary stream path stays readable",
        ),
    ],
)
def test_a_secret_that_is_a_path_segment_is_masked(
    url: str, secret: str | None, shown: str
) -> None:
    """A path that is itself the credential (no name=value for the old rule to spot)."""
    assert redact_url(url) == shown
    if secret is not None:
        assert secret not in redact_url(url)


def test_a_password_too_short_to_scrub_leaves_the_report_readable() -> None:
    """Masking a 3-character password everywhere would garble every word holding it."""
    report = {"state": "not_loaded", "urls": ["rtsp://x/p4ss/ch1"]}
    for password, expected in (
        ("p4s", report),
        ("p4ss", {"state": "not_loaded", "urls": ["rtsp://x/**REDACTED**/ch1"]}),
    ):
        entry = MockConfigEntry(domain=DOMAIN, data={CONF_PASSWORD: password})
        assert _scrub_password(report, entry) == expected  # type: ignore[arg-type]


def test_a_password_is_masked_in_the_forms_urls_write_it() -> None:
    """yarl keeps '!' and writes a space as %20 in a path, as + in a query value: all masked."""
    password = "my pass!"
    path = redact_url(f"rtsp://cam/admin/{password}/ch1")
    assert path.endswith("/admin/my%20pass!/ch1")  # what a bare path segment becomes
    report = {"stream_url": path, "profile_uri": "http://cam/onvif?pwd=my+pass!"}
    entry = MockConfigEntry(domain=DOMAIN, data={CONF_PASSWORD: password})
    scrubbed = json.dumps(_scrub_password(report, entry))  # type: ignore[arg-type]
    assert "pass!" not in scrubbed
    assert scrubbed.count("**REDACTED**") == 3  # the host, and the password twice


async def test_diagnostics_tell_how_long_an_rtsp_camera_took_to_start(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    rtsp_only_camera: VirtualCamera,
) -> None:
    """After a still from an RTSP-only camera, its session's open and first-keyframe times."""
    entry = make_entry(rtsp_only_camera, snapshot=False)
    await setup_entry(hass, entry)
    [entity_id] = hass.states.async_entity_ids("camera")
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert diagnostics["streams"]["main"]["rtsp_warm_session"]["last_session"] is None
    await camera_component.async_get_image(hass, entity_id)
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    session = diagnostics["streams"]["main"]["rtsp_warm_session"]
    assert session["sessions_opened"] == 1
    timing = session["last_session"]
    assert 0 < timing["opened_in_seconds"] <= timing["first_keyframe_in_seconds"] < 10


async def test_diagnostics_of_an_entry_whose_camera_is_down(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    snapshot: SnapshotAssertion,
) -> None:
    """An entry waiting to retry its setup still gives (redacted) diagnostics, and says so."""
    camera.fault = Fault.REFUSE
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_RETRY
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port), entry.unique_id):
        assert secret not in text
    assert diagnostics["state"] == "setup_retry"
    # What needs a loaded entry (health, streams) is left out, not an HTTP 500.
    assert not {"health", "main_stream", "streams"} & diagnostics.keys()
    assert diagnostics == snapshot


async def test_device_diagnostics_after_a_reload_that_failed(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    device_registry: dr.DeviceRegistry,
    camera: VirtualCamera,
) -> None:
    """The camera's device keeps its diagnostics when a reload finds the camera down."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    [device] = dr.async_entries_for_config_entry(device_registry, entry.entry_id)
    camera.fault = Fault.REFUSE
    await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.SETUP_RETRY
    diagnostics = await get_diagnostics_for_device(hass, hass_client, entry, device)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port), entry.unique_id):
        assert secret not in text
    assert diagnostics["state"] == "setup_retry"
    assert "streams" not in diagnostics
    assert diagnostics["entry"]["data"]["stream_url"] == "rtsp://**REDACTED**:**REDACTED**/stream"
    assert diagnostics["device"]["manufacturer"] == "LocalCam"
    assert [entity["state"] for entity in diagnostics["entities"]] == ["unavailable"]


async def test_onvif_diagnostics_redact_the_device_uuid(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """The device's UUID identifies it like its MAC and serial: known, never shown."""
    cam = VirtualCamera(
        camera_config(
            "u",
            0,
            color=(10, 200, 30),
            onvif=True,
            serial="SERIAL-U",
            mac="02:00:00:12:34:57",
            device_uuid="5f0c1e2a-6b7d-4c8e-9f10-a1b2c3d4e5f6",
        )
    )
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam)
        assert entry.data["identity"]["uuid"].endswith("5f0c1e2a-6b7d-4c8e-9f10-a1b2c3d4e5f6")
        for report in (
            await get_diagnostics_for_config_entry(hass, hass_client, entry),
            await get_diagnostics_for_device(
                hass,
                hass_client,
                entry,
                dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)[0],
            ),
        ):
            assert "5f0c1e2a-6b7d-4c8e-9f10-a1b2c3d4e5f6" not in json.dumps(report)
            assert report["identity_known"]["uuid"] is True
    finally:
        await hass.config_entries.async_unload(entry.entry_id)
        await cam.stop()


def test_a_password_with_a_slash_is_masked_in_its_fully_encoded_form() -> None:
    """A path segment written with every reserved character encoded (%2F for '/') is masked too."""
    password = "pa/ss word"
    path = redact_url("rtsp://cam/admin/pa%2Fss%20word/ch1")  # as a camera may report it
    assert path.endswith("/admin/pa%2Fss%20word/ch1")
    entry = MockConfigEntry(domain=DOMAIN, data={CONF_PASSWORD: password})
    scrubbed = json.dumps(_scrub_password({"stream_url": path}, entry))  # type: ignore[arg-type]
    assert "ss%20word" not in scrubbed
    assert scrubbed.endswith('/admin/**REDACTED**/ch1"}')


async def test_allowed_networks_are_redacted(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """The networks a user opened (a VPN range, a camera VLAN) map their LAN: never shown."""
    entry = make_entry(camera, options={CONF_ALLOWED_NETWORKS: "10.77.0.0/24, fd12:3456::/48"})
    await setup_entry(hass, entry)
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    text = json.dumps(diagnostics)
    assert "10.77.0.0" not in text
    assert "fd12:3456" not in text
    assert diagnostics["entry"]["options"][CONF_ALLOWED_NETWORKS] == "**REDACTED**"


async def test_a_short_password_is_redacted_in_diagnostics(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A 3-character password is too short for the text scrub: the field rule must hide it."""
    data = entry_data(camera)
    data[CONF_PASSWORD] = "p4s"
    entry = MockConfigEntry(domain=DOMAIN, title="porch", unique_id=data[CONF_CAMERA_ID], data=data)
    entry.add_to_hass(hass)
    report = await async_get_config_entry_diagnostics(hass, entry)  # type: ignore[arg-type]
    assert report["entry"]["data"][CONF_PASSWORD] == REDACTED


@pytest.mark.parametrize(
    "damage",
    [
        {"drop": CONF_CAMERA_ID},
        # An ONVIF entry whose profile lost its stream URL (a hand edit).
        {CONF_ONVIF: True, CONF_PROFILES: [{"token": "p1"}], CONF_MAIN_PROFILE: "p1"},
    ],
)
async def test_diagnostics_of_an_entry_with_damaged_stored_data(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    damage: dict[str, Any],
) -> None:
    """An entry whose setup failed on damaged data (stored_data_incomplete) gives diagnostics.

    That is exactly the entry a user downloads diagnostics for; it must not be an HTTP 500.
    """
    entry = damaged_entry(camera, damage)
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    assert entry.error_reason_translation_key == "stored_data_incomplete"
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port)):
        assert secret not in text
    assert diagnostics["state"] == "setup_error"
    assert diagnostics["cast"] == {}
