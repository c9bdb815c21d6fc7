"""LocalCam's own still endpoint: provenance headers, ETag/304, errors."""

import asyncio
from datetime import UTC, datetime
from http import HTTPStatus
import io
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.localcam.const import CONF_SNAPSHOT_MAX_AGE, DOMAIN
from virtualcam import Fault, VirtualCamera, color_for, nearest_camera

from .conftest import make_entry, setup_entry

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


async def _setup(hass: HomeAssistant, cam: VirtualCamera) -> tuple[str, str]:
    entry = make_entry(cam, options={CONF_SNAPSHOT_MAX_AGE: 0.3})
    await setup_entry(hass, entry)
    unique_id = f"{entry.unique_id}_main"
    entity_id = er.async_get(hass).async_get_entity_id("camera", DOMAIN, unique_id)
    assert entity_id is not None
    return entity_id, unique_id


async def test_snapshot_with_provenance(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """The still comes with its camera, capture time, source, ETag and no-store."""
    entity_id, unique_id = await _setup(hass, camera)
    client = await hass_client()
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}")
    assert resp.status == HTTPStatus.OK
    assert resp.content_type == "image/jpeg"
    assert resp.headers["X-LocalCam-Camera"] == unique_id
    assert resp.headers["X-LocalCam-Source"] == "snapshot_url"
    assert resp.headers["Cache-Control"] == "no-store"
    captured = datetime.fromisoformat(resp.headers["X-LocalCam-Captured-At"])
    assert 0 <= (datetime.now(UTC) - captured).total_seconds() < 0.3
    assert 0 <= float(resp.headers["X-LocalCam-Age"]) < 0.3
    body = await resp.read()
    image = Image.open(io.BytesIO(body)).convert("RGB")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    assert nearest_camera((pixel[0], pixel[1], pixel[2]), [color_for(i) for i in range(64)]) == 0

    etag = resp.headers["ETag"]
    await asyncio.sleep(0.1)
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}", headers={"If-None-Match": etag})
    assert resp.status == HTTPStatus.NOT_MODIFIED
    assert await resp.read() == b""
    # The same frame, older now: its age as sent, not as first served.
    assert 0.1 <= float(resp.headers["X-LocalCam-Age"]) <= 0.3
    # RFC 9110 15.4.5: ETag and Cache-Control again; the representation's
    # metadata (camera, capture time, source) stays with the 200.
    assert resp.headers["ETag"] == etag
    assert resp.headers["Cache-Control"] == "no-store"
    for name in ("X-LocalCam-Camera", "X-LocalCam-Captured-At", "X-LocalCam-Source"):
        assert name not in resp.headers
    await asyncio.sleep(0.35)  # past max age: a new frame, a new ETag
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}", headers={"If-None-Match": etag})
    assert resp.status == HTTPStatus.OK
    assert resp.headers["ETag"] != etag
    # Each frame its own provenance, not the last frame's headers again.
    assert datetime.fromisoformat(resp.headers["X-LocalCam-Captured-At"]) > captured
    assert resp.headers["X-LocalCam-Camera"] == unique_id
    assert float(resp.headers["X-LocalCam-Age"]) < 0.3


async def test_revalidation_follows_rfc_9110(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """If-None-Match: a weak tag, "*", a list or a second header naming the frame: 304."""
    entry = make_entry(camera, options={CONF_SNAPSHOT_MAX_AGE: 10.0})
    await setup_entry(hass, entry)
    entity_id = er.async_get(hass).async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_main")
    client = await hass_client()
    url = f"/api/localcam/snapshot/{entity_id}"
    etag = (await client.get(url)).headers["ETag"]
    for headers in (
        [("If-None-Match", f"W/{etag}")],
        [("If-None-Match", "*")],
        [("If-None-Match", f'"other", {etag}')],
        [("If-None-Match", '"other"'), ("If-None-Match", etag)],
    ):
        resp = await client.get(url, headers=headers)
        assert resp.status == HTTPStatus.NOT_MODIFIED, headers
        assert resp.headers["ETag"] == etag
    resp = await client.get(url, headers={"If-None-Match": 'W/"other", "another"'})
    assert resp.status == HTTPStatus.OK


async def test_sizes(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """width+height scale the still; half a size or junk is a 400."""
    entity_id, _ = await _setup(hass, camera)
    client = await hass_client()
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}?width=160&height=90")
    assert resp.status == HTTPStatus.OK
    assert Image.open(io.BytesIO(await resp.read())).width < 320
    for query in (
        "width=160",
        "width=abc&height=2",
        "width=0&height=0",
        "width=99999&height=1",
        "width=%C2%B2&height=2",  # a superscript two: a digit to str.isdigit, not to int()
        f"width={'1' * 5000}&height=2",  # more digits than int() converts
    ):
        resp = await client.get(f"/api/localcam/snapshot/{entity_id}?{query}")
        assert resp.status == HTTPStatus.BAD_REQUEST, query


async def test_errors_and_scope(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    hass_client_no_auth: ClientSessionGenerator,
    camera: VirtualCamera,
) -> None:
    """A broken still is a 502, a hang a 504, other entities 404, no token 401."""
    entity_id, _ = await _setup(hass, camera)
    client = await hass_client()
    camera.fault = Fault.TRUNCATED_JPEG
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}")
    assert resp.status == HTTPStatus.BAD_GATEWAY
    assert await resp.text() == "invalid_image"
    camera.fault = Fault.HANG
    entry = hass.config_entries.async_entries(DOMAIN)[0]
    entry.runtime_data.client.timeout = 0.5
    await asyncio.sleep(0.35)
    resp = await client.get(f"/api/localcam/snapshot/{entity_id}")
    assert resp.status == HTTPStatus.GATEWAY_TIMEOUT
    resp = await client.get("/api/localcam/snapshot/camera.does_not_exist")
    assert resp.status == HTTPStatus.NOT_FOUND
    anonymous = await hass_client_no_auth()
    resp = await anonymous.get(f"/api/localcam/snapshot/{entity_id}")
    assert resp.status == HTTPStatus.UNAUTHORIZED


async def test_a_user_who_may_not_read_the_camera_gets_no_picture(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    hass_admin_user: Any,
    camera: VirtualCamera,
) -> None:
    """A non-admin whose policy leaves the camera out: 401, as HA's states API answers them."""
    assert await async_setup_component(hass, "api", {})
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    entity_id = er.async_get(hass).async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_main")
    assert entity_id is not None
    client = await hass_client()
    assert (await client.get(f"/api/localcam/snapshot/{entity_id}")).status == HTTPStatus.OK
    # The same token's user, now allowed to read only a light.
    hass_admin_user.groups = []
    hass_admin_user.mock_policy({"entities": {"entity_ids": {"light.kitchen": True}}})
    assert (await client.get(f"/api/states/{entity_id}")).status == HTTPStatus.UNAUTHORIZED
    response = await client.get(f"/api/localcam/snapshot/{entity_id}")
    assert response.status == HTTPStatus.UNAUTHORIZED
    assert response.content_type != "image/jpeg"
    # Whether the camera exists or not: the same answer.
    missing = await client.get("/api/localcam/snapshot/camera.nothing_here")
    assert missing.status == HTTPStatus.UNAUTHORIZED
