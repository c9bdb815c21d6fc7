"""The test that answers the seed: two cameras swap addresses.

Camera A (one colour) and camera B (another) answer at 127.0.0.2 and
127.0.0.3 on the same ports, like two real cameras on a LAN. They swap
addresses (a reused DHCP lease) while dashboards keep asking for stills.
Each entity must show only its own camera's picture, or an error, never the
other's. After DHCP rediscovery both entries follow their cameras (each move
proven by the device's identity) and the pictures are right again.
"""

import asyncio
from collections import Counter
from http import HTTPStatus
import io
import socket
from typing import Any

from homeassistant.config_entries import SOURCE_DHCP, SOURCE_USER
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.service_info.dhcp import DhcpServiceInfo
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import CONF_SNAPSHOT_MAX_AGE, DOMAIN
from virtualcam import CameraConfig, VirtualCamera, color_for, nearest_camera

from .conftest import CAM_PASSWORD, CAM_USER, onvif_camera_config

PALETTE = [color_for(i) for i in range(64)]
A, B = 3, 4  # palette indexes = the cameras' colours
MACS = {A: "02:00:00:00:0a:0a", B: "02:00:00:00:0b:0b"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(index: int, host: str, rtsp_port: int, http_port: int) -> CameraConfig:
    return onvif_camera_config(index, host, rtsp_port, http_port, MACS[index])


def _colour(body: bytes) -> int:
    image = Image.open(io.BytesIO(body))
    image.load()
    rgb = image.convert("RGB")
    pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(pixel, tuple)
    return nearest_camera((pixel[0], pixel[1], pixel[2]), PALETTE)


@pytest.mark.timeout(180)
async def test_two_cameras_swap_addresses(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    socket_enabled: None,
) -> None:
    """0 foreign frames while swapped; unavailable + repair; DHCP follows by identity."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    rtsp_port, http_port = _free_port(), _free_port()
    cams = {
        A: VirtualCamera(_config(A, "127.0.0.2", rtsp_port, http_port)),
        B: VirtualCamera(_config(B, "127.0.0.3", rtsp_port, http_port)),
    }
    for cam in cams.values():
        await cam.start()
    try:
        entity_of: dict[int, str] = {}
        entry_of: dict[int, Any] = {}
        for index, host in ((A, "127.0.0.2"), (B, "127.0.0.3")):
            result = await hass.config_entries.flow.async_init(
                DOMAIN, context={"source": SOURCE_USER}
            )
            result = await hass.config_entries.flow.async_configure(
                result["flow_id"], {"next_step_id": "onvif"}
            )
            result = await hass.config_entries.flow.async_configure(
                result["flow_id"],
                {
                    "host": host,
                    "port": http_port,
                    "username": CAM_USER,
                    "password": CAM_PASSWORD,
                    "verify_ssl": True,
                },
            )
            entry = result["result"]
            hass.config_entries.async_update_entry(entry, options={CONF_SNAPSHOT_MAX_AGE: 0.2})
            await hass.async_block_till_done()
            entry_of[index] = entry
            entities = er.async_entries_for_config_entry(er.async_get(hass), entry.entry_id)
            entity_of[index] = next(e.entity_id for e in entities if e.disabled_by is None)

        client = await hass_client()
        seen: Counter[tuple[str, int, int | None]] = Counter()

        async def burst(phase: str, rounds: int) -> None:
            for _ in range(rounds):
                for index, entity_id in entity_of.items():
                    for path in (
                        f"/api/localcam/snapshot/{entity_id}",
                        f"/api/camera_proxy/{entity_id}",
                    ):
                        resp = await client.get(path)
                        body = await resp.read()
                        shown = _colour(body) if resp.status == HTTPStatus.OK else None
                        seen[(phase, index, shown)] += 1
                await asyncio.sleep(0.25)  # past max age: every round is a new fetch

        await burst("before", 3)
        assert {k for k in seen if k[0] == "before"} == {("before", A, A), ("before", B, B)}

        # The swap: both cameras reboot and come back on each other's address.
        for cam in cams.values():
            await cam.stop()
        cams = {
            A: VirtualCamera(_config(A, "127.0.0.3", rtsp_port, http_port)),
            B: VirtualCamera(_config(B, "127.0.0.2", rtsp_port, http_port)),
        }
        for cam in cams.values():
            await cam.start()
        # Past max age: a frame each camera gave just before the swap is its
        # own, honestly served while current; from now on none is.
        await asyncio.sleep(0.25)
        await burst("swapped", 4)
        swapped = {k: v for k, v in seen.items() if k[0] == "swapped"}
        foreign = {k: v for k, v in swapped.items() if k[2] is not None and k[2] != k[1]}
        assert foreign == {}, f"foreign frames served: {foreign}"
        assert all(k[2] is None for k in swapped), swapped  # errors only

        # At the next health check (what the 60 s interval runs): unavailable,
        # and a repair issue each.
        for entry in entry_of.values():
            await entry.runtime_data.coordinator.async_refresh()
        await hass.async_block_till_done()
        for index, entity_id in entity_of.items():
            state = hass.states.get(entity_id)
            assert state is not None
            assert state.state == STATE_UNAVAILABLE
            issue_id = f"identity_mismatch_{entry_of[index].entry_id}"
            assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is not None

        # DHCP rediscovery: each MAC now has the other address; entries follow.
        for index, new_host in ((A, "127.0.0.3"), (B, "127.0.0.2")):
            result = await hass.config_entries.flow.async_init(
                DOMAIN,
                context={"source": SOURCE_DHCP},
                data=DhcpServiceInfo(
                    ip=new_host, hostname=f"cam{index}", macaddress=MACS[index].replace(":", "")
                ),
            )
            assert result["reason"] == "already_configured"
            assert entry_of[index].data["host"] == new_host
        await hass.async_block_till_done(wait_background_tasks=True)
        await asyncio.sleep(0.25)
        await burst("after", 3)
        assert {k for k in seen if k[0] == "after"} == {("after", A, A), ("after", B, B)}
        for entry in hass.config_entries.async_entries(DOMAIN):
            await entry.runtime_data.coordinator.async_refresh()
        await hass.async_block_till_done()
        for index in (A, B):
            issue_id = f"identity_mismatch_{entry_of[index].entry_id}"
            assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None
    finally:
        for entry in hass.config_entries.async_entries(DOMAIN):
            await hass.config_entries.async_unload(entry.entry_id)
        for cam in cams.values():
            await cam.stop()
