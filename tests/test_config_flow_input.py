"""What users type into the setup forms: credentials inside URLs, bracketed IPv6 hosts."""

import asyncio
import socket
from typing import Any

from homeassistant.config_entries import SOURCE_USER
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import config_validation as cv, issue_registry as ir
from homeassistant.setup import async_setup_component
import probatio
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DOMAIN,
)
from custom_components.localcam.core.netpolicy import normalized_identity
from custom_components.localcam.helpers import async_link_mac
from virtualcam import VirtualCamera

from .conftest import CAM_PASSWORD, CAM_USER, add_onvif_entry, onvif_camera_config

# Nothing listens here, and nothing is ever connected to: the snapshot URL is
# refused by the LAN policy before any connection is made.
STREAM = "rtsp://127.0.0.1:9/stream"
PUBLIC_SNAPSHOT = "http://198.51.100.7/snap.jpg"


def _as_sent(result: dict[str, Any]) -> str:
    """The form as Home Assistant's HTTP view sends it to the browser."""
    return str(
        probatio.to_field_list(result["data_schema"], custom_serializer=cv.custom_serializer)
    )


async def test_a_password_typed_into_the_url_is_not_echoed_back_by_the_add_form(
    hass: HomeAssistant,
) -> None:
    """rtsp://user:pass@host/ and a form error: the form comes back without the password.

    The password field is never sent back to the browser; the same password
    typed into the URL came back in the URL field's suggested value.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    url = STREAM.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url, CONF_SNAPSHOT_URL: PUBLIC_SNAPSHOT, CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_SNAPSHOT_URL: "not_local"}
    sent = _as_sent(result)
    assert CAM_PASSWORD not in sent
    # The address itself is kept for the user to fix the other field.
    assert "127.0.0.1:9/stream" in sent
    # Typed without its scheme, the URL is refused: and shown again without the password.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url.removeprefix("rtsp://"), CONF_VERIFY_SSL: True},
    )
    assert result["errors"] == {CONF_STREAM_URL: "invalid_url"}
    assert CAM_PASSWORD not in _as_sent(result)


async def test_a_password_typed_into_the_url_is_not_echoed_back_by_reconfigure(
    hass: HomeAssistant,
) -> None:
    """The same for the reconfigure form."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="127.0.0.1:9",
        unique_id=normalized_identity(STREAM),
        data={
            CONF_STREAM_URL: STREAM,
            CONF_SNAPSHOT_URL: None,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: "old-password",
            CONF_VERIFY_SSL: True,
            CONF_CAMERA_ID: normalized_identity(STREAM),
        },
    )
    entry.add_to_hass(hass)
    result = await entry.start_reconfigure_flow(hass)
    url = STREAM.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {
            CONF_STREAM_URL: url,
            CONF_SNAPSHOT_URL: PUBLIC_SNAPSHOT,
            CONF_USERNAME: CAM_USER,
            CONF_VERIFY_SSL: True,
        },
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_SNAPSHOT_URL: "not_local"}
    sent = _as_sent(result)
    assert CAM_PASSWORD not in sent
    assert "old-password" not in sent


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


def _free_port() -> int:
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
    rtsp_port, http_port = _free_port(), _free_port()
    cam = VirtualCamera(
        onvif_camera_config(3, "127.0.0.1", rtsp_port, http_port, "02:00:00:00:00:03")
    )
    await cam.start()
    servers = [await _forward_v6(rtsp_port), await _forward_v6(http_port)]
    try:
        entry = await add_onvif_entry(hass, cam, "[::1]")
        assert entry.data[CONF_HOST] == "::1"
        await async_link_mac(hass, entry.data, entry.options)  # does not raise
        issue_id = f"identity_mismatch_{entry.entry_id}"
        ir.async_create_issue(
            hass, DOMAIN, issue_id, is_fixable=True, data={"entry_id": entry.entry_id},
            severity=ir.IssueSeverity.ERROR, translation_key="identity_mismatch",
            translation_placeholders={"host": "::1", "name": entry.title},
        )  # fmt: skip
        client = await hass_client()
        resp = await client.post(
            "/api/repairs/issues/fix", json={"handler": DOMAIN, "issue_id": issue_id}
        )
        flow = await resp.json()
        url = f"/api/repairs/issues/fix/{flow['flow_id']}"
        flow = await (await client.post(url, json={})).json()
        assert flow["type"] == "create_entry", flow
        await hass.async_block_till_done(wait_background_tasks=True)
    finally:
        for loaded in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(loaded.entry_id)
        for server in servers:
            server.close()
        await cam.stop()


# --- Credentials typed into the URL and into the fields -----------------------------


async def test_the_account_typed_into_the_url_is_not_paired_with_another_username(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """rtsp://user:pass@host/ with another name in the username field (a browser's autofill).

    The add form tried the field's username with the URL's password (an
    account that does not exist: invalid_auth); reconfigure already takes
    the account typed into the URL as a whole, and so does adding now.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    url = rtsp_only_camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url, CONF_USERNAME: "homeassistant", CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result.get("errors")
    assert (result["data"][CONF_USERNAME], result["data"][CONF_PASSWORD]) == (
        CAM_USER,
        CAM_PASSWORD,
    )
