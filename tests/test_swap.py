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
import socket
from typing import Any
from unittest.mock import patch

from homeassistant.components.camera.helper import get_camera_from_entity_id
from homeassistant.config_entries import SOURCE_DHCP, SOURCE_USER
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er, issue_registry as ir
from homeassistant.helpers.service_info.dhcp import DhcpServiceInfo
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_STREAM_URL,
    DOMAIN,
)
from virtualcam import CameraConfig, VirtualCamera

from .conftest import (
    CAM_PASSWORD,
    CAM_USER,
    camera_config,
    camera_shown,
    entry_data,
    main_entity_id,
    onvif_camera_config,
    setup_entry,
)

A, B = 3, 4  # palette indexes = the cameras' colours
MACS = {A: "02:00:00:00:0a:0a", B: "02:00:00:00:0b:0b"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(index: int, host: str, rtsp_port: int, http_port: int) -> CameraConfig:
    return onvif_camera_config(index, host, rtsp_port, http_port, MACS[index])


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
                        shown = camera_shown(body) if resp.status == HTTPStatus.OK else None
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


MAC_PORCH = "02:00:00:00:00:0a"


async def test_a_mac_pinned_camera_is_not_served_from_a_device_whose_mac_cannot_be_seen(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera added by URL, by host name, pinned by its MAC (it was on the link).

    The name now answers an address where the link shows no MAC (another VLAN
    routed to, or an AAAA answer: IPv6 neighbours are not read), and another
    device (B, colour 5) answers there. Nothing then shows the device is the
    camera: its stills, its stream and the minute's check must not pass it
    off as the camera (nor send it the camera's credentials).
    """
    pytest_socket.socket_allow_hosts(["127.0.0.2", "127.0.0.3"], allow_unix_socket=True)
    dns = {"porch.test": "127.0.0.2"}
    link = {"127.0.0.2": MAC_PORCH}  # 127.0.0.3: no neighbour entry

    async def resolve(host: str, _port: int) -> list[str]:
        return [dns[host]]

    a = VirtualCamera(camera_config("a", 0, host="127.0.0.2", http_snapshot=False))
    await a.start()
    b: VirtualCamera | None = None
    with (
        patch("custom_components.localcam.core.netpolicy.system_resolve", resolve),
        patch(
            "custom_components.localcam.core.snapshot.neighbour_mac",
            lambda address, *_: link.get(str(address)),
        ),
        # These loopback addresses stand for LAN ones (where a link is).
        patch("custom_components.localcam.core.snapshot.on_this_host", lambda _a: False),
    ):
        data = entry_data(a, snapshot=False)
        data[CONF_STREAM_URL] = f"rtsp://porch.test:{a.rtsp_port}/stream"
        data[CONF_IDENTITY] = {"mac": MAC_PORCH}
        entry = MockConfigEntry(
            domain=DOMAIN, title="porch", unique_id=data[CONF_CAMERA_ID], data=data
        )
        await setup_entry(hass, entry)
        entity_id = main_entity_id(hass, entry)
        entity = get_camera_from_entity_id(hass, entity_id)
        try:
            assert (await entity.async_snapshot()).camera_id  # A, on the link: fine
            await a.stop()
            b = VirtualCamera(camera_config("b", 5, host="127.0.0.3", rtsp_port=a.rtsp_port))
            await b.start()
            dns["porch.test"] = "127.0.0.3"
            await asyncio.sleep(1.2)  # past the cache's max age (1 s)
            try:
                served = await entity.async_snapshot()
            except HomeAssistantError:
                served = None
            assert served is None, f"a frame of colour {camera_shown(served.jpeg)} served as A's"
            assert b.stats.credentialed_requests == 0
            await entry.runtime_data.coordinator.async_refresh()
            await hass.async_block_till_done()
            state = hass.states.get(entity_id)
            assert state is not None
            assert state.state == STATE_UNAVAILABLE
        finally:
            await hass.config_entries.async_unload(entry.entry_id)
            for cam in (a, b):
                if cam is not None:
                    await cam.stop()
