"""One device, several streams: an NVR's channels or a restream's ports, each added by its URL.

Two virtual cameras on 127.0.0.1 play the two streams of one device: the
kernel's neighbour table (patched, the edge LocalCam does not own) shows
the same MAC for both. Each stream gets its own entry, its own device and
its own frames; the same stream twice is refused; a move of the device
moves every one of its entries.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import patch

from homeassistant.components.camera import async_get_image
from homeassistant.config_entries import (
    SOURCE_DHCP,
    SOURCE_IGNORE,
    SOURCE_RECONFIGURE,
    SOURCE_USER,
    ConfigEntry,
    ConfigEntryState,
    ConfigFlowResult,
)
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_PORT, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import (
    device_registry as dr,
    entity_registry as er,
    issue_registry as ir,
)
from homeassistant.helpers.service_info.dhcp import DhcpServiceInfo
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_ONVIF,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DOMAIN,
)
from custom_components.localcam.core.netpolicy import stream_channel
from virtualcam import VirtualCamera

from .conftest import CAM_PASSWORD, CAM_USER, camera_config, camera_shown

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")

MAC = "02:00:00:aa:bb:01"


def test_stream_channel_names_the_stream_not_the_host() -> None:
    """The same stream at another address is the same channel; another path or port is not."""
    channel = stream_channel("rtsp://192.168.1.20:554/ch1?subtype=0")
    assert stream_channel("rtsp://192.168.1.77/ch1?subtype=0") == channel  # moved, default port
    assert stream_channel("rtsp://u:secret@192.168.1.20:554/ch1?subtype=0") == channel
    assert stream_channel("rtsp://192.168.1.20:554/ch1?password=x&subtype=0") == channel
    assert stream_channel("rtsp://192.168.1.20:554/ch2?subtype=0") != channel
    assert stream_channel("rtsp://192.168.1.20:8554/ch1?subtype=0") != channel
    assert stream_channel("rtsp://192.168.1.20:554/ch1?subtype=1") != channel
    assert len(channel) == 16


def _form(cam: VirtualCamera) -> dict[str, Any]:
    """The URL form's fields for ``cam`` (its snapshot URL only where it has one)."""
    values = {
        CONF_STREAM_URL: cam.rtsp_url,
        CONF_USERNAME: CAM_USER,
        CONF_PASSWORD: CAM_PASSWORD,
        CONF_VERIFY_SSL: True,
    }
    return values | ({CONF_SNAPSHOT_URL: cam.snapshot_url} if cam.config.http_snapshot else {})


async def _add_by_url(hass: HomeAssistant, cam: VirtualCamera, mac: str = MAC) -> Any:
    """The URL form of the add flow, with ``mac`` in the neighbour table for the camera."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=mac):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(cam))
    await hass.async_block_till_done()
    return result


async def _reconfigure(hass: HomeAssistant, entry: ConfigEntry) -> ConfigFlowResult:
    """Open the reconfigure flow of ``entry``."""
    return await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_RECONFIGURE, "entry_id": entry.entry_id}
    )


async def _shows(hass: HomeAssistant, entry: ConfigEntry) -> int:
    """The palette index of the picture the entry's main camera entity shows."""
    entity_id = er.async_get(hass).async_get_entity_id(
        "camera", DOMAIN, f"{entry.data[CONF_CAMERA_ID]}_main"
    )
    assert entity_id is not None, entry.title
    return camera_shown((await async_get_image(hass, entity_id)).content, 8)


def _cam(index: int, host: str = "127.0.0.1") -> VirtualCamera:
    """Another virtual camera, in palette colour ``index``, without a snapshot URL."""
    return VirtualCamera(camera_config(f"cam{index}", index, host=host, http_snapshot=False))


def _stream_entry(hass: HomeAssistant, url: str, unique_id: str, title: str = "") -> ConfigEntry:
    """An entry for the stream at ``url`` of the device MAC (not set up)."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=unique_id,
        title=title or unique_id,
        data={
            CONF_STREAM_URL: url,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: CAM_PASSWORD,
            CONF_IDENTITY: {"mac": MAC},
            CONF_CAMERA_ID: unique_id,
        },
    )
    entry.add_to_hass(hass)
    return entry


def _streams_at(hass: HomeAssistant, cams: list[VirtualCamera], host: str) -> list[ConfigEntry]:
    """Entries for ``cams`` as the streams of the device MAC, configured at ``host``."""
    urls = [cam.rtsp_url.replace("127.0.0.1", host) for cam in cams]
    return [
        _stream_entry(
            hass, url, MAC if n == 0 else f"{MAC}_{stream_channel(url)}", f"stream {n + 1}"
        )
        for n, url in enumerate(urls)
    ]


async def _dhcp(hass: HomeAssistant, link_mac: str) -> ConfigFlowResult:
    """DHCP reports the device MAC at 127.0.0.1; the neighbour table there shows ``link_mac``."""
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=link_mac):
        return await hass.config_entries.flow.async_init(
            DOMAIN,
            context={"source": SOURCE_DHCP},
            data=DhcpServiceInfo(ip="127.0.0.1", hostname="x", macaddress=MAC.replace(":", "")),
        )


@asynccontextmanager
async def _onvif_device() -> AsyncIterator[VirtualCamera]:
    """The device MAC as an ONVIF camera (serial VC-0001, colour 2); stopped after."""
    cam = VirtualCamera(camera_config("door", 2, onvif=True, serial="VC-0001", mac=MAC))
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


async def _add_over_onvif(hass: HomeAssistant, cam: VirtualCamera) -> ConfigFlowResult:
    """The ONVIF form of the add flow, for ``cam`` at 127.0.0.1."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "onvif"}
    )
    return await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {
            CONF_HOST: "127.0.0.1",
            CONF_PORT: cam.http_port,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: CAM_PASSWORD,
            CONF_VERIFY_SSL: True,
        },
    )


async def test_each_stream_of_a_device_is_an_entry_of_its_own(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """A second stream of a configured device is added, with its own id, device and frames."""
    first = await _add_by_url(hass, camera)
    assert first["type"] is FlowResultType.CREATE_ENTRY
    second = await _add_by_url(hass, rtsp_only_camera)
    assert second["type"] is FlowResultType.CREATE_ENTRY
    main: ConfigEntry = first["result"]
    extra: ConfigEntry = second["result"]
    assert main.unique_id == MAC
    assert extra.unique_id == f"{MAC}_{stream_channel(rtsp_only_camera.rtsp_url)}"
    assert extra.data[CONF_CAMERA_ID] == extra.unique_id
    assert extra.data[CONF_IDENTITY] == {"mac": MAC}
    assert extra.title == f"{main.title.split(':')[0]}:{rtsp_only_camera.rtsp_port} (2)"

    # Each entry shows its own stream's pictures: colour 0 and colour 1.
    assert [await _shows(hass, main), await _shows(hass, extra)] == [0, 1]

    # A device per entry, each holding the MAC, so HA's DHCP watcher reports
    # a move of the camera for every one of its streams.
    devices = dr.async_get(hass).async_get_devices(connections={(dr.CONNECTION_NETWORK_MAC, MAC)})
    assert {(device.config_entry_id, frozenset(device.identifiers)) for device in devices} == {
        (main.entry_id, frozenset({(DOMAIN, MAC)})),
        (extra.entry_id, frozenset({(DOMAIN, extra.unique_id)})),
    }

    # The same stream again is refused, whichever entry holds it.
    for cam in (camera, rtsp_only_camera):
        again = await _add_by_url(hass, cam)
        assert (again["type"], again["reason"]) == (FlowResultType.ABORT, "already_configured")
    assert len(hass.config_entries.async_entries(DOMAIN)) == 2


async def test_reconfigure_keeps_the_streams_of_a_device_apart(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """A stream cannot be reconfigured onto its sibling's stream; onto a new one it can."""
    main = (await _add_by_url(hass, camera))["result"]
    extra = (await _add_by_url(hass, rtsp_only_camera))["result"]
    result = await _reconfigure(hass, extra)
    with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(camera))
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    assert extra.data[CONF_STREAM_URL] == rtsp_only_camera.rtsp_url

    # With the first entry gone, the second may take its stream, and the
    # device's own id; its frames keep their camera id.
    await hass.config_entries.async_remove(main.entry_id)
    camera_id = extra.data[CONF_CAMERA_ID]
    result = await _reconfigure(hass, extra)
    with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(camera))
    assert result["reason"] == "reconfigure_successful"
    assert extra.unique_id == MAC
    assert extra.data[CONF_CAMERA_ID] == camera_id
    assert extra.data[CONF_STREAM_URL] == camera.rtsp_url


async def test_a_move_of_the_device_moves_every_stream(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """DHCP reports the device at a new address: each of its entries follows it."""
    # The old lease, 127.0.0.3, is loopback too; nothing answers there.
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.3"])
    entries = _streams_at(hass, [camera, rtsp_only_camera], "127.0.0.3")
    result = await _dhcp(hass, MAC)
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    assert [entry.data[CONF_STREAM_URL] for entry in entries] == [
        camera.rtsp_url,
        rtsp_only_camera.rtsp_url,
    ]
    # Both reloaded at the new address, each showing its own stream.
    await hass.async_block_till_done()
    assert [entry.state for entry in entries] == [ConfigEntryState.LOADED] * 2
    assert [await _shows(hass, entry) for entry in entries] == [0, 1]


async def test_an_onvif_device_with_a_stream_added_by_url_is_configured(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Adding over ONVIF a device whose stream was added by URL is refused as configured."""
    async with _onvif_device() as cam:
        # Only a further stream of the device is left (its first entry removed).
        _stream_entry(hass, cam.rtsp_url, f"{MAC}_{stream_channel(cam.rtsp_url)}")
        result = await _add_over_onvif(hass, cam)
        assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
        assert len(hass.config_entries.async_entries(DOMAIN)) == 1


async def test_a_replaced_device_is_trusted_for_each_of_its_streams(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    rtsp_only_camera: VirtualCamera,
) -> None:
    """The repair "another device answers" pins each stream's entry to the new device."""
    assert await async_setup_component(hass, "repairs", {})
    new_mac = "02:00:00:aa:bb:02"
    entries = _streams_at(hass, [camera, rtsp_only_camera], "127.0.0.1")
    # LocalCam loaded (its repairs platform with it), the entries set up; then
    # the device is replaced, and each entry has its repair issue.
    assert await async_setup_component(hass, DOMAIN, {})
    await hass.async_block_till_done()
    for entry in entries:
        ir.async_create_issue(
            hass, DOMAIN, f"identity_mismatch_{entry.entry_id}", is_fixable=True,
            data={"entry_id": entry.entry_id}, severity=ir.IssueSeverity.ERROR,
            translation_key="identity_mismatch",
            translation_placeholders={"host": "127.0.0.1", "name": entry.title},
        )  # fmt: skip
    client = await hass_client()
    for entry in entries:
        resp = await client.post(
            "/api/repairs/issues/fix",
            json={"handler": DOMAIN, "issue_id": f"identity_mismatch_{entry.entry_id}"},
        )
        flow = await resp.json()
        assert (flow["handler"], flow["step_id"]) == (DOMAIN, "confirm")
        # LocalCam's flow, with the issue's address
        assert flow["description_placeholders"] == {"host": "127.0.0.1", "name": entry.title}
        # The device now on the link is the replacement.
        with patch("custom_components.localcam.helpers.neighbour_mac", return_value=new_mac):
            resp = await client.post(f"/api/repairs/issues/fix/{flow['flow_id']}", json={})
            result = await resp.json()
        assert result["type"] == "create_entry", result
    await hass.async_block_till_done()
    assert [entry.data[CONF_IDENTITY] for entry in entries] == [{"mac": new_mac}] * 2
    assert [entry.unique_id for entry in entries] == [
        new_mac,
        f"{new_mac}_{stream_channel(rtsp_only_camera.rtsp_url)}",
    ]
    # Camera ids (the frames' keys) stay as they were.
    assert [entry.data[CONF_CAMERA_ID] for entry in entries] == [
        MAC,
        f"{MAC}_{stream_channel(rtsp_only_camera.rtsp_url)}",
    ]


async def test_a_new_stream_never_takes_a_camera_id_in_use(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """An entry keeps its camera id when its unique id changes; a new entry gets another one."""
    third = _cam(3)
    await third.start()
    try:
        await _add_by_url(hass, camera)
        second = (await _add_by_url(hass, rtsp_only_camera))["result"]
        held = second.data[CONF_CAMERA_ID]
        # The second stream now plays another path: its unique id follows, its camera id stays.
        result = await _reconfigure(hass, second)
        with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
            result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(third))
        assert result["reason"] == "reconfigure_successful"
        await hass.async_block_till_done()
        assert second.unique_id == f"{MAC}_{stream_channel(third.rtsp_url)}"
        assert second.data[CONF_CAMERA_ID] == held
        # The stream it had before, added again: the unique id is free, the camera id is not.
        again = (await _add_by_url(hass, rtsp_only_camera))["result"]
        assert again.unique_id == held
        assert again.data[CONF_CAMERA_ID] != held
        assert again.data[CONF_CAMERA_ID].startswith(f"{held}_")
        # Each shows its own stream, through an entity of its own.
        assert [await _shows(hass, second), await _shows(hass, again)] == [3, 1]
        assert len(er.async_entries_for_config_entry(er.async_get(hass), again.entry_id)) == 1
    finally:
        await third.stop()


async def test_a_stream_at_another_address_is_not_the_same_device(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The same MAC at another address (a repeater that rewrites MACs) is refused, saying where.

    Not "already configured": the form names the address of the device's
    streams, so the user can tell a second name of the same camera from
    another camera behind a repeater (and add that one over ONVIF).
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"])
    other = _cam(4, host="127.0.0.2")
    await other.start()
    try:
        assert (await _add_by_url(hass, camera))["type"] is FlowResultType.CREATE_ENTRY
        result = await _add_by_url(hass, other)
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {CONF_STREAM_URL: "device_elsewhere"}
        assert result["description_placeholders"] == {"host": "127.0.0.1"}
        assert len(hass.config_entries.async_entries(DOMAIN)) == 1
    finally:
        await other.stop()


async def test_another_camera_behind_a_repeater_s_mac_is_added_by_its_url(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Two cameras, two addresses, one MAC answering at both now: the second is keyed by URL.

    A repeater that puts its own MAC on its clients shows it for every camera
    behind it. The first camera still answers at its address with that MAC,
    so the new one did not come from there: it is another device, added
    without a MAC (pinned by its URL only), and it shows its own pictures.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"])
    other = _cam(4, host="127.0.0.2")
    await other.start()
    try:
        first = await _add_by_url(hass, camera)
        assert first["type"] is FlowResultType.CREATE_ENTRY
        with patch("custom_components.localcam.helpers.neighbour_mac", return_value=MAC):
            result = await _add_by_url(hass, other)
        assert result["type"] is FlowResultType.CREATE_ENTRY
        entry = result["result"]
        assert entry.data[CONF_IDENTITY] == {}
        assert entry.unique_id == entry.data[CONF_CAMERA_ID] != MAC
        assert first["result"].data[CONF_IDENTITY] == {"mac": MAC}
        assert [await _shows(hass, first["result"]), await _shows(hass, entry)] == [0, 4]
        # The same camera once more: its URL is configured.
        with patch("custom_components.localcam.helpers.neighbour_mac", return_value=MAC):
            again = await _add_by_url(hass, other)
        assert (again["type"], again["reason"]) == (FlowResultType.ABORT, "already_configured")
    finally:
        await other.stop()


async def test_a_stream_at_the_device_s_host_name_is_refused_saying_where(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A device configured by host name: an address may be that name's, so no second device."""
    _stream_entry(hass, camera.rtsp_url.replace("127.0.0.1", "localhost"), MAC)
    with patch("custom_components.localcam.helpers.neighbour_mac", return_value=MAC):
        result = await _add_by_url(hass, camera)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_STREAM_URL: "device_elsewhere"}
    assert result["description_placeholders"] == {"host": "localhost"}


async def test_a_move_leaves_a_device_at_another_address_alone(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Only the streams at the moved device's old address follow it."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    moved_url = camera.rtsp_url.replace("127.0.0.1", "127.0.0.3")
    # Another device with the same MAC, at another address (entries from before
    # a further stream had to be at its device's address).
    stays_url = "rtsp://127.0.0.2:9/other"
    entries = [
        _stream_entry(hass, moved_url, MAC),
        _stream_entry(hass, stays_url, f"{MAC}_{stream_channel(stays_url)}"),
    ]
    result = await _dhcp(hass, MAC)
    assert result["reason"] == "already_configured"
    assert [entry.data[CONF_STREAM_URL] for entry in entries] == [camera.rtsp_url, stays_url]
    await hass.async_block_till_done()


async def test_a_stream_of_an_onvif_device_is_configured(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A device configured over ONVIF holds all its streams: one by URL is refused."""
    MockConfigEntry(
        domain=DOMAIN,
        unique_id=MAC,
        data={
            CONF_ONVIF: True,
            CONF_HOST: "127.0.0.1",
            CONF_STREAM_URL: "rtsp://127.0.0.1:9/profile1",
            CONF_IDENTITY: {"mac": MAC, "serial": "VC-0001"},
            CONF_CAMERA_ID: MAC,
        },
    ).add_to_hass(hass)
    result = await _add_by_url(hass, camera)
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")


async def test_a_further_stream_is_named_by_the_first_free_number(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """After a removal, a new stream's name does not repeat one in use."""
    base = f"127.0.0.1:{rtsp_only_camera.rtsp_port}"
    # The device's first stream, renamed by its user to what "(2)" would be.
    MockConfigEntry(
        domain=DOMAIN,
        unique_id=MAC,
        title=f"{base} (2)",
        data={
            CONF_STREAM_URL: camera.rtsp_url,
            CONF_IDENTITY: {"mac": MAC},
            CONF_CAMERA_ID: MAC,
        },
    ).add_to_hass(hass)
    result = await _add_by_url(hass, rtsp_only_camera)
    assert result["title"] == f"{base} (3)"


async def test_each_stream_can_be_reconfigured_to_the_device_s_new_address(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """A device given a new fixed address: each stream is reconfigured there, one by one."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.3"])
    entries = _streams_at(hass, [camera, rtsp_only_camera], "127.0.0.3")
    for entry, cam in zip(entries, (camera, rtsp_only_camera), strict=True):
        result = await _reconfigure(hass, entry)
        with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
            result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(cam))
        assert result["reason"] == "reconfigure_successful", entry.title
    assert [entry.data[CONF_STREAM_URL] for entry in entries] == [
        camera.rtsp_url,
        rtsp_only_camera.rtsp_url,
    ]
    await hass.async_block_till_done()


async def test_a_refused_move_moves_no_stream(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """DHCP claims the device's MAC at an address where the link shows another: nothing moves."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.3"])
    entries = _streams_at(hass, [camera, rtsp_only_camera], "127.0.0.3")
    before = [entry.data[CONF_STREAM_URL] for entry in entries]
    await _dhcp(hass, "02:00:00:aa:bb:99")
    assert [entry.data[CONF_STREAM_URL] for entry in entries] == before


async def test_an_onvif_camera_never_takes_a_camera_id_in_use(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A repaired entry keeps its old camera id: that device, added again, gets another."""
    async with _onvif_device() as cam:
        # Once this device's entry; since repaired, it stands for another device.
        MockConfigEntry(
            domain=DOMAIN,
            unique_id="02:00:00:aa:bb:99",
            data={
                CONF_STREAM_URL: "rtsp://127.0.0.1:9/stream",
                CONF_IDENTITY: {"mac": "02:00:00:aa:bb:99"},
                CONF_CAMERA_ID: MAC,
            },
        ).add_to_hass(hass)
        result = await _add_over_onvif(hass, cam)
        assert result["type"] is FlowResultType.CREATE_ENTRY
        assert result["result"].unique_id == MAC
        assert result["data"][CONF_CAMERA_ID].startswith(f"{MAC}_")
        await hass.async_block_till_done()


async def test_reconfigure_never_takes_an_ignored_offer_s_id(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A camera the user chose to ignore holds its id: reconfiguring onto it is refused."""
    MockConfigEntry(domain=DOMAIN, unique_id=MAC, source=SOURCE_IGNORE).add_to_hass(hass)
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id="url_camera",
        data={
            CONF_STREAM_URL: camera.rtsp_url,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: CAM_PASSWORD,
            CONF_CAMERA_ID: "url_camera",
        },
    )
    entry.add_to_hass(hass)
    result = await _reconfigure(hass, entry)
    with patch("custom_components.localcam.config_flow.neighbour_mac", return_value=MAC):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _form(camera))
    assert (result["type"], result["reason"]) == (FlowResultType.ABORT, "already_configured")
    assert entry.unique_id == "url_camera"
