"""Stills requested while the camera's entry unloads: an answer, never a dropped connection.

The virtual camera (the edge LocalCam does not own) hangs or answers on
loopback; everything from the view to the snapshot cache is LocalCam's own.
"""

import asyncio
import gc
from http import HTTPStatus

from homeassistant.components.camera.const import DATA_COMPONENT
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.localcam.camera import LocalCamCamera
from custom_components.localcam.cast import DATA_CAST
from custom_components.localcam.cast_views import _async_snapshot
from custom_components.localcam.core.cast_links import CastGrant, CastMode
from virtualcam import Fault, VirtualCamera

from .conftest import camera_asked, set_up_camera

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


def _entity(hass: HomeAssistant, entity_id: str) -> LocalCamCamera:
    entity = hass.data[DATA_COMPONENT].get_entity(entity_id)
    assert isinstance(entity, LocalCamCamera)
    return entity


async def _loaded(
    hass: HomeAssistant, camera: VirtualCamera
) -> tuple[MockConfigEntry, LocalCamCamera]:
    """The camera's entry, set up, and its main entity."""
    entry, entity_id = await set_up_camera(hass, camera)
    return entry, _entity(hass, entity_id)


async def test_a_still_in_flight_at_unload_is_answered_503(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    camera: VirtualCamera,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Full and scaled requests waiting on a hung camera get 503 when the entry unloads."""
    entry, entity_id = await set_up_camera(hass, camera)
    client = await hass_client()
    camera.fault = Fault.HANG
    asked = camera.stats.snapshot_requests
    url = f"/api/localcam/snapshot/{entity_id}"
    requests = [
        asyncio.create_task(client.get(url)),
        asyncio.create_task(client.get(url)),  # coalesced on the same fetch
        asyncio.create_task(client.get(f"{url}?width=160&height=90")),  # waits on the full frame
    ]
    await camera_asked(camera, asked + 1)
    await asyncio.sleep(0.1)  # every request is now waiting on the one fetch
    assert not any(request.done() for request in requests)

    assert await hass.config_entries.async_unload(entry.entry_id)

    async with asyncio.timeout(5):
        responses = await asyncio.gather(*requests)
    for resp in responses:
        assert resp.status == HTTPStatus.SERVICE_UNAVAILABLE
        assert await resp.text() == "cannot_connect"
    # The coalesced requests shared one fetch; the unload ended it.
    assert camera.stats.snapshot_requests == asked + 1
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_the_cast_still_in_flight_at_unload_is_answered_404(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The cast view's still goes through the same cache: answered, not a CancelledError.

    The unload fails the cache's waiters and revokes the camera's cast links,
    so the request gets the ended cast's 404 rather than a dropped connection.
    """
    entry, entity = await _loaded(hass, camera)
    manager = hass.data[DATA_CAST]
    token = manager.links.issue(
        CastGrant(
            camera_id=entity.camera_id,
            receiver="media_player.kitchen",
            mode=CastMode.SNAPSHOT,
            stream=entity.unique_id or "",
        ),
        duration=None,
    )
    camera.fault = Fault.HANG
    asked = camera.stats.snapshot_requests
    pending = asyncio.create_task(_async_snapshot(manager, entity, token))
    await camera_asked(camera, asked + 1)

    assert await hass.config_entries.async_unload(entry.entry_id)

    async with asyncio.timeout(5):
        resp = await pending
    assert resp.status == HTTPStatus.NOT_FOUND
    assert manager.links.resolve(token) is None


async def test_a_request_that_is_itself_cancelled_still_ends_cancelled(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Only the unload becomes an error: a request cancelled by its client stays cancelled."""
    entry, entity = await _loaded(hass, camera)
    camera.fault = Fault.HANG
    asked = camera.stats.snapshot_requests
    leaving = asyncio.create_task(entity.async_snapshot())
    staying = asyncio.create_task(entity.async_snapshot())
    await camera_asked(camera, asked + 1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert not staying.done()  # the other viewer's fetch goes on

    assert await hass.config_entries.async_unload(entry.entry_id)

    with pytest.raises(HomeAssistantError) as caught:
        async with asyncio.timeout(5):
            await staying
    assert caught.value.translation_key == "cannot_connect"


async def test_an_entity_kept_past_unload_fetches_nothing(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A request that found the entity just before unload gets the error at once, no network."""
    entry, entity = await _loaded(hass, camera)
    assert (await entity.async_snapshot()).jpeg  # the camera works
    assert await hass.config_entries.async_unload(entry.entry_id)
    before = (
        camera.stats.snapshot_requests,
        camera.stats.http_connections,
        camera.stats.rtsp_connections,
    )

    for size in ((None, None), (160, 90)):
        with pytest.raises(HomeAssistantError) as caught:
            async with asyncio.timeout(1):
                await entity.async_snapshot(*size)
        assert caught.value.translation_key == "cannot_connect"

    await asyncio.sleep(0.2)  # nothing started in the background either
    after = (
        camera.stats.snapshot_requests,
        camera.stats.http_connections,
        camera.stats.rtsp_connections,
    )
    assert after == before
