"""Home Assistant's other consumers of a LocalCam camera: HomeKit, go2rtc, the MJPEG view.

HomeKit and go2rtc read ``stream_source()`` with their own FFmpeg (or Go)
RTSP client and hold the URL for as long as they like; HA's MJPEG view
(``camera_proxy_stream``) asks for stills in a loop. Their RTSP client is
played here by PyAV (the same libavformat), opened as HomeKit opens it.
"""

import asyncio
from http import HTTPStatus
from unittest.mock import patch

import av
from homeassistant.components.camera import async_get_stream_source
from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import pytest_socket

from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_RTSP_TRANSPORT,
    CONF_STREAM_URL,
    DOMAIN,
)
from custom_components.localcam.core import rtsp_guard
from virtualcam import CameraConfig, Fault, VirtualCamera

from .conftest import (
    camera_config,
    camera_shown,
    entry_data,
    main_entity_id,
    make_entry,
    set_up_camera,
    setup_entry,
)

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


def _first_frame(url: str, options: dict[str, str]) -> bool:
    """Open ``url`` as an FFmpeg client does and decode one video frame (blocking)."""
    try:
        # "timeout": libavformat's RTSP socket timeout, in microseconds.
        with av.open(url, options={"timeout": "5000000", **options}) as container:
            for _frame in container.decode(video=0):
                return True
    except av.FFmpegError:
        return False
    return False


async def _plays(url: str, **options: str) -> bool:
    """Whether an FFmpeg client given ``url`` (HomeKit: no options) gets a frame; bounded."""
    async with asyncio.timeout(20):
        return await asyncio.get_running_loop().run_in_executor(None, _first_frame, url, options)


@pytest.mark.parametrize(("transport", "camera_udp_setups"), [("tcp", 0), ("udp", 1)])
async def test_homekit_ffmpeg_gets_interleaved_media_only(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, transport: str, camera_udp_setups: int
) -> None:
    """HomeKit's FFmpeg (``-i <stream_source>``, no transport option) gets media through the relay.

    Left to its default, FFmpeg asks for RTP over UDP first. Passed on, that
    SETUP had the camera send its media straight to FFmpeg's own UDP port,
    which takes datagrams from any sender on the LAN: the relay's guarantee
    (media from the checked camera only) did not hold for HomeKit. The relay
    answers such a SETUP 461; FFmpeg asks again, interleaved, and a UDP
    camera is still reached over UDP by the relay's own bridge.
    """
    cam = rtsp_only_camera
    entry = make_entry(cam, snapshot=False, options={CONF_RTSP_TRANSPORT: transport})
    await setup_entry(hass, entry)
    source = await async_get_stream_source(hass, main_entity_id(hass, entry))
    assert source is not None
    assert await _plays(source)
    # Only the relay's bridge ever asks the camera for UDP (one SETUP, one track).
    assert cam.stats.udp_setups == camera_udp_setups
    if camera_udp_setups:
        # ... to a port of the relay's (which passes on the camera's datagrams only),
        # never to one of FFmpeg's.
        assert cam.stats.udp_client_port in rtsp_guard._USED_UDP_PORTS


async def test_a_consumer_holding_the_old_relay_url_never_plays_the_device_at_the_old_address(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """go2rtc (or HomeKit) keeps the URL stream_source gave it; the camera then moves.

    A camera added by host name, whose link shows no MAC (routed, or pinned by
    its serial): the relay checks no MAC per session. HA's own stream is
    re-pinned after each check, and its old relay retired; nothing retired the
    relay a consumer outside HA's stream held. go2rtc reconnects its producer to
    that URL (and keeps a preloaded stream on it) until its next WebRTC offer:
    it played whichever device took the camera's old address, under the
    camera's name, and was sent the camera's credentials. Once the health check
    has proved the camera at a new address, the old address's relay is closed.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"], allow_unix_socket=True)
    dns = {"porch.test": "127.0.0.1"}

    async def resolve(host: str, _port: int) -> list[str]:
        return [dns[host]]

    def config(color: int, host: str, port: int = 0) -> CameraConfig:
        return camera_config(f"c{color}", color, host=host, rtsp_port=port, http_snapshot=False)

    a = VirtualCamera(config(0, "127.0.0.1"))
    await a.start()
    moved = other = None
    with (
        patch("custom_components.localcam.core.netpolicy.system_resolve", resolve),
        patch("custom_components.localcam.core.snapshot.neighbour_mac", lambda *_: None),
    ):
        data = entry_data(a, snapshot=False)
        data[CONF_STREAM_URL] = f"rtsp://porch.test:{a.rtsp_port}/stream"
        entry = MockConfigEntry(
            domain=DOMAIN, title="porch", unique_id=data[CONF_CAMERA_ID], data=data
        )
        await setup_entry(hass, entry)
        entity_id = main_entity_id(hass, entry)
        try:
            held = await async_get_stream_source(hass, entity_id)  # what go2rtc was given
            assert held is not None
            await a.stop()
            moved = VirtualCamera(config(0, "127.0.0.2", a.rtsp_port))
            other = VirtualCamera(config(5, "127.0.0.1", a.rtsp_port))
            await moved.start()
            await other.start()
            dns["porch.test"] = "127.0.0.2"
            entity = hass.data["camera"].get_entity(entity_id)
            await entity.coordinator.async_refresh()
            await hass.async_block_till_done()
            assert entity.coordinator.last_update_success  # the camera, at its new address
            # go2rtc's producer reconnects (TCP, as go2rtc speaks RTSP) with the URL it holds.
            assert not await _plays(held, rtsp_transport="tcp")
            assert other.stats.play_sessions == 0
            # A consumer that asks again (go2rtc's next offer) gets the camera.
            fresh = await async_get_stream_source(hass, entity_id)
            assert fresh is not None
            assert fresh != held
            assert await _plays(fresh, rtsp_transport="tcp")
            assert moved.stats.play_sessions == 1
        finally:
            await hass.config_entries.async_unload(entry.entry_id)
            for cam in (moved, other):
                if cam is not None:
                    await cam.stop()


async def test_ha_s_mjpeg_view_answers_a_failing_camera_with_an_error(
    hass: HomeAssistant,
    camera: VirtualCamera,
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HA's ``/api/camera_proxy_stream`` on a camera whose still fails: an error status.

    Before: a 200 (sent before the first still), then a body cut off, and an
    ERROR with a traceback in HA's log ("Error handling request") for every
    request: a client could not tell a failing camera from a network drop.
    """
    _entry, entity_id = await set_up_camera(hass, camera)
    client = await hass_client()
    async with asyncio.timeout(10):
        resp = await client.get(f"/api/camera_proxy_stream/{entity_id}")
        data = b""
        while data.count(b"--frameboundary") < 2:
            data += await resp.content.read(4096)
        resp.close()
    assert resp.status == HTTPStatus.OK
    jpeg = data.split(b"--frameboundary")[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    assert camera_shown(jpeg) == 0

    camera.fault = Fault.WRONG_CONTENT_TYPE
    await asyncio.sleep(1.1)  # past the still cache's max age
    for path in (
        f"/api/camera_proxy_stream/{entity_id}",
        f"/api/camera_proxy_stream/{entity_id}?interval=1",
    ):
        async with asyncio.timeout(15):
            resp = await client.get(path)
            body = await resp.read()
        assert resp.status == HTTPStatus.BAD_GATEWAY
        assert body == b"invalid_image"
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelname == "ERROR"]


async def test_ha_s_mjpeg_view_ends_cleanly_when_the_camera_fails_mid_stream(
    hass: HomeAssistant,
    camera: VirtualCamera,
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A still failing while the MJPEG stream runs ends the stream, never repeats a frame."""
    _entry, entity_id = await set_up_camera(hass, camera)
    client = await hass_client()
    async with asyncio.timeout(15):
        resp = await client.get(f"/api/camera_proxy_stream/{entity_id}?interval=0.5")
        assert resp.status == HTTPStatus.OK
        first = await resp.content.read(64)
        assert first.startswith(b"--frameboundary")
        camera.fault = Fault.WRONG_CONTENT_TYPE
        await resp.read()  # ends: a complete chunked body, no payload error
    assert not [r for r in caplog.records if r.name == "aiohttp.server" and r.levelname == "ERROR"]


async def test_a_camera_nobody_watches_keeps_no_relay_after_its_checks(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The checks close relays to addresses the camera left; they never open one.

    A first version pinned a relay whenever the entities heard of a check, to
    know which relay to keep: an idle camera then held a loopback listener
    for nothing.
    """
    entry = make_entry(camera)  # stills from its snapshot URL: no RTSP session
    await setup_entry(hass, entry)
    main = entry.runtime_data.streams[entry.runtime_data.main]
    coordinator = entry.runtime_data.coordinator
    for _ in range(3):
        await coordinator.async_refresh()
        # What the entities hear when a check finds the camera at another address.
        coordinator.async_update_listeners()
        await hass.async_block_till_done()
    assert coordinator.last_update_success
    assert main.client.guard.as_dict()["relays"] == 0
    # Once someone reads the stream, its relay stays open across the checks.
    assert await async_get_stream_source(hass, main_entity_id(hass, entry)) is not None
    await coordinator.async_refresh()
    coordinator.async_update_listeners()
    await hass.async_block_till_done()
    assert main.client.guard.as_dict()["relays"] == 1
