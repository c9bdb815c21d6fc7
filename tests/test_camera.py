"""The camera entity against real virtual cameras on 127.0.0.1."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
import hashlib
from http import HTTPStatus
import io
import time
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

from homeassistant.components.camera import async_get_image, async_get_stream_source
from homeassistant.components.camera.helper import get_camera_from_entity_id
from homeassistant.components.stream import Stream
from homeassistant.config_entries import SOURCE_REAUTH
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator, WebSocketGenerator
import pytest_socket
import yarl

from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DOMAIN,
)
from custom_components.localcam.core import jpeg, snapshot_cache
from custom_components.localcam.core.errors import CannotConnectError, RedirectedError
from custom_components.localcam.core.models import SnapshotSource
from custom_components.localcam.core.netpolicy import NetPolicy, Target, normalized_identity
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for

from .conftest import (
    CAM_PASSWORD,
    CAM_USER,
    camera_asked,
    camera_config,
    camera_shown,
    entry_data,
    main_entity_id,
    make_entry,
    set_up_camera,
    setup_entry,
)

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


async def _entity_id(
    hass: HomeAssistant,
    cam: VirtualCamera,
    *,
    snapshot: bool = True,
    options: dict[str, Any] | None = None,
) -> str:
    return (await set_up_camera(hass, cam, snapshot=snapshot, options=options))[1]


@asynccontextmanager
async def _running_stream(
    hass: HomeAssistant, entity_id: str, cam: VirtualCamera, *, wait_playing: bool = True
) -> AsyncIterator[Stream]:
    """Start HA's stream for a LocalCam entity (as a viewer would); stop it after."""
    entity = get_camera_from_entity_id(hass, entity_id)
    stream = await entity.async_create_stream()
    assert stream is not None
    provider = stream.add_provider("hls")
    await stream.start()
    try:
        # Wait (bounded) for the worker's RTSP session to be playing.
        for _ in range(100 if wait_playing else 0):
            if cam.stats.active_play_sessions:
                break
            await hass.async_block_till_done()
            await asyncio.sleep(0.05)
        yield stream
    finally:
        if stream.outputs():
            # Cancels its idle timer and stops the worker.
            await stream.remove_provider(provider)


def _relayed_to(entity: Any, url: str) -> str:
    """The checked address (``host:port``) a stream URL's loopback relay connects to."""
    relayed = entity._client.guard.relayed_to(url)
    assert relayed is not None, "not a URL of this camera's relay"
    return f"{relayed[0]}:{relayed[1]}"


async def test_stream_source_is_pinned_with_credentials(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """stream_source() gives HA's stream a relay to the checked address, with credentials."""
    entity_id = await _entity_id(hass, camera)
    source = await async_get_stream_source(hass, entity_id)
    assert source is not None
    url = yarl.URL(source)
    assert (url.user, url.password, url.host, url.path) == (
        CAM_USER,
        CAM_PASSWORD,
        "127.0.0.1",
        "/stream",
    )
    assert url.port != camera.rtsp_port  # FFmpeg is never handed the camera itself
    entity = get_camera_from_entity_id(hass, entity_id)
    assert _relayed_to(entity, source) == f"127.0.0.1:{camera.rtsp_port}"


async def test_an_rtsps_camera_streams_through_the_relay_with_its_own_tls_setting(
    hass: HomeAssistant, rtsps_camera: VirtualCamera
) -> None:
    """A self-signed rtsps camera with "Verify SSL certificate" off plays, stills and stream.

    The relay holds the TLS connection, as the user's setting says, and both
    FFmpegs (LocalCam's grab, HA's stream worker) read plain RTSP from it
    over loopback, interleaved (TCP) even where UDP is configured. (Before,
    the grab's FFmpeg checked the certificate whatever the setting, and HA's
    stream checked none.)
    """
    cam = rtsps_camera
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=normalized_identity(cam.rtsp_url),
        data={**entry_data(cam, snapshot=False), CONF_VERIFY_SSL: False},
        options={CONF_RTSP_TRANSPORT: "udp"},
    )
    await setup_entry(hass, entry)
    entity_id = main_entity_id(hass, entry)
    entity = get_camera_from_entity_id(hass, entity_id)
    assert entity.stream_options["rtsp_transport"] == "tcp"
    source = await async_get_stream_source(hass, entity_id)
    assert source is not None
    assert (yarl.URL(source).scheme, yarl.URL(source).host) == ("rtsp", "127.0.0.1")
    assert _relayed_to(entity, source) == f"127.0.0.1:{cam.rtsp_port}"
    image = await async_get_image(hass, entity_id)
    assert camera_shown(image.content) == 2
    async with _running_stream(hass, entity_id, cam):
        assert cam.stats.active_play_sessions >= 1


async def test_a_udp_camera_streams_to_ha_through_the_relay(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A camera set to UDP sends its RTP to the relay; HA's stream reads it over TCP.

    HA's stream worker is told TCP (to the relay), the camera is asked for
    UDP for it, and the worker gets the camera's media: a still taken while
    it runs comes from its keyframe, with no session of its own.
    """
    cam = rtsp_only_camera
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=normalized_identity(cam.rtsp_url),
        data=entry_data(cam, snapshot=False),
        options={CONF_RTSP_TRANSPORT: "udp"},
    )
    await setup_entry(hass, entry)
    entity_id = main_entity_id(hass, entry)
    entity = get_camera_from_entity_id(hass, entity_id)
    assert entity.stream_options["rtsp_transport"] == "tcp"
    setups = cam.stats.udp_setups
    async with _running_stream(hass, entity_id, cam):
        assert cam.stats.udp_setups > setups  # the worker's session, over UDP to the relay
        sessions = cam.stats.play_sessions
        image = await async_get_image(hass, entity_id)
        assert camera_shown(image.content) == 1
        assert cam.stats.play_sessions == sessions
    assert entity._client.guard.datagrams_refused == 0


@pytest.fixture
async def other_camera(socket_enabled: None) -> AsyncIterator[VirtualCamera]:
    """Another camera (colour 5, no credentials asked) a camera may send its players to."""
    other = VirtualCamera(
        CameraConfig(name="other", color=color_for(5), width=320, height=180, http_snapshot=False)
    )
    await other.start()
    yield other
    await other.stop()


async def test_ha_s_stream_never_follows_a_camera_that_sends_it_elsewhere(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, other_camera: VirtualCamera
) -> None:
    """The camera answers LocalCam's checks but redirects FFmpeg to another camera.

    HA's own stream worker (FFmpeg) would follow the redirect and play the
    other camera under this one's name; through the relay it is refused, the
    other camera is never even connected to, and the stream is stopped.
    """
    other = other_camera
    rtsp_only_camera.config.redirect_location = other.rtsp_url
    rtsp_only_camera.fault = Fault.REDIRECT_PLAYERS
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    entity = get_camera_from_entity_id(hass, entity_id)
    async with _running_stream(hass, entity_id, rtsp_only_camera, wait_playing=False) as stream:
        await _until(lambda: entity._client.guard.refusals >= 1)  # type: ignore[attr-defined]
        # Stopped rather than left to reconnect into the refusal, and shown
        # unavailable (the camera's own health check would call it healthy).
        await _until(lambda: not stream.outputs())
        await hass.async_block_till_done()
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == "unavailable"
        assert other.stats.rtsp_connections == 0
        assert rtsp_only_camera.stats.active_play_sessions == 0
    # A health check in the meantime (the camera answers LocalCam's own
    # DESCRIBE normally) does not end it; one health interval does.
    await entity.coordinator.async_refresh()
    await hass.async_block_till_done()
    assert entity.coordinator.last_update_success
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state == "unavailable"
    # A still is grabbed through the relay too: refused, a clear error, no
    # other camera's frame (and the camera stays unavailable).
    with pytest.raises(HomeAssistantError) as err:
        await async_get_image(hass, entity_id)
    assert "redirect" in str(err.value.__cause__).lower()
    assert other.stats.rtsp_connections == 0
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=61))
    await hass.async_block_till_done()
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state != "unavailable"


async def test_an_unload_during_a_refusal_leaves_nothing_behind(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, other_camera: VirtualCamera
) -> None:
    """A camera unloaded while a refused redirect keeps it unavailable: its timer goes too."""
    rtsp_only_camera.config.redirect_location = other_camera.rtsp_url
    rtsp_only_camera.fault = Fault.REDIRECT_PLAYERS
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    entity = get_camera_from_entity_id(hass, entity_id)
    with pytest.raises(HomeAssistantError):
        await async_get_image(hass, entity_id)
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state == "unavailable"
    entry_id = entity.coordinator.config_entry.entry_id
    assert await hass.config_entries.async_unload(entry_id)
    await hass.async_block_till_done()
    # A refusal reported late (a session ending during the removal) changes nothing.
    entity._async_redirect_refused(RedirectedError(302))
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=61))
    await hass.async_block_till_done()
    state = hass.states.get(entity_id)
    assert state is not None
    assert state.state == "unavailable"  # unloaded, not brought back by a stale timer
    assert other_camera.stats.rtsp_connections == 0


async def test_a_health_check_without_a_relay_port_leaves_the_stream_as_it_is(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """No loopback port for a new relay: the stream keeps its URL until a later check."""
    entity_id = await _entity_id(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    stream = await entity.async_create_stream()
    assert stream is not None
    before = stream.source
    with patch.object(entity._client.guard, "url", side_effect=CannotConnectError("no relay port")):
        # A health check's result (the same camera, checked again) reaches the entity.
        entity.coordinator.async_set_updated_data(entity.coordinator.data)
        await hass.async_block_till_done()
    assert entity.coordinator.last_update_success
    assert stream.source == before


@pytest.mark.parametrize(
    ("go2rtc_url", "relayed"),
    [
        ("http://localhost:11984/", True),  # the go2rtc Home Assistant runs itself
        ("http://127.0.0.1:1984/", True),
        # A go2rtc server outside this machine (no packet is sent to it here).
        ("http://192.168.1.50:1984/", False),
        ("http://[::1", True),  # unreadable: taken as local
    ],
)
async def test_an_external_go2rtc_server_gets_the_camera_s_own_address(
    hass: HomeAssistant, camera: VirtualCamera, go2rtc_url: str, relayed: bool
) -> None:
    """go2rtc reads stream_source(): on another machine it cannot reach this one's relay.

    HA's own stream still plays through the relay.
    """
    hass.data["go2rtc"] = SimpleNamespace(url=go2rtc_url)
    entity_id = await _entity_id(hass, camera)
    source = await async_get_stream_source(hass, entity_id)
    assert source is not None
    entity = get_camera_from_entity_id(hass, entity_id)
    direct = f"rtsp://{CAM_USER}:{CAM_PASSWORD}@127.0.0.1:{camera.rtsp_port}/stream"
    assert (source != direct) is relayed
    stream = await entity.async_create_stream()
    assert stream is not None
    assert _relayed_to(entity, stream.source) == f"127.0.0.1:{camera.rtsp_port}"


async def test_still_from_snapshot_url(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """With a snapshot URL, the still is the camera's own JPEG."""
    entity_id = await _entity_id(hass, camera)
    before = camera.stats.play_sessions
    image = await async_get_image(hass, entity_id)
    assert image.content_type == "image/jpeg"
    assert camera_shown(image.content) == 0
    assert camera.stats.snapshot_requests >= 1
    assert camera.stats.play_sessions == before  # no RTSP session for a still


async def test_still_from_rtsp_grab(hass: HomeAssistant, rtsp_only_camera: VirtualCamera) -> None:
    """Without a snapshot URL, the still is a keyframe decoded from RTSP."""
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    image = await async_get_image(hass, entity_id)
    assert camera_shown(image.content) == 1
    assert Image.open(io.BytesIO(image.content)).size == (320, 180)


async def test_still_is_scaled_for_cards(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A card asking for a smaller size gets a smaller, still-right picture."""
    entity_id = await _entity_id(hass, camera)
    image = await async_get_image(hass, entity_id, width=160, height=90)
    size = Image.open(io.BytesIO(image.content)).size
    assert 160 <= size[0] < 320
    assert camera_shown(image.content) == 0


async def test_still_from_running_stream(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """While HA streams the camera, stills come from its keyframes: no new session."""
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    async with _running_stream(hass, entity_id, rtsp_only_camera):
        sessions = rtsp_only_camera.stats.play_sessions
        image = await async_get_image(hass, entity_id)
        assert camera_shown(image.content) == 1
        assert rtsp_only_camera.stats.play_sessions == sessions


def _box_corner(jpeg: bytes) -> str:
    """Where the virtual camera's dark name-and-clock box is: it is drawn top left."""
    image = Image.open(io.BytesIO(jpeg)).convert("L")
    corners = {
        "top left": (2, 2),
        "bottom right": (image.width - 3, image.height - 3),
    }
    dark = [name for name, xy in corners.items() if int(image.getpixel(xy)) < 60]
    assert len(dark) == 1, dark
    return dark[0]


async def test_stills_are_turned_alike_whether_or_not_the_stream_runs(
    hass: HomeAssistant,
    rtsp_only_camera: VirtualCamera,
    hass_ws_client: WebSocketGenerator,
) -> None:
    """Orientation "rotate 180": the still is upside down from either source.

    Home Assistant turns its stream and the stills it takes from it; before,
    LocalCam's own grab was served as the camera sent it, so a dashboard's
    picture flipped whenever someone opened or closed the live view.
    """
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    client = await hass_ws_client()
    await client.send_json_auto_id(
        {"type": "camera/update_prefs", "entity_id": entity_id, "orientation": 3}
    )
    assert (await client.receive_json())["success"]
    entity = get_camera_from_entity_id(hass, entity_id)
    grabbed = await entity.async_snapshot()
    assert grabbed.source.value == "rtsp_grab"
    assert _box_corner(grabbed.jpeg) == "bottom right"
    async with _running_stream(hass, entity_id, rtsp_only_camera):
        await asyncio.sleep(1.1)  # past max age: the next still comes from the stream
        from_stream = await entity.async_snapshot()
        assert from_stream.source.value == "stream_keyframe"
        assert _box_corner(from_stream.jpeg) == "bottom right"
    await client.send_json_auto_id(
        {"type": "camera/update_prefs", "entity_id": entity_id, "orientation": 1}
    )
    assert (await client.receive_json())["success"]
    await asyncio.sleep(1.1)
    assert _box_corner((await entity.async_snapshot()).jpeg) == "top left"


async def test_a_home_assistant_whose_converter_hides_its_image_gets_grabbed_stills(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later HA without the converter's private image: stills still come, grabbed.

    LocalCam reads HA 2026.10's keyframe converter to tell a new image from
    the one it held; without that it cannot, so it takes none from the
    stream and grabs its own (one more session), never an AttributeError.
    """
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    async with _running_stream(hass, entity_id, rtsp_only_camera) as stream:
        # Only the stream's own reference: its worker keeps the converter it started with.
        monkeypatch.setattr(stream, "_keyframe_converter", SimpleNamespace())
        sessions = rtsp_only_camera.stats.play_sessions
        image = await async_get_image(hass, entity_id)
        assert camera_shown(image.content) == 1
        assert rtsp_only_camera.stats.play_sessions == sessions + 1


async def test_a_stream_without_ha_s_worker_attribute_follows_its_camera(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A later HA with no ``Stream._thread``: a new address restarts the stream there.

    Unless the stream is unavailable (its worker waits out a restart backoff):
    then it only takes the address, for the worker's retry.
    """
    entity = get_camera_from_entity_id(hass, await _entity_id(hass, camera))
    moved: list[str] = []
    stream = SimpleNamespace(
        source="rtsp://127.0.0.1:1/old", available=True, update_source=moved.append
    )
    assert not entity._pin(stream, "rtsp://127.0.0.1:1/new")
    assert moved == ["rtsp://127.0.0.1:1/new"]
    assert entity._pin(SimpleNamespace(source="rtsp://127.0.0.1:1/new"), "rtsp://127.0.0.1:1/new")
    waiting = SimpleNamespace(
        source="rtsp://127.0.0.1:1/old", available=False, update_source=moved.append
    )
    assert not entity._pin(waiting, "rtsp://127.0.0.1:1/new")
    assert waiting.source == "rtsp://127.0.0.1:1/new"
    assert moved == ["rtsp://127.0.0.1:1/new"]  # no second restart


@pytest.mark.parametrize("fault", [Fault.TRUNCATED_JPEG, Fault.WRONG_CONTENT_TYPE, Fault.DROP])
async def test_broken_images_are_errors(
    hass: HomeAssistant, camera: VirtualCamera, fault: Fault
) -> None:
    """A broken reply raises a translated error; it is never served."""
    entity_id = await _entity_id(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    camera.fault = fault
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_domain == DOMAIN
    assert err.value.translation_key in {"invalid_image", "cannot_connect"}


async def test_a_still_over_the_size_cap_is_an_invalid_image(
    hass: HomeAssistant, camera: VirtualCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply cut off at the JPEG size cap is the camera's bad image, not a lost connection."""
    entity_id = await _entity_id(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    # The virtual camera's stills are a few KB: a 1000-byte cap makes each one too large.
    monkeypatch.setattr(jpeg, "MAX_JPEG_BYTES", 1000)
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "invalid_image"
    stats = entity._snapshots.stats
    assert dict(stats.rejected) == {"too_large": 1}
    assert dict(stats.errors) == {"invalid_image": 1}


async def test_no_old_frame_after_failure(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """Past max age, a failing camera gives an error, never the old still."""
    _entry, entity_id = await set_up_camera(hass, camera, options={CONF_SNAPSHOT_MAX_AGE: 0.2})
    entity = get_camera_from_entity_id(hass, entity_id)
    assert await entity.async_camera_image()
    camera.fault = Fault.REFUSE
    await asyncio.sleep(0.25)
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "cannot_connect"


async def test_hanging_camera_times_out(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A camera that hangs costs the timeout and then a translated error."""
    entity_id = await _entity_id(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    camera.fault = Fault.HANG
    entity._client.timeout = 1.0  # the production bound is 9 s
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "timeout"


async def test_a_camera_that_stays_hung_is_an_error_soon(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the camera's first still, a hang is a translated timeout after its own pace.

    Not at the 9 s fetch timeout (HA's own cameras hold a hung camera's
    viewers 10 s): the card shows the broken image soon. The fetch timeout
    stays 9 s here; the floor of the wait (and with it the hedge delay,
    which equals it) is lowered for the test's sake.
    """
    monkeypatch.setattr(snapshot_cache, "HEDGE_AFTER", 0.3)
    entity_id = await _entity_id(hass, camera, options={CONF_SNAPSHOT_MAX_AGE: 0.2})
    entity = get_camera_from_entity_id(hass, entity_id)
    assert camera_shown(await entity.async_camera_image()) == 0
    entity._snapshots.stall_floor = 0.3
    await asyncio.sleep(0.3)  # that still expired
    camera.fault = Fault.HANG
    client = await hass_client()
    async with asyncio.timeout(4):  # the fetch timeout is 9 s
        resp = await client.get(f"/api/camera_proxy/{entity_id}")
        assert resp.status == HTTPStatus.INTERNAL_SERVER_ERROR  # HA's answer to any error
        ours = await client.get(f"/api/localcam/snapshot/{entity_id}")
        assert ours.status == HTTPStatus.GATEWAY_TIMEOUT
        assert await ours.text() == "timeout"
    camera.fault = None
    await asyncio.sleep(0.35)  # the newest stuck fetch is past the hedge delay
    async with asyncio.timeout(4):
        assert camera_shown(await entity.async_camera_image()) == 0


async def test_viewers_of_a_hang_get_the_first_frame_after_it_not_the_timeout(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a hung camera answers again, its waiting viewers get a frame, not a 9 s wait.

    The stuck connection stays stuck (as a real one would); the next viewer
    past the hedge delay starts a new fetch, whose frame answers both.
    """
    monkeypatch.setattr(snapshot_cache, "HEDGE_AFTER", 0.5)
    entity_id = await _entity_id(hass, camera, options={CONF_SNAPSHOT_MAX_AGE: 0.2})
    client = await hass_client()
    camera.fault = Fault.HANG
    asked = camera.stats.snapshot_requests
    stuck = asyncio.create_task(client.get(f"/api/camera_proxy/{entity_id}"))
    await camera_asked(camera, asked + 1)  # the stuck fetch has begun
    await asyncio.sleep(0.7)  # past the (patched) hedge delay
    assert not stuck.done()
    camera.fault = None
    async with asyncio.timeout(3):  # the fetch timeout is 9 s
        late = await client.get(f"/api/camera_proxy/{entity_id}")
        first = await stuck
    for resp in (first, late):
        assert resp.status == HTTPStatus.OK
        assert camera_shown(await resp.read()) == 0


async def test_unauthorized_still_starts_reauth(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A 401 on a still raises invalid_auth and starts reauth."""
    entity_id = await _entity_id(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    camera.fault = Fault.UNAUTHORIZED
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "invalid_auth"
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == [SOURCE_REAUTH]


async def test_camera_proxy_over_http(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """HA's /api/camera_proxy serves the still, and a 500 when it is broken."""
    entity_id = await _entity_id(hass, camera, options={CONF_SNAPSHOT_MAX_AGE: 0.2})
    client = await hass_client()
    resp = await client.get(f"/api/camera_proxy/{entity_id}")
    assert resp.status == HTTPStatus.OK
    assert camera_shown(await resp.read()) == 0
    camera.fault = Fault.TRUNCATED_JPEG
    await asyncio.sleep(0.25)
    resp = await client.get(f"/api/camera_proxy/{entity_id}")
    assert resp.status == HTTPStatus.INTERNAL_SERVER_ERROR


async def test_card_size_reaches_the_card_as_cached(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """A dashboard card's sized camera_proxy request gets LocalCam's cached copy as is.

    The frontend asks for its own pixel size. HA's camera_proxy scales
    whatever the entity returns again, on every request, unless 7/8 of it no
    longer covers the request: a TurboJPEG factor alone (160x90 here) would
    have been scaled again to 140x79. LocalCam's copy has the request's
    cover size, so the card gets the very bytes LocalCam's view reports.
    """
    entity_id = await _entity_id(hass, camera, options={CONF_SNAPSHOT_MAX_AGE: 10.0})
    client = await hass_client()
    view = await client.get(f"/api/localcam/snapshot/{entity_id}?width=130&height=74")
    assert view.status == HTTPStatus.OK
    proxied = await client.get(f"/api/camera_proxy/{entity_id}?width=130&height=74")
    assert proxied.status == HTTPStatus.OK
    body = await proxied.read()
    assert Image.open(io.BytesIO(body)).size == (132, 74)
    assert f'"{hashlib.sha256(body).hexdigest()}"' == view.headers["ETag"]
    assert camera_shown(body) == 0


async def test_stream_source_refused_when_dns_turns_public(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A hostname that later resolves outside the LAN yields an error, not a URL."""
    entry, entity_id = await set_up_camera(hass, camera)
    entity = get_camera_from_entity_id(hass, entity_id)
    assert await entity.async_create_stream() is not None  # opened while the name was LAN
    client = entry.runtime_data.client
    # The DNS answer is the edge we do not own: fake it, keep everything else.
    client.policy = NetPolicy(resolver=_resolve_to("203.0.113.5"))
    client.source = replace(
        client.source, stream_url=camera.rtsp_url.replace("127.0.0.1", "cam.lan")
    )
    with pytest.raises(HomeAssistantError) as err:
        await async_get_stream_source(hass, entity_id)
    assert err.value.translation_key == "not_local"
    assert err.value.translation_placeholders == {
        "host": "cam.lan",
        "reason": err.value.translation_placeholders["reason"],
    }
    assert "203.0.113.5" in err.value.translation_placeholders["reason"]
    # Nor does the stream opened before go on: opening it again is the same error.
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_create_stream()
    assert err.value.translation_key == "not_local"


def _resolve_to(address: str) -> Any:
    async def resolve(_host: str, _port: int) -> list[str]:
        return [address]

    return resolve


async def test_entity_refuses_a_frame_of_another_camera(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """Even if a still arrived stamped for another camera, the entity drops it."""
    porch = await _entity_id(hass, camera)
    other = make_entry(rtsp_only_camera, snapshot=False)
    await setup_entry(hass, other)
    entity = get_camera_from_entity_id(hass, porch)
    entity._snapshots = other.runtime_data.cache  # a mix-up the entity must catch
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "foreign_frame"
    # The other camera's frame is now cached and young: the no-await path
    # that serves a warm camera refuses it too.
    hits = other.runtime_data.cache.stats.hits
    with pytest.raises(HomeAssistantError) as err:
        await entity.async_camera_image()
    assert err.value.translation_key == "foreign_frame"
    assert other.runtime_data.cache.stats.hits == hits + 1


async def test_stream_401_starts_reauth(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """When the running stream fails because the camera now answers 401, reauth starts."""
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    async with _running_stream(hass, entity_id, rtsp_only_camera) as stream:
        rtsp_only_camera.fault = Fault.UNAUTHORIZED
        await rtsp_only_camera.restart()  # drops the session; reconnects get 401
        stream._async_update_state(False)  # what HA's worker reports when it drops
        for _ in range(200):
            await hass.async_block_till_done()
            if hass.config_entries.flow.async_progress_by_handler(DOMAIN):
                break
            await asyncio.sleep(0.05)
        flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert [flow["context"]["source"] for flow in flows] == [SOURCE_REAUTH]
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == "unavailable"


async def test_a_stream_change_during_a_check_is_checked_again(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """The stream drops and reconnects while its check runs: one more check follows."""
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    entity = get_camera_from_entity_id(hass, entity_id)
    client = entity._client  # type: ignore[attr-defined]
    real_check = client.check_health
    first_running, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def check(timeout: float = 5.0) -> Target:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_running.set()
            await release.wait()
        return await real_check(timeout)

    async with _running_stream(hass, entity_id, rtsp_only_camera) as stream:
        with patch.object(client, "check_health", side_effect=check):
            stream._async_update_state(False)  # the worker reports a drop: check 1 starts
            async with asyncio.timeout(10):
                await first_running.wait()
            stream._async_update_state(True)  # ... and a reconnect while check 1 runs
            release.set()
            for _ in range(200):
                await hass.async_block_till_done()
                if entity._auth_check is None:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.05)
    assert calls == 2  # the reconnect was checked too, once


async def test_slow_keyframe_falls_back_to_a_grab(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """If the running stream yields no keyframe in time, a fresh grab is made."""
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    entity = get_camera_from_entity_id(hass, entity_id)
    async with _running_stream(hass, entity_id, rtsp_only_camera, wait_playing=False):
        with patch("custom_components.localcam.camera._keyframe_wait", return_value=0.0):
            image = await entity.async_camera_image()
        assert image is not None
        assert camera_shown(image) == 1


async def test_a_still_of_a_watched_long_gop_camera_comes_from_its_stream(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Keyframes 6 s apart ("smart codec"): the still waits for the stream's, no second session.

    A fixed 4 s wait gave up on the stream's keyframe and opened an RTSP
    session of its own for every still while someone watched, which then
    waited for that same keyframe.
    """
    cam = VirtualCamera(camera_config("yard", 4, http_snapshot=False, gop_seconds=6.0))
    await cam.start()
    try:
        entity_id = await _entity_id(hass, cam, snapshot=False)
        entity = get_camera_from_entity_id(hass, entity_id)
        async with _running_stream(hass, entity_id, cam) as stream:
            # HA's HLS output has measured the interval (a segment per keyframe).
            for _ in range(300):
                if stream.outputs()["hls"].target_duration >= 5.5:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.05)
            sessions = cam.stats.play_sessions
            snapshot = await entity.async_snapshot()
            assert snapshot.source is SnapshotSource.STREAM_KEYFRAME
            assert camera_shown(snapshot.jpeg) == 4
            assert cam.stats.play_sessions == sessions
    finally:
        await cam.stop()


@asynccontextmanager
async def _watched_just_after_a_keyframe(hass: HomeAssistant) -> AsyncIterator[Any]:
    """A camera with keyframes 4.5 s apart, watched live, just after a keyframe: its entity.

    Its earlier still came fast (a new RTSP session starts on a keyframe), so
    its stall time is the 3 s floor; its warm RTSP session has closed; the
    stream's next keyframe is about 4.5 s away.
    """
    cam = VirtualCamera(camera_config("yard", 4, http_snapshot=False, gop_seconds=4.5))
    await cam.start()
    try:
        entity_id = await _entity_id(hass, cam, snapshot=False)
        entity = get_camera_from_entity_id(hass, entity_id)
        assert (await entity.async_snapshot()).source is SnapshotSource.RTSP_GRAB  # type: ignore[attr-defined]
        assert entity._snapshots.stall_after == snapshot_cache.STALL_FLOOR  # type: ignore[attr-defined]
        async with _running_stream(hass, entity_id, cam) as stream:
            hls: Any = stream.outputs()["hls"]
            # Two segments: the first is complete, and the interval measured.
            await _until(lambda: len(hls.get_segments()) >= 2, 20)
            assert hls.target_duration >= 4.0
            await _until(lambda: not entity._client.grabber.active, 20)  # type: ignore[attr-defined]
            sequence = hls.last_segment.sequence
            await _until(lambda: hls.last_segment.sequence != sequence, 10)
            yield entity, cam
    finally:
        await cam.stop()


async def test_a_watched_long_gop_camera_s_still_outwaits_the_stall_floor(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Someone watches a camera whose keyframes are 4.5 s apart: a still waits for the next one.

    A still taken from the running stream just after a keyframe waits most
    of 4.5 s for the next, past the camera's 3 s stall time. HA's stream kept
    receiving meanwhile (its parts arrive every second), but only LocalCam's
    own RTSP session told the cache so: the still was given up as a stalled
    camera (a 504) while the camera was sending.
    """
    async with _watched_just_after_a_keyframe(hass) as (entity, _cam):
        started = time.monotonic()
        snapshot = await entity.async_snapshot()
        waited = time.monotonic() - started
    assert snapshot.source is SnapshotSource.STREAM_KEYFRAME
    assert camera_shown(snapshot.jpeg) == 4
    assert waited > snapshot_cache.STALL_FLOOR  # it did outwait the floor


async def test_a_watched_camera_that_stops_sending_is_still_given_up_soon(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The stream runs but the camera sends nothing more: the still fails at its stall time.

    Only the stream moving counts as the camera sending, not the stream
    merely running: a hung camera's still is an error within a look or two,
    not after the stream's whole keyframe wait and a grab of its own.
    """
    async with _watched_just_after_a_keyframe(hass) as (entity, cam):
        cam.fault = Fault.HANG  # RTP to playing clients pauses; requests go unanswered
        started = time.monotonic()
        with pytest.raises(HomeAssistantError, match="in time"):
            await entity.async_snapshot()
        waited = time.monotonic() - started
        cam.fault = None
    # One look may still see the parts that were under way: two floors at most.
    assert waited < 2 * snapshot_cache.STALL_FLOOR + 1.0


async def test_stream_that_reaches_another_device_is_stopped(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """A failing stream whose address now answers with another MAC is stopped."""
    entry = make_entry(rtsp_only_camera, snapshot=False)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"}}
    )
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    entity_id = main_entity_id(hass, entry)
    async with _running_stream(hass, entity_id, rtsp_only_camera) as stream:
        assert stream.pyav_options["probesize"] == "32"  # probing off, as the flow proved safe
        # The kernel's neighbour table (the edge) now names another device.
        with patch(
            "custom_components.localcam.core.snapshot.neighbour_mac",
            return_value="aa:bb:cc:00:11:99",
        ):
            await rtsp_only_camera.restart()
            # What HA's worker reports when the session drops (its timing is
            # HA's business; LocalCam's reaction to it is what is tested).
            stream._async_update_state(False)
            for _ in range(200):
                await hass.async_block_till_done()
                if not stream.outputs():
                    break
                await asyncio.sleep(0.05)
            assert not stream.outputs()  # stopped: it will not show the other device
            state = hass.states.get(entity_id)
            assert state is not None
            assert state.state == "unavailable"


async def test_a_stream_whose_camera_redirects_it_elsewhere_is_stopped(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """The camera now answers DESCRIBE with a redirect: HA's FFmpeg would follow it, unchecked.

    LocalCam's check never follows one; the stream is stopped rather than left
    to reconnect to wherever the camera points, and the camera shows unavailable.
    """
    entity_id = await _entity_id(hass, rtsp_only_camera, snapshot=False)
    async with _running_stream(hass, entity_id, rtsp_only_camera) as stream:
        rtsp_only_camera.fault = Fault.REDIRECT
        await rtsp_only_camera.restart()
        stream._async_update_state(False)  # what HA's worker reports when it drops
        await _until(lambda: not stream.outputs())
        await hass.async_block_till_done()
        state = hass.states.get(entity_id)
        assert state is not None
        assert state.state == "unavailable"
        entity = get_camera_from_entity_id(hass, entity_id)
        assert entity.coordinator.last_exception is not None  # type: ignore[attr-defined]
        assert "RTSP 302" in str(entity.coordinator.last_exception.__cause__)  # type: ignore[attr-defined]


def test_profile_name_falls_back_to_the_token() -> None:
    """A profile missing from the entry's list is named by its token."""
    from pytest_homeassistant_custom_component.common import MockConfigEntry

    from custom_components.localcam.camera import _profile_name

    entry = MockConfigEntry(domain=DOMAIN, data={"profiles": [{"token": "sub", "name": "Sub"}]})
    assert _profile_name(entry, "sub") == "Sub"
    assert _profile_name(entry, "other") == "other"


@asynccontextmanager
async def _moved_camera(
    hass: HomeAssistant, *, watched: bool = False, credentials: bool = True
) -> AsyncIterator[tuple[Any, VirtualCamera, VirtualCamera]]:
    """Camera A, known as porch.test, with a stream opened; A moves, B takes A's old address.

    Yields (A's entity, A at its new address 127.0.0.2, B at A's old 127.0.0.1).
    DNS and the kernel's neighbour table are the edge: both follow the move.
    ``watched``: someone watches the stream (HLS, its worker playing from A)
    before A moves. ``credentials``: the cameras ask for them (the default).
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"], allow_unix_socket=True)
    dns = {"porch.test": "127.0.0.1"}
    link = {"127.0.0.1": MAC_A}

    async def resolve(host: str, _port: int) -> list[str]:
        return [dns[host]]

    def config(color: int, host: str, port: int = 0) -> CameraConfig:
        auth = {} if credentials else {"username": None, "password": None}
        return camera_config(
            f"c{color}", color, host=host, rtsp_port=port, http_snapshot=False, **auth
        )

    a = VirtualCamera(config(0, "127.0.0.1"))
    await a.start()
    moved = other = None
    with (
        patch("custom_components.localcam.core.netpolicy.system_resolve", resolve),
        patch(
            "custom_components.localcam.core.snapshot.neighbour_mac",
            lambda address, *_: link.get(str(address)),
        ),
    ):
        data = entry_data(a, snapshot=False)
        data[CONF_STREAM_URL] = f"rtsp://porch.test:{a.rtsp_port}/stream"
        data[CONF_IDENTITY] = {"mac": MAC_A}
        if not credentials:
            data[CONF_USERNAME] = data[CONF_PASSWORD] = None
        entry = MockConfigEntry(
            domain=DOMAIN, title="porch", unique_id=data[CONF_CAMERA_ID], data=data
        )
        await setup_entry(hass, entry)
        entity = get_camera_from_entity_id(hass, main_entity_id(hass, entry))
        try:
            stream = await entity.async_create_stream()
            assert stream is not None
            assert _relayed_to(entity, stream.source).startswith("127.0.0.1:")
            if watched:
                stream.add_provider("hls")
                await stream.start()
                await _until(lambda: a.stats.active_play_sessions == 1)
            await a.stop()
            moved = VirtualCamera(config(0, "127.0.0.2", a.rtsp_port))
            other = VirtualCamera(config(5, "127.0.0.1", a.rtsp_port))
            await moved.start()
            await other.start()
            dns["porch.test"] = "127.0.0.2"
            link.update({"127.0.0.2": MAC_A, "127.0.0.1": MAC_B})
            yield entity, moved, other
        finally:
            await hass.config_entries.async_unload(entry.entry_id)
            for cam in (moved, other):
                if cam is not None:
                    await cam.stop()


MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


async def test_a_still_never_comes_from_a_stream_left_on_the_old_address(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera known by host name moved; its stream, opened before, is on the old address.

    A still from that stream's keyframe would be whatever answers there now
    (B) under A's name: the stream is pointed at the address the fetch just
    checked instead, and this still is grabbed from there. (HA's worker is not
    started here: the stream's address, not its pictures, is what is checked.)
    """
    async with _moved_camera(hass) as (entity, moved, other):
        stream = entity.stream
        async with _watching(stream):
            snapshot = await entity.async_snapshot()
            assert camera_shown(snapshot.jpeg) == 0  # A's colour, never B's (5)
            assert snapshot.source.value == "rtsp_grab"
            assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
            assert moved.stats.play_sessions == 1
            assert other.stats.play_sessions == 0


async def test_a_health_check_points_the_stream_at_the_camera_s_new_address(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """After the minute's health check (which resolves the host anew) the stream follows too."""
    async with _moved_camera(hass) as (entity, moved, other):
        await entity.coordinator.async_refresh()
        await hass.async_block_till_done()
        assert entity.coordinator.last_update_success
        stream = entity.stream
        assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
        # And a viewer opening it now gets the same stream, on the new address;
        # when the viewer leaves, HA's own stop ends it (no restart left pending).
        assert await entity.async_create_stream() is stream
        provider = stream.add_provider("hls")
        await stream.start()
        await _until(lambda: moved.stats.active_play_sessions == 1)
        async with asyncio.timeout(30):
            await stream.remove_provider(provider)
        assert other.stats.play_sessions == 0
        await _until(lambda: moved.stats.active_play_sessions == 0)


@asynccontextmanager
async def _watching(stream: Stream) -> AsyncIterator[None]:
    """Someone watches the stream (an HLS output, its worker not started) for the block."""
    provider = stream.add_provider("hls")
    try:
        yield
    finally:
        await stream.remove_provider(provider)


def _flapping_dns() -> Any:
    """The moved camera's name answers its new address once, then the old one (B's now)."""
    answers = iter(["127.0.0.2"])

    async def flapping(_host: str, _port: int) -> list[str]:
        return [next(answers, "127.0.0.1")]

    return patch("custom_components.localcam.core.netpolicy.system_resolve", flapping)


async def test_a_stream_check_pins_the_stream_to_the_address_it_checked(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The stream follows the address the check proved to be A, not a later DNS answer.

    The host name resolves to A's new address for the check, then (round-robin,
    a flapping record) to the old one, where B answers now. A second lookup
    after the check would pin the stream to B's address, never checked.
    """
    async with _moved_camera(hass) as (entity, _moved, other):
        stream = entity.stream
        async with _watching(stream):
            with _flapping_dns():
                stream._async_update_state(False)  # the worker reports a drop: a check runs
                await _until(lambda: entity._auth_check is None)  # type: ignore[attr-defined]
            # Where the check found A.
            assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
            assert other.stats.play_sessions == 0


async def test_a_health_check_pins_the_stream_to_the_address_it_checked(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The minute's check, too, hands the stream the address it proved, with no second lookup."""
    async with _moved_camera(hass) as (entity, _moved, _other):
        with _flapping_dns():
            await entity.coordinator.async_refresh()
            await hass.async_block_till_done()
        assert entity.coordinator.last_update_success
        assert _relayed_to(entity, entity.stream.source).startswith("127.0.0.2:")


async def test_a_grabbed_still_comes_from_the_address_that_was_checked(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """Nobody watches: the still is an RTSP grab, from the very address its check proved.

    The host name answers A's new address for the check (MAC_A there), then
    (round-robin, a flapping record) the old one, where B answers now. A
    second lookup for the grab would connect to B and serve B's frame as A's.
    """
    async with _moved_camera(hass) as (entity, moved, other):
        with _flapping_dns():
            snapshot = await entity.async_snapshot()
        assert snapshot.source.value == "rtsp_grab"
        assert camera_shown(snapshot.jpeg) == 0  # A's colour, never B's (5)
        assert moved.stats.play_sessions == 1
        assert other.stats.play_sessions == 0


@pytest.mark.parametrize("credentials", [False, True])
async def test_a_warm_grab_session_on_a_refused_device_is_never_reused(
    hass: HomeAssistant, socket_enabled: None, credentials: bool
) -> None:
    """A stale DNS answer points a grab at B; B's frame is refused, its session ends.

    Without credentials the session is opened on B and stays warm for its
    linger. When the name points at A again, the next still is grabbed from
    A through a new session; B's keyframe, however young, is never served as
    A's. With credentials the relay sends B nothing at all: its link shows
    another MAC once connected, before FFmpeg's first request (which may
    carry the camera's credentials) is relayed.
    """
    async with _moved_camera(hass, credentials=credentials) as (entity, moved, other):
        resolved = {"porch.test": "127.0.0.1"}  # stale: B answers there (MAC_B)

        async def resolve(host: str, _port: int) -> list[str]:
            return [resolved[host]]

        with patch("custom_components.localcam.core.netpolicy.system_resolve", resolve):
            with pytest.raises(HomeAssistantError) as err:
                await entity.async_snapshot()
            assert err.value.translation_key == "identity_mismatch"
            assert other.stats.play_sessions == 0  # the relay checks the link either way
            assert other.stats.credentialed_requests == 0
            resolved["porch.test"] = "127.0.0.2"  # right again: A
            snapshot = await entity.async_snapshot()
        assert camera_shown(snapshot.jpeg) == 0
        assert moved.stats.play_sessions == 1
        await _until(lambda: other.stats.active_play_sessions == 0)  # B's session was ended


async def test_a_watched_stream_follows_its_moved_camera_and_keeps_its_viewers(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """A camera known by host name moves while someone watches: the stream follows it.

    HA's worker loses A, reports the drop and waits out its restart backoff
    (10 s) before it retries. The check LocalCam runs on the drop, and the
    minute's health check, point the stream at A's new address then. A
    restart requested during that wait (``update_source``) would end HA's
    worker instead, and HA would drop the viewers' HLS output with it, leaving
    the restart pending for the next stop to run instead of stopping.
    """
    async with _moved_camera(hass, watched=True) as (entity, moved, other):
        stream = entity.stream
        # The worker sees A go (the check on that drop may already pin the stream).
        await _until(
            lambda: not stream.available or "127.0.0.2:" in _relayed_to(entity, stream.source)
        )
        await entity.coordinator.async_refresh()  # the minute's check: A is at 127.0.0.2
        await hass.async_block_till_done()
        assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
        # The viewers' output stays, and the worker's retry plays from A's new address.
        await _until(lambda: moved.stats.active_play_sessions == 1, seconds=30)
        assert "hls" in stream.outputs()
        assert other.stats.play_sessions == 0
        # When the viewers leave, HA's own stop ends it: no restart was left pending.
        async with asyncio.timeout(30):
            await stream.remove_provider(stream.outputs()["hls"])
        await _until(lambda: moved.stats.active_play_sessions == 0)


async def _playing_unheard(entity: Any, other: VirtualCamera) -> Stream:
    """The stream, someone watching, playing from its old URL (B answers there).

    Started before LocalCam hears of the start: its check of a start would
    point the stream at A at once. So the worker plays B, as a retry that
    began just before a re-pin does. (The relay checks each session's link:
    this one connected while the link still showed A there, just before B
    took the address.)
    """
    stream: Stream = entity.stream
    stream.add_provider("hls")
    stream.set_update_callback(lambda: None)
    with patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=MAC_A):
        await stream.start()
        await _until(lambda: other.stats.active_play_sessions == 1)
    stream.set_update_callback(entity._async_stream_state_changed)
    return stream


async def test_a_retry_begun_on_the_old_address_never_plays_on_from_there(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The stream reads as unavailable while a retry has already begun on the old URL.

    (Its availability reaches the event loop a turn late.) LocalCam then only
    hands the worker the new URL for its next retry, and closes the relay to
    the old address: the session there (B's, under A's name) ends at once,
    and the next retry plays A from its new address. (The session there began
    while the link still showed A's MAC at that address: the relay's check of
    each session passed it, just before B took the address.)
    """
    async with _moved_camera(hass, credentials=False) as (entity, moved, other):
        stream = await _playing_unheard(entity, other)  # the retry on the old URL
        stream._async_update_state(False)  # the report of the drop before it, arriving late
        await _until(lambda: entity._auth_check is None)  # type: ignore[attr-defined]
        assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
        # B's session ends now, not after HA's backoff; then A plays, to the same viewers.
        await _until(lambda: other.stats.active_play_sessions == 0, seconds=5)
        await _until(lambda: moved.stats.active_play_sessions == 1, seconds=30)
        assert "hls" in stream.outputs()
        assert other.stats.play_sessions == 1  # only the session that had begun


async def test_an_unload_right_after_the_stream_followed_its_camera_ends_it(
    hass: HomeAssistant, socket_enabled: None
) -> None:
    """The stream restarts on the new address, and the entry unloads at once: the unload ends.

    Home Assistant's worker reads a stop right after update_source as the
    restart and runs on; LocalCam's stop clears that restart first. (Without
    credentials, so that the worker can play B: see the test above.)
    """
    async with _moved_camera(hass, credentials=False) as (entity, moved, other):
        stream = await _playing_unheard(entity, other)
        # A viewer opens it: it follows A (update_source), and at once the entry unloads.
        assert await entity.async_create_stream() is stream
        assert _relayed_to(entity, stream.source).startswith("127.0.0.2:")
        async with asyncio.timeout(30):
            assert await hass.config_entries.async_unload(entity.coordinator.config_entry.entry_id)
        await _until(
            lambda: moved.stats.active_play_sessions == other.stats.active_play_sessions == 0
        )


async def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait (at most ``seconds``) until ``condition`` holds."""
    # The emulator's counters change on its own loop callbacks.
    for _ in range(round(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {seconds} s")


async def test_a_camera_that_drops_its_rtsp_session_is_not_reported_as_having_no_video(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    rtsp_only_camera: VirtualCamera,
) -> None:
    """A warm RTSP session the camera closes (a drop, a reboot) is no "no video" error.

    The session had delivered keyframes: the camera's connection ended, its
    stream did not lack video. The still goes to a new session (as when the
    session ends at its linger) or, failing that, is ``cannot_connect``.
    """
    cam = rtsp_only_camera
    entry = make_entry(cam, snapshot=False, options={CONF_SNAPSHOT_MAX_AGE: 0.3})
    await setup_entry(hass, entry)
    entity_id = er.async_get(hass).async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_main")
    client = await hass_client()
    url = f"/api/localcam/snapshot/{entity_id}"
    assert (await client.get(url)).status == HTTPStatus.OK  # the warm session is open
    cam.fault = Fault.DROP  # its connection closes about 1 s from now
    answers: list[tuple[int, str]] = []
    started = time.monotonic()
    for _ in range(40):  # bounded: about 4 s of a card refreshing
        if time.monotonic() - started > 4.0:
            break
        resp = await client.get(url)
        text = "" if resp.status == HTTPStatus.OK else await resp.text()
        answers.append((resp.status, text))
        if resp.status == HTTPStatus.OK:
            assert float(resp.headers["X-LocalCam-Age"]) <= 0.3
        await asyncio.sleep(0.1)
    assert "no_video" not in {text for _status, text in answers}, answers


async def test_a_healthy_camera_between_keyframes_is_not_reported_as_hung(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """A camera that sends a keyframe on connect and then one every 6 s is not "timeout".

    Its first still comes at once (the keyframe on connect), so its slowest
    still so far is a fraction of a second and a viewer's stall time is the
    3 s floor. A still asked for a second later waits in the open RTSP session
    for the next keyframe, up to 5 s more, while the camera sends the rest of
    its stream all along: that camera answers; it is no hang, and the still
    comes well within the 9 s limit. A camera that hangs is still an error.
    """
    cam = VirtualCamera(
        camera_config("gate", 4, http_snapshot=False, gop_seconds=6.0, keyframe_on_connect=True)
    )
    await cam.start()
    try:
        entry = make_entry(cam, snapshot=False, options={CONF_SNAPSHOT_MAX_AGE: 1.0})
        await setup_entry(hass, entry)
        entity_id = er.async_get(hass).async_get_entity_id(
            "camera", DOMAIN, f"{entry.unique_id}_main"
        )
        client = await hass_client()
        url = f"/api/localcam/snapshot/{entity_id}"
        started = time.monotonic()
        assert (await client.get(url)).status == HTTPStatus.OK
        assert time.monotonic() - started < 2.0  # the keyframe on connect
        await asyncio.sleep(1.2)  # past max age; the session stays open (linger 5 s)
        resp = await client.get(url)
        assert resp.status == HTTPStatus.OK, await resp.text()
        assert float(resp.headers["X-LocalCam-Age"]) <= 1.0
        # A hang (no packets at all) is still an error, within the still's 9 s limit.
        cam.fault = Fault.HANG
        await asyncio.sleep(1.1)
        started = time.monotonic()
        resp = await client.get(url)
        assert resp.status == HTTPStatus.GATEWAY_TIMEOUT
        assert time.monotonic() - started < 9.5
    finally:
        await cam.stop()
