"""Config flow: ONVIF, scan, zeroconf, DHCP and integration discovery.

Real ONVIF virtual cameras on 127.0.0.1; WS-Discovery answered by the virtual
camera's responder on a loopback port (unicast, never multicast here).
"""

import asyncio
from collections.abc import AsyncIterator
import contextlib
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import ip_address
import json
import logging
from pathlib import Path
import time
from typing import Any
from unittest.mock import patch

from homeassistant.components import camera as camera_component
from homeassistant.config_entries import (
    SOURCE_DHCP,
    SOURCE_IGNORE,
    SOURCE_INTEGRATION_DISCOVERY,
    SOURCE_REAUTH,
    SOURCE_RECONFIGURE,
    SOURCE_USER,
    SOURCE_ZEROCONF,
    ConfigEntryState,
    ConfigFlowResult,
)
from homeassistant.const import CONF_HOST, CONF_HOSTS, CONF_PASSWORD, CONF_PORT, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.service_info.dhcp import DhcpServiceInfo
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
import pytest_socket

from custom_components.localcam import config_flow
from custom_components.localcam.const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_MAIN_PROFILE,
    CONF_ONVIF,
    CONF_PROFILES,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DOMAIN,
)
from custom_components.localcam.core.errors import CannotConnectError
from custom_components.localcam.helpers import device_is_configured
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for

from .conftest import (
    CAM_PASSWORD,
    CAM_USER,
    add_onvif_entry,
    camera_config,
    entry_data,
    make_entry,
)
from .test_discovery import DEVICE

MAC = "02:00:00:aa:bb:01"
OTHER_MAC = "02:00:00:aa:bb:99"  # another device's, on the link at the camera's address
SERIAL = "VC-0001"
EN = Path(__file__).parents[1] / "custom_components" / "localcam" / "translations" / "en.json"


@asynccontextmanager
async def _onvif_camera(**overrides: Any) -> AsyncIterator[VirtualCamera]:
    """The ONVIF virtual camera MAC/SERIAL ("door"), with ``overrides``; stopped after."""
    settings: dict[str, Any] = {
        "name": "door",
        "color": color_for(2),
        "username": CAM_USER,
        "password": CAM_PASSWORD,
        "width": 320,
        "height": 180,
        "onvif": True,
        "serial": SERIAL,
        "mac": MAC,
    }
    config = CameraConfig(**{**settings, **overrides})
    cam = VirtualCamera(config)
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


@pytest.fixture
async def onvif_camera(socket_enabled: None) -> AsyncIterator[VirtualCamera]:
    """An ONVIF virtual camera with a MAC and a serial, and a WS-Discovery responder."""
    async with _onvif_camera(wsdiscovery_port=0) as cam:
        yield cam


@pytest.fixture
def loopback_hosts(socket_enabled: None) -> None:
    """Let the test reach 127.0.0.2 and .3 too (still loopback: 127.0.0.0/8).

    phcc allows only 127.0.0.1; two loopback addresses stand in for a camera's
    old and new DHCP lease.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2", "127.0.0.3"])


def _onvif_input(cam: VirtualCamera, **overrides: Any) -> dict[str, Any]:
    values = {
        CONF_HOST: "127.0.0.1",
        CONF_PORT: cam.http_port,
        CONF_USERNAME: CAM_USER,
        CONF_PASSWORD: CAM_PASSWORD,
        "verify_ssl": True,
    }
    values.update(overrides)
    return values


async def _reconfigure(hass: HomeAssistant, entry_id: str) -> Any:
    return await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_RECONFIGURE, "entry_id": entry_id}
    )


async def _reauth(hass: HomeAssistant, entry_id: str) -> Any:
    return await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_REAUTH, "entry_id": entry_id}
    )


async def _onvif_form(hass: HomeAssistant) -> str:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "onvif"}
    )
    assert result["step_id"] == "onvif"
    return str(result["flow_id"])


async def test_add_onvif_camera(hass: HomeAssistant, onvif_camera: VirtualCamera) -> None:
    """Identity, profiles and URIs come from the camera; one entity per profile."""
    flow_id = await _onvif_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY
    data = result["data"]
    assert result["result"].unique_id == MAC
    assert data[CONF_CAMERA_ID] == MAC
    assert data[CONF_IDENTITY] == {
        "mac": MAC,
        "serial": SERIAL,
        "uuid": data[CONF_IDENTITY]["uuid"],
    }
    assert data[CONF_ONVIF] is True
    assert len(data[CONF_PROFILES]) >= 2
    assert data[CONF_MAIN_PROFILE] == data[CONF_PROFILES][0]["token"]
    assert CAM_PASSWORD not in str(data[CONF_PROFILES])
    # Its reported snapshot URI gives a JPEG, so stills come from it.
    assert data[CONF_SNAPSHOT_URL] == data[CONF_PROFILES][0]["snapshot_url"]
    assert data[CONF_SNAPSHOT_URL].endswith("/snapshot.jpg")
    await hass.async_block_till_done()
    entry = result["result"]
    assert entry.state is ConfigEntryState.LOADED
    entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
    enabled = [e for e in entities if e.disabled_by is None]
    assert len(entities) == len(data[CONF_PROFILES])
    assert [e.unique_id for e in enabled] == [f"{MAC}_{data[CONF_MAIN_PROFILE]}"]


async def test_an_onvif_camera_whose_snapshot_uri_fails_takes_stills_from_its_stream(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A reported snapshot URI that gives no JPEG (here a 404) is left out; stills still work.

    Stills try the snapshot URI first and no form can change a URI the camera
    reports: added with it, every still of the camera failed for good.
    """
    async with _onvif_camera(reported_snapshot_path="/cgi-bin/snapshot.cgi") as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        data = result["data"]
        assert data[CONF_SNAPSHOT_URL] is None
        assert [profile["snapshot_url"] for profile in data[CONF_PROFILES]] == [None] * len(
            data[CONF_PROFILES]
        )
        assert "snapshot URI gives no usable still (cannot_connect)" in caplog.text
        await hass.async_block_till_done()
        entity_id = next(
            e.entity_id
            for e in er.async_entries_for_config_entry(
                er.async_get(hass), result["result"].entry_id
            )
            if e.disabled_by is None
        )
        image = await camera_component.async_get_image(hass, entity_id)
        assert image.content[:2] == b"\xff\xd8"
        assert cam.stats.snapshot_requests == 0  # from the stream, not the snapshot endpoint


async def test_an_onvif_camera_without_a_snapshot_uri_takes_stills_from_its_stream(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A camera that reports no snapshot URI: added without one, nothing fetched, no warning."""
    async with _onvif_camera(http_snapshot=False) as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert result["data"][CONF_SNAPSHOT_URL] is None
        assert cam.stats.snapshot_requests == 0
        assert "snapshot URI gives no usable still" not in caplog.text
        await hass.async_block_till_done()


async def test_an_onvif_camera_that_writes_its_password_into_its_uris(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Many cameras report rtsp://user:pass@...: kept nowhere, and logged nowhere.

    The ONVIF library logs each SOAP reply whole at DEBUG; during LocalCam's
    reads the URIs' credentials (and the requests' WS-Security header) are
    masked there. (The autouse guard checks every record for the password.)
    """
    # The userinfo, and a snapshot CGI's own credential pairs (Foscam-style).
    async with _onvif_camera(
        reported_userinfo=f"{CAM_USER}:{CAM_PASSWORD}",
        reported_snapshot_path=f"/snapshot.jpg?usr={CAM_USER}&pwd={CAM_PASSWORD}",
    ) as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert CAM_PASSWORD not in str(result["data"][CONF_PROFILES])
        await hass.async_block_till_done()
    soap = [r.getMessage() for r in caplog.get_records("call") if r.name == "onvif.zeep_aiohttp"]
    assert any("rtsp://****:****@" in text for text in soap)  # the reply was logged, masked
    assert any("pwd=****" in text for text in soap)
    assert any("<Security>(masked)</Security>" in text for text in soap)


async def test_onvif_errors_and_recovery(hass: HomeAssistant, onvif_camera: VirtualCamera) -> None:
    """Wrong password, a public host and a dead port each show their error, then work."""
    flow_id = await _onvif_form(hass)
    for overrides, errors in (
        ({CONF_PASSWORD: "nope"}, {"base": "invalid_auth"}),
        ({CONF_HOST: "203.0.113.5"}, {CONF_HOST: "not_local"}),
        ({CONF_PORT: 1}, {"base": "cannot_connect"}),
    ):
        result = await hass.config_entries.flow.async_configure(
            flow_id, _onvif_input(onvif_camera, **overrides)
        )
        assert result["errors"] == errors, overrides
    with patch("custom_components.localcam.config_flow.read_device", side_effect=RuntimeError):
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    assert result["errors"] == {"base": "unknown"}
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_onvif_camera_on_a_vpn_range_is_added_with_its_network_allowed(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """The ONVIF add form's extra allowed networks reach the policy and become options."""
    flow_id = await _onvif_form(hass)
    vpn = _onvif_input(onvif_camera, **{CONF_HOST: "100.64.0.5"})
    result = await hass.config_entries.flow.async_configure(flow_id, vpn)
    assert result["errors"] == {CONF_HOST: "not_local"}
    result = await hass.config_entries.flow.async_configure(
        flow_id, {**vpn, CONF_ALLOWED_NETWORKS: "100.64.0.0/33"}
    )
    assert result["errors"] == {CONF_ALLOWED_NETWORKS: "invalid_networks"}
    assert result["description_placeholders"]["reason"]
    # Allowed, the address reaches the ONVIF read, stubbed: no packet leaves this host.
    allowed = {CONF_ALLOWED_NETWORKS: "100.64.0.0/10"}
    with patch(
        "custom_components.localcam.config_flow.read_device",
        side_effect=CannotConnectError("stub"),
    ) as read:
        result = await hass.config_entries.flow.async_configure(flow_id, {**vpn, **allowed})
    assert result["errors"] == {"base": "cannot_connect"}
    assert read.call_args.kwargs["policy"].classify("100.64.0.5") is None
    result = await hass.config_entries.flow.async_configure(
        flow_id, {**_onvif_input(onvif_camera), **allowed}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].options == allowed


def _error_text(result: ConfigFlowResult, field: str) -> str:
    """The English text the user sees for ``field``'s error (KeyError: a placeholder lacks)."""
    template: str = json.loads(EN.read_text())["config"]["error"][result["errors"][field]]
    return template.format(**(result["description_placeholders"] or {}))


@pytest.mark.parametrize(
    ("step", "user_input", "field", "error"),
    [
        ("onvif", {CONF_HOST: "http://192.168.1.20"}, CONF_HOST, "invalid_host"),
        ("onvif", {CONF_HOST: "admin@192.168.1.20"}, CONF_HOST, "invalid_host"),
        ("scan", {CONF_HOSTS: "192.168.0.0/16"}, CONF_HOSTS, "invalid_hosts"),
        ("scan", {CONF_HOSTS: "192.168.1.20-10"}, CONF_HOSTS, "invalid_hosts"),
    ],
    ids=["onvif-url", "onvif-userinfo", "scan-too-many", "scan-backwards"],
)
async def test_host_fields_get_host_errors(
    hass: HomeAssistant, step: str, user_input: dict[str, Any], field: str, error: str
) -> None:
    """A bad host (ONVIF) or host list (scan) is named as such, not as a bad stream URL.

    Refused before any packet is sent.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    flow_id = result["flow_id"]
    await hass.config_entries.flow.async_configure(flow_id, {"next_step_id": step})
    result = await hass.config_entries.flow.async_configure(flow_id, user_input)
    assert result["errors"] == {field: error}
    assert result["description_placeholders"]["reason"] in _error_text(result, field)


async def test_camera_without_mac_uses_its_serial(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera that reports no MAC is configured with its serial as identity."""
    async with _onvif_camera(mac=None) as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert result["result"].unique_id == f"serial_{SERIAL}"


async def test_a_camera_the_link_shows_with_another_mac_is_checked_by_asking_it(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """A repeater's MAC (or the camera's other interface's) on the link: added and served.

    The device reports MAC over ONVIF; the kernel sees ``link`` answer at its
    address. Pinning the reported MAC would fail every check of the same
    camera, so the entry keeps serial and UUID, and each still asks the device.
    """
    link = "02:00:00:aa:bb:99"
    with (
        patch("custom_components.localcam.config_flow.neighbour_mac", return_value=link),
        patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=link),
        patch("custom_components.localcam.helpers.neighbour_mac", return_value=link),
    ):
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        entry = result["result"]
        assert entry.unique_id == f"serial_{SERIAL}"
        identity = result["data"][CONF_IDENTITY]
        assert set(identity) == {"serial", "uuid"}
        assert identity["serial"] == SERIAL
        await hass.async_block_till_done()
        assert entry.state is ConfigEntryState.LOADED
        entity_id = next(
            e.entity_id
            for e in er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
            if e.disabled_by is None
        )
        asked = onvif_camera.stats.onvif_requests
        image = await camera_component.async_get_image(hass, entity_id)
        assert image.content[:2] == b"\xff\xd8"
        assert onvif_camera.stats.onvif_requests > asked  # the device said who it is
        assert not [
            issue
            for (domain, issue) in ir.async_get(hass).issues
            if domain == DOMAIN and issue.startswith("identity_mismatch_")
        ]


async def test_h265_only_camera_is_added_with_a_note(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """An H.265-only camera is set up, not hidden, and a repair issue says why."""
    async with _onvif_camera(hevc_only=True) as cam:
        flow_id = await _onvif_form(hass)
        # The virtual camera streams H.264 but reports H.265 profiles: the flow
        # must not hide such a camera.
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["type"] is FlowResultType.CREATE_ENTRY
        await hass.async_block_till_done()
        entry = result["result"]
        issue = ir.async_get(hass).async_get_issue(DOMAIN, f"h265_only_{entry.entry_id}")
        assert issue is not None
        assert issue.translation_key == "h265_only"


async def test_reconfigure_onvif(hass: HomeAssistant, onvif_camera: VirtualCamera) -> None:
    """Same device: saved; another device at the address: refused."""
    flow_id = await _onvif_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    entry = result["result"]
    await hass.async_block_till_done()
    result = await _reconfigure(hass, entry.entry_id)
    assert result["step_id"] == "reconfigure_onvif"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _onvif_input(onvif_camera, **{CONF_PORT: 1, CONF_PASSWORD: ""})
    )
    assert result["errors"] == {"base": "cannot_connect"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _onvif_input(onvif_camera, **{CONF_PASSWORD: ""})
    )
    assert result["reason"] == "reconfigure_successful"
    assert entry.data[CONF_PASSWORD] == CAM_PASSWORD
    await hass.async_block_till_done()

    async with _onvif_camera(mac="02:00:00:aa:bb:99", serial="OTHER") as other:
        result = await _reconfigure(hass, entry.entry_id)
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], _onvif_input(other)
        )
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "wrong_camera"


async def test_reconfigure_onvif_names_stored_networks_setup_refuses(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """An ONVIF camera whose stored networks setup refuses: a form error, not a crashed flow."""
    entry = await add_onvif_entry(hass, onvif_camera)
    await hass.config_entries.async_unload(entry.entry_id)
    hass.config_entries.async_update_entry(entry, options={CONF_ALLOWED_NETWORKS: "10.0.0.0/33"})
    result = await _reconfigure(hass, entry.entry_id)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _onvif_input(onvif_camera, **{CONF_PASSWORD: ""})
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_networks"}
    assert "10.0.0.0/33" in result["description_placeholders"]["reason"]


async def test_reconfigure_onvif_keeps_the_mac_the_link_shows(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """The MAC saved is the one just observed: dropped once the link contradicts it, back after."""
    entry = await add_onvif_entry(hass, onvif_camera)
    assert entry.data[CONF_IDENTITY]["mac"] == MAC

    async def reconfigure(link: str | None) -> None:
        with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=link):
            result = await _reconfigure(hass, entry.entry_id)
            result = await hass.config_entries.flow.async_configure(
                result["flow_id"], _onvif_input(onvif_camera, **{CONF_PASSWORD: ""})
            )
        assert result["reason"] == "reconfigure_successful"
        await hass.async_block_till_done()

    # Now behind a repeater that rewrites MACs: the same camera (serial), checked by asking it.
    await reconfigure("02:00:00:aa:bb:99")
    assert set(entry.data[CONF_IDENTITY]) == {"serial", "uuid"}
    assert entry.data[CONF_IDENTITY]["serial"] == SERIAL
    # Wired again: the link shows the MAC the device reports, which is checked again.
    await reconfigure(MAC)
    assert entry.data[CONF_IDENTITY]["mac"] == MAC


async def test_reauth_of_an_onvif_camera_asks_the_device_who_it_is(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """ONVIF entries: reauth checks the device's own identity; another device's saves nothing.

    Over loopback the link shows no MAC, so only what the device reports over
    ONVIF (serial, UUID, MAC) can tell it from another device at the address.
    """
    flow_id = await _onvif_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    entry = result["result"]
    await hass.async_block_till_done()
    own = entry.data[CONF_IDENTITY]
    credentials = {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    # The entry was made for another device (its serial): the camera answering is not it.
    hass.config_entries.async_update_entry(
        entry,
        data={**entry.data, CONF_IDENTITY: {"serial": "ANOTHER"}, CONF_PASSWORD: "old-password"},
    )
    result = await _reauth(hass, entry.entry_id)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], credentials)
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_camera"
    assert entry.data[CONF_PASSWORD] == "old-password"
    # Its own device: the new credentials are saved.
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_IDENTITY: own})
    result = await _reauth(hass, entry.entry_id)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], credentials)
    assert result["reason"] == "reauth_successful"
    assert entry.data[CONF_PASSWORD] == CAM_PASSWORD
    await hass.async_block_till_done()


async def test_reauth_of_an_onvif_camera_keeps_the_snapshot_uri_it_tested(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """A snapshot URI left out with the old credentials (a 401) works with the new ones.

    Reauth tests the reported URI with the credentials typed; it stores what
    it found, so the camera's stills come from its snapshot URI again.
    """
    flow_id = await _onvif_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    entry = result["result"]
    await hass.async_block_till_done()
    uri = entry.data[CONF_SNAPSHOT_URL]
    assert uri is not None
    # As the flow stored it when the old password got a 401 at the snapshot URI.
    hass.config_entries.async_update_entry(
        entry,
        data={
            **entry.data,
            CONF_PASSWORD: "old-password",
            CONF_SNAPSHOT_URL: None,
            CONF_PROFILES: [{**p, "snapshot_url": None} for p in entry.data[CONF_PROFILES]],
        },
    )
    result = await _reauth(hass, entry.entry_id)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    )
    assert result["reason"] == "reauth_successful"
    assert entry.data[CONF_SNAPSHOT_URL] == uri
    assert entry.data[CONF_PROFILES][0]["snapshot_url"] == uri
    await hass.async_block_till_done()


@pytest.mark.parametrize("flow", ["reauth", "reconfigure"])
async def test_an_onvif_camera_s_new_password_goes_only_to_the_device_with_its_mac(
    hass: HomeAssistant, onvif_camera: VirtualCamera, flow: str
) -> None:
    """Reauth and reconfigure of an ONVIF camera: another MAC on the link is sent nothing.

    Before, the typed password went to the device over ONVIF (and in the
    stream test), and only then were the identities compared.
    """
    entry = _onvif_entry_at("127.0.0.1", onvif_camera.http_port, onvif_camera.rtsp_port)
    entry.add_to_hass(hass)
    if flow == "reauth":
        result = await _reauth(hass, entry.entry_id)
        typed = {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    else:
        result = await entry.start_reconfigure_flow(hass)
        typed = _onvif_input(onvif_camera)
    sent = onvif_camera.stats.credentialed_requests
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=OTHER_MAC):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], typed)
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_camera"
    assert onvif_camera.stats.credentialed_requests == sent
    # The camera itself (its MAC on the link): tested and saved as before.
    if flow == "reauth":
        result = await _reauth(hass, entry.entry_id)
    else:
        result = await entry.start_reconfigure_flow(hass)
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=MAC):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], typed)
    assert result["reason"] == f"{flow}_successful"
    assert onvif_camera.stats.credentialed_requests > sent


async def test_scan_finds_cameras_by_unicast(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """The scan step probes the given hosts and lists what answers."""
    assert onvif_camera.wsdiscovery_port
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "scan"}
    )
    assert result["step_id"] == "scan"
    flow_id = result["flow_id"]
    # A public address is refused by the policy before any probe is sent.
    public = {CONF_HOSTS: "8.8.8.8"}  # refused: public
    result = await hass.config_entries.flow.async_configure(flow_id, public)
    assert result["errors"] == {CONF_HOSTS: "not_local"}  # public address refused
    # The responder listens on a free loopback port, not 3702.
    with patch("custom_components.localcam.discovery.WSD_DISCOVERY_PORT", 9):
        result = await hass.config_entries.flow.async_configure(flow_id, {CONF_HOSTS: "127.0.0.1"})
    assert result["errors"] == {"base": "no_devices_found"}
    with patch(
        "custom_components.localcam.discovery.WSD_DISCOVERY_PORT", onvif_camera.wsdiscovery_port
    ):
        result = await hass.config_entries.flow.async_configure(flow_id, {CONF_HOSTS: "127.0.0.1"})
    assert result["step_id"] == "pick"
    key = next(iter(result["data_schema"].schema["device"].config["options"]))["value"]
    result = await hass.config_entries.flow.async_configure(flow_id, {"device": key})
    assert result["step_id"] == "onvif"
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def _add_by_hand(hass: HomeAssistant, cam: VirtualCamera, way: str) -> ConfigFlowResult:
    """Add ``cam`` from Add integration, by ONVIF address, by scan and pick, or by URL."""
    if way == "onvif":
        flow_id = await _onvif_form(hass)
        return await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    flow_id = result["flow_id"]
    await hass.config_entries.flow.async_configure(flow_id, {"next_step_id": way})
    if way == "scan":
        with patch("custom_components.localcam.discovery.WSD_DISCOVERY_PORT", cam.wsdiscovery_port):
            result = await hass.config_entries.flow.async_configure(
                flow_id, {CONF_HOSTS: "127.0.0.1"}
            )
        key = next(iter(result["data_schema"].schema["device"].config["options"]))["value"]
        await hass.config_entries.flow.async_configure(flow_id, {"device": key})
        return await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
    # By URL, the camera's MAC is what the kernel's neighbour table shows for it.
    with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
        return await hass.config_entries.flow.async_configure(
            flow_id,
            {
                CONF_STREAM_URL: cam.rtsp_url,
                CONF_USERNAME: CAM_USER,
                CONF_PASSWORD: CAM_PASSWORD,
                CONF_VERIFY_SSL: True,
            },
        )


@pytest.mark.parametrize("way", ["onvif", "scan", "url"])
async def test_a_pending_offer_does_not_block_adding_the_camera_by_hand(
    hass: HomeAssistant, onvif_camera: VirtualCamera, way: str
) -> None:
    """The user adds a camera discovery is offering: added, and the offer is gone.

    The user's own flow must not abort with already_in_progress; creating the
    entry ends the offer that shares its unique id.
    """
    offer = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_INTEGRATION_DISCOVERY},
        data={"host": "127.0.0.1", "port": onvif_camera.http_port, "mac": MAC, "name": "Door"},
    )
    assert offer["step_id"] == "discovery_confirm"
    result = await _add_by_hand(hass, onvif_camera, way)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].unique_id == MAC
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []


@pytest.mark.parametrize("way", ["onvif", "scan", "url"])
async def test_an_offer_keyed_by_uuid_ends_when_the_camera_is_added_by_hand(
    hass: HomeAssistant, onvif_camera: VirtualCamera, way: str
) -> None:
    """A WS-Discovery offer without a MAC (keyed by UUID) does not outlive the camera's entry.

    Home Assistant ends only offers keyed like the new entry (its MAC); this
    one stayed under Discovered until a restart. An entry added over ONVIF
    knows the UUID: the offer ends with its creation. One added by URL does
    not: the offer ends as already configured when it is opened.
    """
    offer = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_INTEGRATION_DISCOVERY},
        data={
            "host": "127.0.0.1",
            "port": onvif_camera.http_port,
            "uuid": onvif_camera.device_uuid,
            "name": "Door",
        },
    )
    assert offer["step_id"] == "discovery_confirm"
    result = await _add_by_hand(hass, onvif_camera, way)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    left = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    if way != "url":
        assert left == []
        return
    assert [flow["flow_id"] for flow in left] == [offer["flow_id"]]
    result = await hass.config_entries.flow.async_configure(offer["flow_id"], {})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_an_rtsp_announcement_ends_when_its_stream_is_added_by_url(
    hass: HomeAssistant, onvif_camera: VirtualCamera
) -> None:
    """An _rtsp._tcp offer (keyed by address) ends when that stream's entry is created."""
    announcement = ZeroconfServiceInfo(
        ip_address=ip_address("127.0.0.1"),
        ip_addresses=[ip_address("127.0.0.1")],
        hostname="cam.local.",
        name="Door._rtsp._tcp.local.",
        port=onvif_camera.rtsp_port,
        type="_rtsp._tcp.local.",
        properties={},
    )
    offer = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=announcement
    )
    assert offer["step_id"] == "discovery_confirm"
    result = await _add_by_hand(hass, onvif_camera, "url")
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []


async def test_integration_discovery(hass: HomeAssistant, onvif_camera: VirtualCamera) -> None:
    """Background WS-Discovery results are confirmed, then added over ONVIF."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_INTEGRATION_DISCOVERY},
        data={"host": "127.0.0.1", "port": onvif_camera.http_port, "uuid": "u-1", "name": "Door"},
    )
    assert result["step_id"] == "discovery_confirm"
    assert result["description_placeholders"] == {"name": "Door", "host": "127.0.0.1"}
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["step_id"] == "onvif"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _onvif_input(onvif_camera)
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


def _announcement(
    host: str, service: str, name: str, port: int, **properties: str
) -> ZeroconfServiceInfo:
    """An mDNS announcement of ``service`` from ``host``."""
    return ZeroconfServiceInfo(
        ip_address=ip_address(host),
        ip_addresses=[ip_address(host)],
        hostname=f"{name.lower()}.local.",
        name=f"{name}.{service}.local.",
        port=port,
        type=f"{service}.local.",
        properties=properties,
    )


def _rtsp_announcement(host: str) -> ZeroconfServiceInfo:
    """An _rtsp._tcp announcement from ``host``, without a MAC."""
    return _announcement(host, "_rtsp._tcp", "Garden", 8554)


def _axis_announcement(host: str, mac: str) -> ZeroconfServiceInfo:
    """An _axis-video._tcp announcement from ``host`` with its MAC."""
    return _announcement(host, "_axis-video._tcp", "AXIS", 80, macaddress=mac)


async def test_zeroconf_rtsp_goes_to_the_url_form(hass: HomeAssistant) -> None:
    """An _rtsp._tcp announcement prefills the URL form after confirmation."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.30")
    )
    assert result["step_id"] == "discovery_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["step_id"] == "url"
    schema = result["data_schema"].schema
    stream_key = next(k for k in schema if k == CONF_STREAM_URL)
    assert stream_key.description["suggested_value"] == "rtsp://192.168.1.30:8554/"


async def test_zeroconf_rtsp_without_identity_is_offered_once_and_can_be_ignored(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """No MAC in the announcement: a configured address is not offered; a new one can be ignored."""
    make_entry(camera).add_to_hass(hass)  # configured by URL at 127.0.0.1
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("127.0.0.1")
    )
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.30")
    )
    assert result["step_id"] == "discovery_confirm"
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_IGNORE},
        data={"unique_id": "rtsp_192.168.1.30:8554", "title": "Garden"},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.30")
    )
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")


async def test_zeroconf_axis_with_known_mac_is_recognised(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A configured camera announcing itself is recognised by MAC, not address."""
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_IDENTITY: {"mac": MAC}})
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_ZEROCONF},
        data=_axis_announcement("127.0.0.1", MAC.replace(":", "").upper()),
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_one_camera_announced_two_ways_is_offered_once(hass: HomeAssistant) -> None:
    """An Axis camera over mDNS (keyed by MAC) and WS-Discovery (keyed by UUID): one offer.

    Both were listed under Discovered, and ignoring one left the other.
    Another device at another address, or one at the same address whose
    identity differs, is still offered; a plain RTSP offer gives way to an
    ONVIF one at its address, whichever came first (the ONVIF form reads
    every profile).
    """

    async def ws_discovery(host: str, **identity: str) -> Any:
        return await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_INTEGRATION_DISCOVERY},
            data={"host": host, "port": 80, "name": "AXIS", **identity},
        )

    first = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_ZEROCONF},
        data=_axis_announcement("192.168.1.31", "ACCC8E000001"),
    )
    assert first["step_id"] == "discovery_confirm"
    again = await ws_discovery("192.168.1.31", uuid="urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000001")
    assert (again["type"], again["reason"]) == (FlowResultType.ABORT, "already_in_progress")
    # The same MAC announced over WS-Discovery too: the same offer.
    again = await ws_discovery("192.168.1.31", mac="ac:cc:8e:00:00:01")
    assert again["type"] is FlowResultType.ABORT
    other_mac = await ws_discovery("192.168.1.31", mac="ac:cc:8e:00:00:02")
    assert other_mac["step_id"] == "discovery_confirm"
    elsewhere = await ws_discovery(
        "192.168.1.32", uuid="urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000002"
    )
    assert elsewhere["step_id"] == "discovery_confirm"
    rtsp = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.33")
    )
    assert rtsp["step_id"] == "discovery_confirm"
    onvif = await ws_discovery("192.168.1.33", uuid="urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000003")
    assert onvif["step_id"] == "discovery_confirm"
    # The RTSP offer gave way to the ONVIF one at its address; none elsewhere did.
    offers = {f["flow_id"] for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)}
    assert offers == {f["flow_id"] for f in (first, other_mac, elsewhere, onvif)}
    # Announced the other way round, the RTSP offer yields at once.
    rtsp = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.33")
    )
    assert (rtsp["type"], rtsp["reason"]) == (FlowResultType.ABORT, "already_in_progress")
    # A plain RTSP offer at another address stays beside an ONVIF one.
    rtsp34 = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.34")
    )
    assert rtsp34["step_id"] == "discovery_confirm"
    await ws_discovery("192.168.1.35", uuid="urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000005")
    # An RTSP offer the user has opened (past its confirmation) is left to finish.
    opened = await hass.config_entries.flow.async_configure(rtsp34["flow_id"], {})
    assert opened["step_id"] != "discovery_confirm"
    await ws_discovery("192.168.1.34", uuid="urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000004")
    assert rtsp34["flow_id"] in {
        f["flow_id"] for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    }


async def test_zeroconf_new_axis_camera_is_offered(hass: HomeAssistant) -> None:
    """An unknown camera announced with its MAC is offered once, keyed by MAC."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_ZEROCONF},
        data=_axis_announcement("192.168.1.31", "ACCC8E000001"),
    )
    assert result["step_id"] == "discovery_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["step_id"] == "onvif"


async def test_dhcp_unknown_device_without_port(hass: HomeAssistant) -> None:
    """DHCP for a device we cannot key by MAC is not offered."""
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_DHCP},
        data=DhcpServiceInfo(ip="192.168.1.40", hostname="x", macaddress="000000000000"),
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "not_a_camera"


def _onvif_entry_at(host: str, port: int, rtsp_port: int) -> MockConfigEntry:
    """The entry of the ONVIF camera MAC/SERIAL, configured at `host`."""
    stream_url = f"rtsp://{host}:{rtsp_port}/stream"
    return MockConfigEntry(
        domain=DOMAIN,
        unique_id=MAC,
        data={
            CONF_HOST: host,
            CONF_PORT: port,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: CAM_PASSWORD,
            CONF_ONVIF: True,
            CONF_IDENTITY: {"mac": MAC, "serial": SERIAL},
            CONF_CAMERA_ID: MAC,
            CONF_STREAM_URL: stream_url,
            CONF_PROFILES: [{"token": "main", "stream_url": stream_url}],
            CONF_MAIN_PROFILE: "main",
        },
    )


async def _dhcp(hass: HomeAssistant, ip: str, *, link_mac: str | None = None) -> ConfigFlowResult:
    """DHCP reports the camera's MAC at ``ip``; the kernel's neighbour table says ``link_mac``.

    None is what the table says for loopback: no entry.
    """
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=link_mac):
        return await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_DHCP},
            data=DhcpServiceInfo(ip=ip, hostname="x", macaddress=MAC.replace(":", "")),
        )


async def test_dhcp_follows_a_moved_onvif_camera_after_identity_check(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """DHCP says the camera's MAC has a new address: the entry moves, once proven."""
    async with _onvif_camera(host="127.0.0.2") as cam:
        old = _onvif_entry_at("127.0.0.3", cam.http_port, cam.rtsp_port)
        old.add_to_hass(hass)
        result = await _dhcp(hass, "127.0.0.2")
        assert result["reason"] == "already_configured"
        assert old.data[CONF_HOST] == "127.0.0.2"
        assert old.data[CONF_STREAM_URL].startswith("rtsp://127.0.0.2:")
        assert old.data[CONF_PROFILES][0]["stream_url"].startswith("rtsp://127.0.0.2:")


async def test_dhcp_does_not_follow_to_a_different_device(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """A DHCP claim is not enough: the device at the new address must prove it."""
    async with _onvif_camera(host="127.0.0.2", mac="02:00:00:aa:bb:99", serial="X") as impostor:
        old = _onvif_entry_at("127.0.0.3", impostor.http_port, 554)
        old.add_to_hass(hass)
        result = await _dhcp(hass, "127.0.0.2")
        assert result["reason"] == "already_configured"
        assert old.data[CONF_HOST] == "127.0.0.3"  # not moved
        impostor.fault = Fault.REFUSE
        result = await _dhcp(hass, "127.0.0.2")
        assert old.data[CONF_HOST] == "127.0.0.3"


async def test_dhcp_sends_no_credential_to_an_onvif_device_with_another_mac(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """A device claiming the camera's MAC over DHCP, whose link MAC differs, is never asked."""
    async with _onvif_camera(host="127.0.0.2", mac="02:00:00:aa:bb:99", serial="X") as impostor:
        old = _onvif_entry_at("127.0.0.3", impostor.http_port, 554)
        old.add_to_hass(hass)
        # The kernel's neighbour entry for the new address: the impostor's own MAC.
        result = await _dhcp(hass, "127.0.0.2", link_mac="02:00:00:aa:bb:99")
        assert result["reason"] == "already_configured"
        assert old.data[CONF_HOST] == "127.0.0.3"
        assert impostor.stats.onvif_requests == 0  # not one SOAP call, so no WS-Security digest


async def test_dhcp_sends_no_credential_when_following_a_url_camera(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Following a camera added by URL takes its link MAC only: the device hears not a byte."""
    heard: list[bytes] = []

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            heard.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(listen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        entry = MockConfigEntry(
            domain=DOMAIN,
            unique_id=MAC,
            data={
                CONF_STREAM_URL: f"rtsp://127.0.0.9:{port}/stream",
                CONF_USERNAME: CAM_USER,
                CONF_PASSWORD: CAM_PASSWORD,
                CONF_IDENTITY: {"mac": MAC},
                CONF_CAMERA_ID: MAC,
            },
        )
        entry.add_to_hass(hass)
        result = await _dhcp(hass, "127.0.0.1", link_mac="02:00:00:aa:bb:99")
        assert result["reason"] == "already_configured"
        assert entry.data[CONF_STREAM_URL].startswith("rtsp://127.0.0.9:")  # not moved
        for _ in range(50):  # bounded: the connection's end reaches the server
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [b""]  # connected, then closed, nothing sent
    finally:
        server.close()
        await server.wait_closed()


async def test_dhcp_follows_a_url_camera_by_neighbour_mac(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A URL camera moves when the kernel's neighbour entry proves the MAC.

    Its old address (127.0.0.9, loopback) no longer answers: a move, not a second device.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.9"])
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    moved_url = camera.rtsp_url.replace("127.0.0.1", "127.0.0.9")
    hass.config_entries.async_update_entry(
        entry,
        data={
            **entry.data,
            CONF_IDENTITY: {"mac": MAC},
            CONF_STREAM_URL: moved_url,
            "snapshot_url": None,
        },
    )
    result = await _dhcp(hass, "127.0.0.1", link_mac=MAC)
    assert result["reason"] == "already_configured"
    assert entry.data[CONF_STREAM_URL] == camera.rtsp_url


async def test_dhcp_does_not_move_a_camera_that_still_answers_with_its_mac(
    hass: HomeAssistant, camera: VirtualCamera, loopback_hosts: None
) -> None:
    """One MAC at two addresses (a repeater's own, on all its clients): not a move.

    DHCP reports the camera's MAC at another address, where another camera
    answers and the link shows that MAC too; the camera itself still answers
    at its own address with it. Moving there would show the other camera.
    """
    other = VirtualCamera(camera_config("other", 3, host="127.0.0.2", rtsp_port=camera.rtsp_port))
    await other.start()
    try:
        entry = make_entry(camera)
        entry.add_to_hass(hass)
        hass.config_entries.async_update_entry(
            entry, data={**entry.data, CONF_IDENTITY: {"mac": MAC}}
        )
        result = await _dhcp(hass, "127.0.0.2", link_mac=MAC)
        assert result["reason"] == "already_configured"
        assert entry.data[CONF_STREAM_URL] == camera.rtsp_url
        # Once the camera no longer answers at its address, the same report moves it.
        await camera.stop()
        result = await _dhcp(hass, "127.0.0.2", link_mac=MAC)
        assert result["reason"] == "already_configured"
        assert entry.data[CONF_STREAM_URL] == other.rtsp_url
    finally:
        await other.stop()


async def test_following_moves_only_the_camera_s_own_urls(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The stream moves with the camera; a still URL on another device (an NVR) stays."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.9"])  # its old address
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    nvr_still = "http://127.0.0.5:8080/nvr/snap.jpg"
    hass.config_entries.async_update_entry(
        entry,
        data={
            **entry.data,
            CONF_IDENTITY: {"mac": MAC},
            CONF_STREAM_URL: camera.rtsp_url.replace("127.0.0.1", "127.0.0.9"),
            "snapshot_url": nvr_still,
        },
    )
    await _dhcp(hass, "127.0.0.1", link_mac=MAC)
    assert entry.data[CONF_STREAM_URL] == camera.rtsp_url
    assert entry.data["snapshot_url"] == nvr_still


async def test_a_camera_configured_by_name_is_left_to_dns(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A DHCP address for a camera configured by host name does not rewrite it to an address."""
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    by_name = camera.rtsp_url.replace("127.0.0.1", "localhost")
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": MAC}, CONF_STREAM_URL: by_name}
    )
    result = await _dhcp(hass, "127.0.0.1", link_mac=MAC)
    assert result["reason"] == "already_configured"
    assert entry.data[CONF_STREAM_URL] == by_name


async def test_onvif_camera_without_profiles(hass: HomeAssistant, socket_enabled: None) -> None:
    """A camera reporting no media profile gets no_video, not a crash."""
    async with _onvif_camera(profiles=()) as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["errors"] == {"base": "no_video"}


async def test_camera_reporting_only_public_addresses(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Stream addresses outside the LAN are refused by name, never fetched."""
    async with _onvif_camera(reported_host="203.0.113.9") as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
        assert result["errors"] == {CONF_HOST: "not_local"}
        assert result["description_placeholders"]["host"] == "203.0.113.9"


async def test_repair_when_the_camera_starts_reporting_a_public_address(
    hass: HomeAssistant, onvif_camera: VirtualCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured camera that later reports outside addresses gets a repair issue.

    (At the health check's whole read, every quarter hour: here at every check.)
    """
    monkeypatch.setattr("custom_components.localcam.WHOLE_READ_INTERVAL", 0.0)
    flow_id = await _onvif_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(onvif_camera))
    entry = result["result"]
    await hass.async_block_till_done()
    issue_id = f"uri_not_local_{entry.entry_id}"
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
    onvif_camera.config.reported_host = "203.0.113.9"
    await entry.runtime_data.coordinator.async_refresh()
    issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.translation_placeholders is not None
    assert "203.0.113.9" in issue.translation_placeholders["uri"]
    onvif_camera.config.reported_host = None
    await entry.runtime_data.coordinator.async_refresh()
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None


UUID = "2419d68a-2dd2-21b2-a205-ec4f9e2a2b01"


async def _ws_discovered(
    hass: HomeAssistant, host: str, port: int, *, link_mac: str | None = None
) -> ConfigFlowResult:
    """WS-Discovery heard UUID (no MAC scope) at ``host``; the link shows ``link_mac``."""
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=link_mac):
        return await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_INTEGRATION_DISCOVERY},
            data={"host": host, "port": port, "uuid": UUID, "name": "Cam"},
        )


def _with_identity(entry: MockConfigEntry, **identity: str) -> MockConfigEntry:
    """The same entry, storing ``identity``."""
    return MockConfigEntry(
        domain=DOMAIN, unique_id=entry.unique_id, data={**entry.data, CONF_IDENTITY: identity}
    )


async def test_follow_refuses_a_device_that_repeats_only_broadcast_fields(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """No MAC on the link: a device that reports only the camera's UUID is not moved to.

    The UUID is in every WS-Discovery reply the camera sends, so any device on
    the LAN can repeat it; following needs every stored field, the serial too.
    """
    async with _onvif_camera(host="127.0.0.2", mac=None, serial=None, device_uuid=UUID) as impostor:
        at_old = _onvif_entry_at("127.0.0.3", impostor.http_port, impostor.rtsp_port)
        entry = _with_identity(at_old, mac=MAC, serial=SERIAL, uuid=UUID)
        entry.add_to_hass(hass)
        result = await _ws_discovered(hass, "127.0.0.2", impostor.http_port)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        assert entry.data[CONF_HOST] == "127.0.0.3"
        assert entry.data[CONF_STREAM_URL].startswith("rtsp://127.0.0.3:")


async def test_an_announcement_elsewhere_gets_nothing_while_the_camera_is_at_home(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """No MAC on the link: the camera is asked at its own address before anyone else.

    Anyone on the LAN can announce the camera's UUID at an address of their
    own. Asked who it is, such a device got the camera's credentials (a
    WS-Security digest, open to replay and offline guessing) at every
    announcement. While the camera answers at home as itself, it has not
    moved: the announcer is sent nothing.
    """
    async with (
        _onvif_camera(host="127.0.0.1", device_uuid=UUID) as camera,
        _onvif_camera(
            host="127.0.0.2",
            mac=None,
            serial=None,
            device_uuid=UUID,
            password="not-the-camera-s",
            http_port=camera.http_port,
            rtsp_port=camera.rtsp_port,
        ) as announcer,
    ):
        home = _onvif_entry_at("127.0.0.1", camera.http_port, camera.rtsp_port)
        entry = _with_identity(home, serial=SERIAL, uuid=UUID)
        entry.add_to_hass(hass)
        result = await _ws_discovered(hass, "127.0.0.2", announcer.http_port)
        assert (result["type"], result["reason"]) == (
            FlowResultType.ABORT,
            "already_configured",
        )
        assert announcer.stats.credentialed_requests == 0
        assert camera.stats.credentialed_requests > 0  # asked at home, as a check does
        assert entry.data[CONF_HOST] == "127.0.0.1"
        # Gone from home: only then is the announced address asked (and,
        # repeating the UUID alone, not followed: see the test above).
        await camera.stop()
        result = await _ws_discovered(hass, "127.0.0.2", announcer.http_port)
        assert result["reason"] == "already_configured"
        assert announcer.stats.credentialed_requests > 0
        assert entry.data[CONF_HOST] == "127.0.0.1"


async def test_an_announcement_from_an_address_where_nothing_answers_moves_nothing(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """A camera pinned by MAC announced where nothing listens: nothing to follow, nothing sent."""
    async with _onvif_camera(host="127.0.0.1", device_uuid=UUID) as camera:
        home = _onvif_entry_at("127.0.0.1", camera.http_port, camera.rtsp_port)
        entry = _with_identity(home, mac=MAC, serial=SERIAL, uuid=UUID)
        entry.add_to_hass(hass)
        result = await _ws_discovered(hass, "127.0.0.3", camera.http_port)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        assert entry.data[CONF_HOST] == "127.0.0.1"


async def test_follow_by_link_mac_asks_the_device_nothing(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """The link shows the camera's MAC at the new address: moved, without one SOAP request."""
    async with _onvif_camera(host="127.0.0.2") as cam:
        old = _onvif_entry_at("127.0.0.3", cam.http_port, cam.rtsp_port)
        old.add_to_hass(hass)
        result = await _dhcp(hass, "127.0.0.2", link_mac=MAC)
        assert result["reason"] == "already_configured"
        assert old.data[CONF_HOST] == "127.0.0.2"
        assert cam.stats.onvif_requests == 0


async def test_a_second_camera_with_the_same_firmware_uuid_is_offered(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """Cheap cameras share a firmware-default UUID: B, shown to be another device, is offered.

    A stays where it is, and B is not swallowed as "already configured".
    """
    other_mac = "02:00:00:aa:bb:99"
    async with _onvif_camera(host="127.0.0.2", mac=other_mac, serial="B", device_uuid=UUID) as b:
        at_old = _onvif_entry_at("127.0.0.3", b.http_port, 554)
        a = _with_identity(at_old, mac=MAC, serial=SERIAL, uuid=UUID)
        a.add_to_hass(hass)
        result = await _ws_discovered(hass, "127.0.0.2", b.http_port, link_mac=other_mac)
        assert (result["type"], result["step_id"]) == (FlowResultType.FORM, "discovery_confirm")
        assert a.data[CONF_HOST] == "127.0.0.3"
        assert b.stats.onvif_requests == 0  # the link MAC told them apart


async def test_a_configured_camera_announcing_a_field_its_entry_lacks_is_not_offered(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Same address, no field in common, none differing: the configured camera itself.

    An ONVIF camera without GetEndpointReference stores MAC and serial, yet
    announces a UUID; a camera added by URL stores only its link MAC.
    """
    onvif = _onvif_entry_at("192.168.1.20", 80, 554)
    onvif.add_to_hass(hass)
    result = await _ws_discovered(hass, "192.168.1.20", 80)
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    by_url = make_entry(camera)
    by_url.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        by_url, data={**by_url.data, CONF_IDENTITY: {"mac": "02:00:00:aa:bb:02"}}
    )
    result = await _ws_discovered(hass, "127.0.0.1", 80)
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")


def _suggested(result: Any, field: str) -> Any:
    """The value a form shows in ``field`` before the user types anything."""
    for key in result["data_schema"].schema:
        if key == field:
            return (key.description or {}).get("suggested_value")
    raise KeyError(field)


async def test_scan_lists_a_camera_on_an_allowed_vpn_network(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera reporting a VPN address is listed only once its network is allowed.

    The ONVIF form it leads to opens with that network, so the camera passes
    the same policy there. Probes go to 127.0.0.1 only; the VPN address is
    only read from the reply, never contacted.
    """
    async with _onvif_camera(wsdiscovery_port=0, reported_xaddr_host="100.64.0.7") as cam:
        result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"next_step_id": "scan"}
        )
        flow_id = result["flow_id"]
        assert _suggested(result, CONF_ALLOWED_NETWORKS) is None
        # Hosts typed in pass the same policy (the scan itself is not run:
        # it would send a probe to 100.64.0.7).
        vpn_host = {CONF_HOSTS: "100.64.0.7"}
        with patch("custom_components.localcam.config_flow.async_scan", return_value=[]) as scan:
            result = await hass.config_entries.flow.async_configure(flow_id, vpn_host)
            assert result["errors"] == {CONF_HOSTS: "not_local"}
            scan.assert_not_called()
            result = await hass.config_entries.flow.async_configure(
                flow_id, {**vpn_host, CONF_ALLOWED_NETWORKS: "100.64.0.0/10"}
            )
            assert result["errors"] == {"base": "no_devices_found"}
            assert scan.call_args.args[1] == ["100.64.0.7"]
        probe = {CONF_HOSTS: "127.0.0.1"}
        with patch("custom_components.localcam.discovery.WSD_DISCOVERY_PORT", cam.wsdiscovery_port):
            result = await hass.config_entries.flow.async_configure(flow_id, probe)
            assert result["errors"] == {"base": "no_devices_found"}  # its address: not LAN
            result = await hass.config_entries.flow.async_configure(
                flow_id, {**probe, CONF_ALLOWED_NETWORKS: "not-a-network"}
            )
            assert result["errors"] == {CONF_ALLOWED_NETWORKS: "invalid_networks"}
            result = await hass.config_entries.flow.async_configure(
                flow_id, {**probe, CONF_ALLOWED_NETWORKS: "100.64.0.0/10"}
            )
        assert result["step_id"] == "pick"
        options = result["data_schema"].schema["device"].config["options"]
        assert [option["value"] for option in options] == [f"100.64.0.7:{cam.http_port}"]
        result = await hass.config_entries.flow.async_configure(
            flow_id, {"device": options[0]["value"]}
        )
        assert result["step_id"] == "onvif"
        assert _suggested(result, CONF_HOST) == "100.64.0.7"
        assert _suggested(result, CONF_ALLOWED_NETWORKS) == "100.64.0.0/10"


async def _resolve_names(host: str, port: int) -> list[str]:
    """A LAN's DNS: cam.lan is the loopback camera; other names do not resolve."""
    if host == "cam.lan":
        return ["not-an-address", "fe80::1%eth0", "127.0.0.1"]
    raise OSError(f"{host}: name not known")


@pytest.mark.parametrize("known_by", ["address", "uuid", "name", "unresolved name"])
async def test_scan_leaves_out_a_configured_camera(
    hass: HomeAssistant, onvif_camera: VirtualCamera, known_by: str
) -> None:
    """The scan's list leaves out a configured camera at its own address, not a UUID elsewhere.

    By address even when the entry holds no UUID (a camera without
    GetEndpointReference), also when the entry names the camera by a host
    name that resolves to that address. A device announcing the entry's
    UUID at another address is listed: cheap cameras share firmware-default
    UUIDs, so it may be a second camera (one that moved is followed by the
    background discovery, and picking it again ends as already configured).
    """
    if known_by == "address":
        entry = _onvif_entry_at("127.0.0.1", onvif_camera.http_port, onvif_camera.rtsp_port)
    elif known_by.endswith("name"):
        host = "cam.lan" if known_by == "name" else "gone.lan"
        entry = _onvif_entry_at(host, onvif_camera.http_port, onvif_camera.rtsp_port)
    else:
        at_old = _onvif_entry_at("192.168.1.20", 80, 554)
        entry = _with_identity(at_old, mac=MAC, serial=SERIAL, uuid=onvif_camera.device_uuid)
    entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "scan"}
    )
    with (
        patch(
            "custom_components.localcam.discovery.WSD_DISCOVERY_PORT",
            onvif_camera.wsdiscovery_port,
        ),
        patch("custom_components.localcam.helpers.system_resolve", _resolve_names),
    ):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_HOSTS: "127.0.0.1"}
        )
    if known_by in ("address", "name"):
        assert result["errors"] == {"base": "no_devices_found"}
    else:
        assert result["step_id"] == "pick"


async def test_camera_reporting_an_invalid_idna_host_gets_a_translated_error(
    hass: HomeAssistant, socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Stream URIs on "xn--a" (no valid IDNA): refused, and shown as a translated error.

    Before: "unknown" and a traceback, as the flow parsed the refused URI again
    and yarl's .host raised UnicodeDecodeError on the label.
    """
    async with _onvif_camera(reported_host="xn--a") as cam:
        flow_id = await _onvif_form(hass)
        result = await hass.config_entries.flow.async_configure(flow_id, _onvif_input(cam))
    assert result["errors"] == {CONF_HOST: "not_local"}
    assert result["description_placeholders"]["host"] == "xn--a"
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


async def test_a_camera_configured_by_name_is_recognised_at_its_address(
    hass: HomeAssistant,
) -> None:
    """An announcement at the address a configured camera's host name resolves to is that camera.

    The entry stores the camera's MAC and serial, never the UUID that
    WS-Discovery announces: without the name's address, the camera was
    offered again under Discovered as a new one.
    """
    entry = _with_identity(_onvif_entry_at("cam.lan", 8000, 554), mac=MAC, serial=SERIAL)
    entry.add_to_hass(hass)

    async def resolve(host: str, port: int) -> list[str]:
        return {"cam.lan": ["192.168.1.40", "fd00::40"]}.get(host, [])

    with patch("custom_components.localcam.helpers.system_resolve", resolve):
        result = await _ws_discovered(hass, "192.168.1.40", 8000)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        assert entry.data[CONF_HOST] == "cam.lan"
        # Another address is another device: offered.
        result = await _ws_discovered(hass, "192.168.1.41", 8000)
        assert result["type"] is FlowResultType.FORM
        assert result["step_id"] == "discovery_confirm"


async def test_name_lookups_run_side_by_side_and_bound_the_flow(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DNS hanging, an announcement waits NAME_LOOKUP_TIMEOUT once, not once per camera.

    Five cameras configured by name: their lookups run together, so a new
    camera's offer is made after one timeout (it was five, one after another).
    """
    monkeypatch.setattr("custom_components.localcam.helpers.NAME_LOOKUP_TIMEOUT", 0.3)
    for octet in range(10, 15):
        named = _onvif_entry_at(f"cam{octet}.lan", 8000, 554)
        MockConfigEntry(
            domain=DOMAIN, unique_id=f"cam{octet}", data={**named.data, CONF_IDENTITY: {}}
        ).add_to_hass(hass)
    in_flight = peak = 0

    async def hanging(host: str, port: int) -> list[str]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.Event().wait()
        finally:
            in_flight -= 1
        return []

    monkeypatch.setattr("custom_components.localcam.helpers.system_resolve", hanging)
    started = time.monotonic()
    result = await _ws_discovered(hass, "192.168.1.77", 8000)
    assert result["type"] is FlowResultType.FORM
    assert peak == 5
    assert time.monotonic() - started < 2 * 0.3


MAC_A = "02:00:00:aa:bb:01"


@pytest.mark.parametrize(
    "identity_b",
    [{}, {"serial": "SN-B", "uuid": "uuid-b"}],
    ids=["b_pinned_by_url", "b_pinned_by_serial"],
)
async def test_dhcp_follows_a_camera_to_an_address_a_mac_less_entry_held(
    hass: HomeAssistant, camera: VirtualCamera, identity_b: dict[str, Any]
) -> None:
    """A (pinned by MAC) takes the address B's entry names; B's entry holds no MAC.

    DHCP reports A's MAC at that address and the link shows A's MAC there: A's
    entry must move. B's entry, which holds no MAC, says nothing about a MAC
    announcement; it must not swallow A's move as "B, already configured"
    just because it is listed first.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.9"])
    # B: configured at 127.0.0.1 (where A answers now), listed first.
    data_b = {
        **entry_data(camera),
        CONF_IDENTITY: identity_b,
        CONF_CAMERA_ID: "camera_b",
        CONF_SNAPSHOT_URL: None,
    }
    entry_b = MockConfigEntry(domain=DOMAIN, title="B", unique_id="camera_b", data=data_b)
    entry_b.add_to_hass(hass)
    # A: pinned by its MAC, configured at its old address 127.0.0.9 (nothing answers there).
    data_a = {
        **entry_data(camera),
        CONF_IDENTITY: {"mac": MAC_A},
        CONF_STREAM_URL: camera.rtsp_url.replace("127.0.0.1", "127.0.0.9"),
        CONF_SNAPSHOT_URL: None,
    }
    entry_a = MockConfigEntry(domain=DOMAIN, title="A", unique_id=MAC_A, data=data_a)
    entry_a.add_to_hass(hass)
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=MAC_A):
        result = await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_DHCP},
            data=DhcpServiceInfo(ip="127.0.0.1", hostname="a", macaddress=MAC_A.replace(":", "")),
        )
    assert result["reason"] == "already_configured"
    assert entry_a.data[CONF_STREAM_URL] == camera.rtsp_url  # A followed its camera
    assert entry_b.data[CONF_STREAM_URL] == camera.rtsp_url  # B untouched


async def test_an_announcement_another_camera_s_entry_contradicts_is_offered(
    hass: HomeAssistant,
) -> None:
    """An entry whose MAC differs from the one announced is neither followed nor a match.

    Since confirming entries are handled first, no test walked the second
    loop past an entry that differs from the announcement (714->710): every
    test with such an entry also had a confirming one, which aborts first.
    """
    MockConfigEntry(
        domain=DOMAIN,
        unique_id="02:00:00:00:00:0a",
        data={
            CONF_STREAM_URL: "rtsp://192.168.1.10:554/stream",
            CONF_CAMERA_ID: "cam10",
            CONF_IDENTITY: {"mac": "02:00:00:00:00:0a"},
        },
    ).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_DHCP},
        data=DhcpServiceInfo(ip="192.168.1.30", hostname="cam", macaddress="02000000000b"),
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "discovery_confirm"


async def test_a_camera_without_serial_sends_no_credential_to_an_announcer(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """No serial and no MAC on the link: no announcer can ever prove the move.

    ``Identity.proves_move`` needs the serial when the link shows no MAC
    (routed, IPv6). A camera whose ONVIF report has none (cheap firmware)
    can never be followed by asking; yet each announcement of its UUID at
    another address (anyone on the LAN can send one, every background scan)
    got the camera's credentials as a WS-Security digest, and the camera at
    home was never found "at home" (that check too needs the serial).
    """
    async with (
        _onvif_camera(host="127.0.0.1", serial=None, device_uuid=UUID) as camera,
        _onvif_camera(
            host="127.0.0.2",
            serial=None,
            device_uuid=UUID,
            password="not-the-camera-s",
            http_port=camera.http_port,
            rtsp_port=camera.rtsp_port,
        ) as announcer,
    ):
        home = _onvif_entry_at("127.0.0.1", camera.http_port, camera.rtsp_port)
        entry = _with_identity(home, mac=MAC, uuid=UUID)
        entry.add_to_hass(hass)
        result = await _ws_discovered(hass, "127.0.0.2", announcer.http_port)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        assert entry.data[CONF_HOST] == "127.0.0.1"
        assert announcer.stats.credentialed_requests == 0
        # Gone from home: still nothing to prove a move with, nothing sent.
        await camera.stop()
        result = await _ws_discovered(hass, "127.0.0.2", announcer.http_port)
        assert result["reason"] == "already_configured"
        assert entry.data[CONF_HOST] == "127.0.0.1"
        assert announcer.stats.credentialed_requests == 0


async def test_an_onvif_camera_typed_with_another_ipv6_spelling_is_not_offered_again(
    hass: HomeAssistant,
) -> None:
    """An ONVIF host is stored as typed: "FD00:0::5" is the address discovery calls fd00::5.

    The configured camera, announcing a UUID its entry does not hold (no
    GetEndpointReference), was taken for a new camera at "another" address
    and offered at every scan; nothing is sent to anyone here.
    """
    entry = _with_identity(_onvif_entry_at("FD00:0::5", 80, 554), mac=MAC, serial="S1")
    entry.add_to_hass(hass)
    result = await _ws_discovered(hass, "fd00::5", 80)
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")


def test_an_onvif_camera_typed_with_another_ipv6_spelling_moves_with_its_streams() -> None:
    """Following such a camera moved its host but left its streams at the old address."""
    stream = "rtsp://[fd00::5]:554/ch1"
    data = {
        CONF_HOST: "FD00:0::5",
        CONF_ONVIF: True,
        CONF_STREAM_URL: stream,
        CONF_PROFILES: [
            {"token": "ch1", "stream_url": stream},
            {"token": "ch2", "stream_url": "rtsp://[fd00::5]:554/ch2"},
        ],
    }
    moved = config_flow._with_host(data, "fd00::6")
    assert moved[CONF_STREAM_URL] == "rtsp://[fd00::6]:554/ch1"
    assert [p["stream_url"] for p in moved[CONF_PROFILES]] == [
        "rtsp://[fd00::6]:554/ch1",
        "rtsp://[fd00::6]:554/ch2",
    ]
    device = replace(DEVICE, host="fd00::5", xaddrs=("http://[fd00::5]/onvif/device_service",))
    entry = MockConfigEntry(domain=DOMAIN, data={**data, CONF_IDENTITY: {}})
    assert device_is_configured(entry, device)


async def test_an_mdns_announcement_naming_loopback_gets_no_credential(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """HA's zeroconf passes on any A record but link-local: an mDNS reply may name 127.0.0.1.

    Any host on the LAN can announce _axis-video._tcp with the camera's MAC
    (it is in every WS-Discovery reply) and 127.0.0.1 as its address. With
    the camera away from its own address, LocalCam asked this machine's own
    service on the camera's ONVIF port who it is, with the camera's
    credentials; WS-Discovery replies may not name loopback for that reason
    (core.wsdiscovery._xaddr), and HA's DHCP drops loopback addresses.
    """
    async with _onvif_camera(host="127.0.0.1", password="a-local-service-s") as local:
        # The camera, pinned by MAC and serial, is gone from 127.0.0.3.
        entry = _onvif_entry_at("127.0.0.3", local.http_port, local.rtsp_port)
        entry.add_to_hass(hass)
        result = await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_ZEROCONF},
            data=_axis_announcement("127.0.0.1", MAC.replace(":", "")),
        )
        assert result["type"] is FlowResultType.ABORT
        assert entry.data[CONF_HOST] == "127.0.0.3"
        assert local.stats.credentialed_requests == 0


async def test_an_mdns_announcement_naming_loopback_is_not_offered_as_a_camera(
    hass: HomeAssistant, loopback_hosts: None
) -> None:
    """A loopback announcement naming a configured camera's MAC is no offer either.

    The camera's entry is keyed by its serial (its MAC became known later, as
    after a re-pin): the announcement's MAC-keyed unique id is no entry's.
    """
    async with _onvif_camera(host="127.0.0.1", password="a-local-service-s"):
        pinned = _onvif_entry_at("127.0.0.3", 80, 554)
        entry = MockConfigEntry(domain=DOMAIN, unique_id=f"serial_{SERIAL}", data=dict(pinned.data))
        entry.add_to_hass(hass)
        result = await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_ZEROCONF},
            data=_axis_announcement("127.0.0.1", MAC.replace(":", "")),
        )
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "already_configured"
        assert entry.data[CONF_HOST] == "127.0.0.3"


async def _ws_discovery(hass: HomeAssistant, host: str, uuid: str) -> Any:
    return await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": SOURCE_INTEGRATION_DISCOVERY},
        data={"host": host, "port": 80, "name": "cam", "uuid": uuid},
    )


def _flows(hass: HomeAssistant) -> set[str]:
    return {f["flow_id"] for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)}


async def test_an_onvif_offer_ends_only_the_rtsp_offer_at_its_own_address(
    hass: HomeAssistant,
) -> None:
    """192.168.1.3's ONVIF offer is not 192.168.1.33's; an IPv6 camera's RTSP offer gives way."""
    rtsp33 = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("192.168.1.33")
    )
    assert rtsp33["step_id"] == "discovery_confirm"
    await _ws_discovery(hass, "192.168.1.3", "urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000103")
    assert rtsp33["flow_id"] in _flows(hass)
    rtsp6 = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_ZEROCONF}, data=_rtsp_announcement("2001:db8::33")
    )
    assert rtsp6["step_id"] == "discovery_confirm"
    onvif6 = await _ws_discovery(
        hass, "2001:db8::33", "urn:uuid:5f5a69c2-e0ae-504f-829b-00408c000133"
    )
    assert onvif6["step_id"] == "discovery_confirm"
    assert rtsp6["flow_id"] not in _flows(hass)
    assert rtsp33["flow_id"] in _flows(hass)
