"""Repair fix flow: a camera replaced at its address is trusted only when the user says so."""

import asyncio
from dataclasses import replace
from datetime import timedelta
from http import HTTPStatus
import io
import socket
from typing import Any
from unittest.mock import patch

from freezegun.api import FrozenDateTimeFactory
from homeassistant.components import camera as camera_component
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_PORT, STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import UnknownHandler
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import (
    device_registry as dr,
    entity_registry as er,
    issue_registry as ir,
)
from homeassistant.setup import async_setup_component
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import (
    CONF_IDENTITY,
    CONF_STREAM_URL,
    DEFAULT_SNAPSHOT_MAX_AGE,
    DOMAIN,
    HEALTH_INTERVAL_SECONDS,
)
from custom_components.localcam.helpers import async_link_mac
from custom_components.localcam.repairs import async_create_fix_flow
from virtualcam import VirtualCamera, color_for, nearest_camera

from .conftest import (
    CAM_USER,
    add_onvif_entry,
    make_entry,
    onvif_camera_config,
    setup_entry,
)

HOST = "127.0.0.2"
PALETTE = [color_for(i) for i in range(8)]
OLD, NEW = 1, 2  # palette indexes: the original camera and its replacement


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _camera(index: int, rtsp_port: int, http_port: int) -> VirtualCamera:
    mac = f"02:00:00:00:00:0{index}"
    return VirtualCamera(onvif_camera_config(index, HOST, rtsp_port, http_port, mac))


async def _colour(hass: HomeAssistant, entity_id: str) -> int:
    image = await camera_component.async_get_image(hass, entity_id)
    rgb = Image.open(io.BytesIO(image.content)).convert("RGB")
    pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(pixel, tuple)
    return nearest_camera((pixel[0], pixel[1], pixel[2]), PALETTE)


def _identity_issue(hass: HomeAssistant, entry_id: str, host: str, name: str) -> str:
    """Raise the identity repair issue for an entry, as the health check does; return its id."""
    issue_id = f"identity_mismatch_{entry_id}"
    ir.async_create_issue(
        hass, DOMAIN, issue_id, is_fixable=True, data={"entry_id": entry_id},
        severity=ir.IssueSeverity.ERROR, translation_key="identity_mismatch",
        translation_placeholders={"host": host, "name": name},
    )  # fmt: skip
    return issue_id


async def _fix(client: Any, issue_id: str) -> dict[str, Any]:
    """Run the fix flow as the frontend does: open it, then submit its one step."""
    resp = await client.post(
        "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id}
    )
    assert resp.status == HTTPStatus.OK
    flow = await resp.json()
    assert flow["step_id"] == "confirm"
    resp = await client.post(f"/api/repairs/issues/fix/{flow['flow_id']}", json={})
    assert resp.status == HTTPStatus.OK
    return dict(await resp.json())


async def test_replaced_camera_is_trusted_after_the_fix_flow(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """Another device at the address: refused and a repair; confirmed: pinned to it, shown."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", HOST])
    assert await async_setup_component(hass, "repairs", {})
    rtsp_port, http_port = _free_port(), _free_port()
    cam = _camera(OLD, rtsp_port, http_port)
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam, HOST)
        entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
        entity_id = next(e.entity_id for e in entities if e.disabled_by is None)
        assert await _colour(hass, entity_id) == OLD

        [device] = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
        assert device.connections == {(dr.CONNECTION_NETWORK_MAC, f"02:00:00:00:00:0{OLD}")}

        # The camera is replaced by another device (another model) at the same address.
        await cam.stop()
        cam = _camera(NEW, rtsp_port, http_port)
        cam.config.model, cam.config.firmware = "ReplacementCam", "9.9.9"
        await cam.start()
        await entry.runtime_data.coordinator.async_refresh()
        await hass.async_block_till_done()
        issue_id = f"identity_mismatch_{entry.entry_id}"
        issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id)
        assert issue is not None
        assert issue.is_fixable
        # Past max age (the old camera's last still is no longer current):
        await asyncio.sleep(DEFAULT_SNAPSHOT_MAX_AGE)
        with pytest.raises(HomeAssistantError):  # nothing from the other device, until...
            await camera_component.async_get_image(hass, entity_id)

        # ... the user confirms that they replaced the camera. If the new
        # device is already configured as another entry, nothing changes.
        client = await hass_client()
        # (A stream of that device added by URL: an ONVIF entry holds all its streams.)
        twin = MockConfigEntry(
            domain=DOMAIN,
            unique_id=f"02:00:00:00:00:0{NEW}",
            data={
                CONF_IDENTITY: {"mac": f"02:00:00:00:00:0{NEW}"},
                CONF_STREAM_URL: f"rtsp://{HOST}:9/another-stream",
            },
        )
        twin.add_to_hass(hass)
        result = await _fix(client, issue_id)
        assert (result["type"], result["reason"]) == ("abort", "already_configured")
        assert entry.data[CONF_IDENTITY]["serial"] == f"SERIAL-{OLD}"
        await hass.config_entries.async_remove(twin.entry_id)
        assert (await _fix(client, issue_id))["type"] == "create_entry"
        await hass.async_block_till_done(wait_background_tasks=True)
        assert entry.data[CONF_IDENTITY]["serial"] == f"SERIAL-{NEW}"
        # The entry stands for the new device: adding it again is "already configured".
        assert entry.unique_id == f"02:00:00:00:00:0{NEW}"
        assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
        assert await _colour(hass, entity_id) == NEW
        # Its device page names the new camera, and HA's DHCP watcher follows
        # only the new MAC (the old camera's is no longer this camera's).
        [device] = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
        assert (device.model, device.sw_version, device.connections) == (
            "ReplacementCam",
            "9.9.9",
            {(dr.CONNECTION_NETWORK_MAC, f"02:00:00:00:00:0{NEW}")},
        )

        # A fix flow started while the device is down reads nothing and changes nothing.
        _identity_issue(hass, entry.entry_id, HOST, entry.title)
        await cam.stop()
        result = await _fix(client, issue_id)
        assert (result["type"], result["reason"]) == ("abort", "cannot_connect")
        assert entry.data[CONF_IDENTITY]["serial"] == f"SERIAL-{NEW}"
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        await cam.stop()


async def test_a_camera_the_link_now_shows_with_another_mac_is_re_pinned_by_its_serial(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The same camera behind a MAC-rewriting repeater: re-pinned by serial, no repair.

    An entry that holds the MAC the device reports (stored when the link
    showed none, or by an earlier LocalCam) fails the link check once the
    link shows another MAC for the same device. The health check asks the
    device; it repeats the entry's serial and UUID, so the entry keeps those
    and drops the MAC, and reloads: the camera is back, checked by asking it.
    A device that cannot be asked, or another device there (another serial),
    still gets the repair.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", HOST])
    assert await async_setup_component(hass, "repairs", {})
    rtsp_port, http_port = _free_port(), _free_port()
    cam = _camera(OLD, rtsp_port, http_port)
    await cam.start()
    link = "02:00:00:aa:bb:99"
    try:
        entry = await add_onvif_entry(hass, cam, HOST)
        pinned = dict(entry.data[CONF_IDENTITY])
        assert pinned["mac"] == f"02:00:00:00:00:0{OLD}"
        entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
        entity_id = next(e.entity_id for e in entities if e.disabled_by is None)
        issue_id = f"identity_mismatch_{entry.entry_id}"
        with (
            patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=link),
            patch("custom_components.localcam.helpers.neighbour_mac", return_value=link),
        ):
            await entry.runtime_data.coordinator.async_refresh()
            await hass.async_block_till_done(wait_background_tasks=True)
            assert entry.data[CONF_IDENTITY] == {
                "serial": f"SERIAL-{OLD}",
                "uuid": pinned["uuid"],
            }
            assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
            # Pinned by serial now: the device no longer claims the MAC.
            [device] = dr.async_entries_for_config_entry(dr.async_get(hass), entry.entry_id)
            assert device.connections == set()
            asked = cam.stats.onvif_requests
            assert await _colour(hass, entity_id) == OLD
            assert cam.stats.onvif_requests > asked  # checked by asking the device

            # The entry pinned by MAC again, and the device cannot be asked (its ONVIF
            # port is closed): a repair, no re-pin.
            hass.config_entries.async_update_entry(
                entry, data={**entry.data, CONF_PORT: _free_port(), CONF_IDENTITY: pinned}
            )
            await hass.config_entries.async_reload(entry.entry_id)
            await hass.async_block_till_done(wait_background_tasks=True)
            assert entry.data[CONF_IDENTITY] == pinned
            assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None
            ir.async_delete_issue(hass, DOMAIN, issue_id)

            # Another device at the address (another serial): a repair, no re-pin.
            await cam.stop()
            cam = _camera(NEW, rtsp_port, http_port)
            await cam.start()
            hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_PORT: http_port})
            await hass.config_entries.async_reload(entry.entry_id)
            await hass.async_block_till_done(wait_background_tasks=True)
            assert entry.data[CONF_IDENTITY] == pinned
            assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None
            with pytest.raises(HomeAssistantError):
                await camera_component.async_get_image(hass, entity_id)
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        await cam.stop()


async def test_fix_flow_edges(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
) -> None:
    """No identity to read (no MAC on loopback): abort; a removed entry: abort; other issues."""
    assert await async_setup_component(hass, "repairs", {})
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    client = await hass_client()
    for entry_id, reason in ((entry.entry_id, "cannot_identify"), ("gone", "entry_removed")):
        issue_id = _identity_issue(hass, entry_id, "127.0.0.1", "cam")
        if reason == "entry_removed":
            resp = await client.post(
                "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id}
            )
            result = await resp.json()
        else:
            result = await _fix(client, issue_id)
        assert (result["type"], result["reason"]) == ("abort", reason)
    with pytest.raises(UnknownHandler):
        await async_create_fix_flow(hass, "h265_only_x", None)


async def test_a_replacement_with_other_credentials_is_trusted_with_the_ones_typed(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """The new camera refuses the entry's password: the fix flow asks for the new one.

    Before, the flow said the device "did not answer", and reauth and
    reconfigure refused the other device: only removing the entry (its
    entities and history) was left. The credentials typed are used only for
    the device at the camera's address, and kept with the identity they proved.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", HOST])
    assert await async_setup_component(hass, "repairs", {})
    rtsp_port, http_port = _free_port(), _free_port()
    cam = _camera(OLD, rtsp_port, http_port)
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam, HOST)
        await cam.stop()
        config = onvif_camera_config(NEW, HOST, rtsp_port, http_port, f"02:00:00:00:00:0{NEW}")
        cam = VirtualCamera(replace(config, password="new-secret"))
        await cam.start()
        issue_id = _identity_issue(hass, entry.entry_id, HOST, entry.title)
        client = await hass_client()
        resp = await client.post(
            "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id}
        )
        flow = await resp.json()
        url = f"/api/repairs/issues/fix/{flow['flow_id']}"
        flow = await (await client.post(url, json={})).json()
        assert flow["step_id"] == "credentials"
        assert flow["description_placeholders"] == {"host": HOST, "name": entry.title}
        flow = await (
            await client.post(url, json={"username": CAM_USER, "password": "wrong"})
        ).json()
        assert (flow["step_id"], flow["errors"]) == ("credentials", {"base": "invalid_auth"})
        assert entry.data[CONF_IDENTITY]["serial"] == f"SERIAL-{OLD}"
        flow = await (
            await client.post(url, json={"username": CAM_USER, "password": "new-secret"})
        ).json()
        assert flow["type"] == "create_entry"
        await hass.async_block_till_done(wait_background_tasks=True)
        assert entry.data[CONF_IDENTITY]["serial"] == f"SERIAL-{NEW}"
        assert entry.data[CONF_PASSWORD] == "new-secret"
        assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
        entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
        entity_id = next(e.entity_id for e in entities if e.disabled_by is None)
        assert await _colour(hass, entity_id) == NEW
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        await cam.stop()


async def test_a_camera_removed_while_its_fix_flow_reads_the_device(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """The user removes the camera while the fix flow reads the device: the flow's own abort.

    Before: a 400 with HA's untranslated "Config entry ... not found". Only
    the device's MAC lookup (the network edge) is replaced; the removal
    happens during it.
    """
    assert await async_setup_component(hass, "repairs", {})
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    issue_id = _identity_issue(hass, entry.entry_id, "127.0.0.1", entry.title)
    client = await hass_client()
    response = await client.post(
        "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id}
    )
    flow = await response.json()
    assert flow["step_id"] == "confirm"

    async def removed_meanwhile(*_args: object) -> str:
        await hass.config_entries.async_remove(entry.entry_id)
        return "02:00:00:00:00:42"

    with patch("custom_components.localcam.helpers.async_link_mac", side_effect=removed_meanwhile):
        response = await client.post(f"/api/repairs/issues/fix/{flow['flow_id']}", json={})
    assert hass.config_entries.async_get_entry(entry.entry_id) is None
    assert response.status == HTTPStatus.OK, await response.text()
    result = await response.json()
    assert (result["type"], result["reason"]) == ("abort", "entry_removed")


async def test_another_device_at_the_address_is_asked_who_it_is_once_at_most(
    hass: HomeAssistant, socket_enabled: None, freezer: FrozenDateTimeFactory
) -> None:
    """Another device takes a MAC-pinned ONVIF camera's address: unavailable, a repair.

    The check tries once whether the device is the camera behind a repeater
    (same serial): one identity read, no profiles or stream addresses. Before,
    a whole read (about nine requests with the camera's WS-Security digest)
    went to the other device at every minute's check.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", HOST])
    rtsp_port, http_port = _free_port(), _free_port()
    cam = _camera(OLD, rtsp_port, http_port)
    await cam.start()
    try:
        entry = await add_onvif_entry(hass, cam, HOST)
        assert entry.data[CONF_IDENTITY]["mac"] == f"02:00:00:00:00:0{OLD}"
        await cam.stop()
        cam = _camera(NEW, rtsp_port, http_port)
        await cam.start()
        other = f"02:00:00:00:00:0{NEW}"
        asked: list[int] = []
        with (
            patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=other),
            patch("custom_components.localcam.helpers.neighbour_mac", return_value=other),
        ):
            for _ in range(3):
                freezer.tick(timedelta(seconds=HEALTH_INTERVAL_SECONDS + 1))
                async_fire_time_changed(hass)
                await hass.async_block_till_done(wait_background_tasks=True)
                asked.append(cam.stats.credentialed_requests)
        assert ir.async_get(hass).async_get_issue(DOMAIN, f"identity_mismatch_{entry.entry_id}")
        entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
        entity_id = next(e.entity_id for e in entities if e.disabled_by is None)
        assert hass.states.get(entity_id).state == STATE_UNAVAILABLE  # type: ignore[union-attr]
        assert 0 < asked[0] <= 4
        assert asked == [asked[0]] * 3
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        await cam.stop()


# --- An ONVIF host typed as a bracketed IPv6 literal --------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _forward_v6(port: int) -> asyncio.Server:
    """Listen on [::1]:port and forward each connection to 127.0.0.1:port (the camera).

    The virtual camera listens on loopback IPv4 only; this is the camera
    reached at an IPv6 literal.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await asyncio.start_server(handle, "::1", port)


def _free_port_on_both() -> int:
    """A port free on both 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6) as sock6:
                sock6.bind(("::1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on both loopbacks")


async def test_an_onvif_host_typed_in_brackets_is_stored_as_the_address(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """An ONVIF host typed "[::1]": added, and usable by every later check.

    read_device accepts the brackets, so the camera was added with
    CONF_HOST "[::1]"; every look at the link (async_link_mac) then built
    "http://[[::1]]:port/" and failed: the replaced-camera repair always
    ended "cannot_connect", the MAC guard of reauth and reconfigure was
    skipped, and discovery took the address for a host name.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "::1"])
    assert await async_setup_component(hass, "repairs", {})
    rtsp_port, http_port = _free_port_on_both(), _free_port_on_both()
    cam = VirtualCamera(
        onvif_camera_config(3, "127.0.0.1", rtsp_port, http_port, "02:00:00:00:00:03")
    )
    await cam.start()
    servers = [await _forward_v6(rtsp_port), await _forward_v6(http_port)]
    try:
        entry = await add_onvif_entry(hass, cam, "[::1]")
        assert entry.data[CONF_HOST] == "::1"
        await async_link_mac(hass, entry.data, entry.options)  # does not raise
        issue_id = _identity_issue(hass, entry.entry_id, "::1", entry.title)
        result = await _fix(await hass_client(), issue_id)
        assert result["type"] == "create_entry", result
        await hass.async_block_till_done(wait_background_tasks=True)
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        for server in servers:
            server.close()
        await cam.stop()
