"""Shared fixtures for LocalCam's Home Assistant tests."""

import asyncio
import base64
from collections.abc import AsyncIterator, Generator
import io
import logging
import os
from pathlib import Path
import ssl
import time
from typing import Any
from urllib.parse import quote

from homeassistant.config_entries import SOURCE_USER, ConfigEntry
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

# Home Assistant resolves the top-level `custom_components` package once. Import
# ours before any `hass` fixture runs, or HA finds the test plugin's own
# `custom_components` and reports "Integration not found".
import custom_components.localcam  # noqa: F401
from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_CODEC,
    CONF_HEIGHT,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    CONF_WIDTH,
    DOMAIN,
)
from custom_components.localcam.core.netpolicy import normalized_identity
from virtualcam import CameraConfig, VirtualCamera, color_for, nearest_camera
from virtualcam.tls import self_signed

# No LocalCam network scan may multicast on a real interface from a test;
# discovery tests that need scans run them inside their own namespaces.
os.environ["LOCALCAM_DISABLE_NETWORK_SCANS"] = "1"

CAM_USER = "viewer"
CAM_PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Load custom integrations in every test."""


@pytest.fixture(autouse=True)
def _no_blocking_io(disable_block_async_io: None) -> None:
    """Fail a test that does blocking I/O in the event loop.

    phcc leaves Home Assistant's blocking-I/O detector off; LocalCam turns it on
    (phcc's ``disable_block_async_io`` undoes it after the test).
    """
    from homeassistant import block_async_io

    block_async_io.enable()


@pytest.fixture
def entity_registry_enabled_by_default() -> Generator[None]:
    """Create every entity enabled, including those disabled by default."""
    from unittest.mock import patch

    with patch(
        "homeassistant.helpers.entity.Entity.entity_registry_enabled_default",
        return_value=True,
    ):
        yield


# The test password as it could leak: plain, percent-encoded in a URL, or in a
# Basic Authorization header.
_SECRET_FORMS = (
    CAM_PASSWORD,
    quote(CAM_PASSWORD, safe=""),
    base64.b64encode(f"{CAM_USER}:{CAM_PASSWORD}".encode()).decode(),
)


@pytest.fixture(autouse=True)
def secrets_absent_from_logs(caplog: pytest.LogCaptureFixture) -> Generator[None]:
    """After every test of the suite, assert no log record carries a camera password.

    Nor HA's report that LocalCam calls something deprecated.

    Every phase's records: after the yield (teardown) ``caplog.records``
    holds only the teardown's own, so the test's and its fixtures' set-up
    records are read from their phases. A WS-Security header (a password
    digest that can be guessed offline) counts as a leak too.
    """
    caplog.set_level(logging.DEBUG)
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    for record in records:
        # HA's report of a deprecated call ("will stop working in ...").
        assert not record.getMessage().startswith("Detected that custom integration 'localcam'"), (
            record.getMessage()
        )
        texts = [record.getMessage(), record.exc_text or ""]
        for text in texts:
            for secret in (*_SECRET_FORMS, "PasswordDigest"):
                assert secret not in text, f"a credential leaked into a log: {record.name}"


def camera_shown(jpeg: bytes, cameras: int = 64) -> int:
    """Which virtual camera a JPEG shows: the palette colour nearest its centre.

    The image is decoded in full first, so a truncated JPEG fails here.
    """
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    rgb = image.convert("RGB")
    pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    assert isinstance(pixel, tuple)
    return nearest_camera((pixel[0], pixel[1], pixel[2]), [color_for(i) for i in range(cameras)])


def camera_config(name: str, index: int, **settings: Any) -> CameraConfig:
    """A small (320x180) virtual camera in palette colour ``index``, with the test credentials.

    ``settings`` set any other field, or override these (colour and credentials included).
    """
    defaults: dict[str, Any] = {
        "color": color_for(index),
        "username": CAM_USER,
        "password": CAM_PASSWORD,
        "width": 320,
        "height": 180,
    }
    return CameraConfig(name=name, **{**defaults, **settings})


@pytest.fixture
async def camera(socket_enabled: None) -> AsyncIterator[VirtualCamera]:
    """A virtual camera on 127.0.0.1 with Digest auth and an HTTP snapshot."""
    cam = VirtualCamera(camera_config("porch", 0))
    await cam.start()
    yield cam
    await cam.stop()


@pytest.fixture
async def rtsp_only_camera(socket_enabled: None) -> AsyncIterator[VirtualCamera]:
    """A virtual camera with only an RTSP stream (no snapshot URL)."""
    cam = VirtualCamera(camera_config("garage", 1, http_snapshot=False))
    await cam.start()
    yield cam
    await cam.stop()


@pytest.fixture
async def rtsps_camera(
    socket_enabled: None, quiet_tls_rejects: None, tmp_path: Path
) -> AsyncIterator[VirtualCamera]:
    """An RTSP-only camera serving rtsps:// with a self-signed certificate, as most do."""
    cert, key = await asyncio.to_thread(self_signed, tmp_path, "127.0.0.1")
    cam = VirtualCamera(
        camera_config("gate", 2, http_snapshot=False, tls_cert=str(cert), tls_key=str(key))
    )
    await cam.start()
    yield cam
    await cam.stop()


def entry_data(cam: VirtualCamera, *, snapshot: bool = True) -> dict[str, Any]:
    """Config entry data for a virtual camera, as the config flow stores it."""
    return {
        CONF_STREAM_URL: cam.rtsp_url,
        CONF_SNAPSHOT_URL: cam.snapshot_url if snapshot else None,
        CONF_USERNAME: CAM_USER,
        CONF_PASSWORD: CAM_PASSWORD,
        CONF_VERIFY_SSL: True,
        CONF_CAMERA_ID: normalized_identity(cam.rtsp_url),
        CONF_CODEC: "h264",
        CONF_WIDTH: 320,
        CONF_HEIGHT: 180,
    }


def onvif_camera_config(
    index: int, host: str, rtsp_port: int, http_port: int, mac: str
) -> CameraConfig:
    """An ONVIF virtual camera in palette colour `index`, serial SERIAL-<index>."""
    return camera_config(
        f"cam{index}",
        index,
        host=host,
        rtsp_port=rtsp_port,
        http_port=http_port,
        onvif=True,
        serial=f"SERIAL-{index}",
        mac=mac,
    )


def make_entry(cam: VirtualCamera, *, snapshot: bool = True, **kwargs: Any) -> MockConfigEntry:
    """A LocalCam config entry for a virtual camera."""
    data = entry_data(cam, snapshot=snapshot)
    return MockConfigEntry(
        domain=DOMAIN,
        title=cam.rtsp_url.split("//", 1)[1].split("/", 1)[0],
        unique_id=data[CONF_CAMERA_ID],
        data=data,
        **kwargs,
    )


def damaged_entry(cam: VirtualCamera, damage: dict[str, Any]) -> MockConfigEntry:
    """An entry whose stored data a hand edit damaged: ``{"drop": key}`` or fields to set."""
    data = dict(make_entry(cam).data)
    if "drop" in damage:
        del data[damage["drop"]]
    else:
        data.update(damage)
    return MockConfigEntry(domain=DOMAIN, title="cam", unique_id="cam", data=data)


def main_entity_id(hass: HomeAssistant, entry: MockConfigEntry) -> str:
    """The entity id of an entry's main camera (its first profile)."""
    entity_id = er.async_get(hass).async_get_entity_id("camera", DOMAIN, f"{entry.unique_id}_main")
    assert entity_id is not None
    return entity_id


async def setup_entry(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """Add and set up an entry, waiting until Home Assistant is idle."""
    entry.add_to_hass(hass)
    await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def camera_asked(camera: VirtualCamera, count: int) -> None:
    """Wait (bounded) until the virtual camera has received ``count`` snapshot requests."""
    deadline = time.monotonic() + 5
    while camera.stats.snapshot_requests < count:
        assert time.monotonic() < deadline, "the camera was never asked"
        await asyncio.sleep(0.01)


async def set_up_camera(
    hass: HomeAssistant, cam: VirtualCamera, **kwargs: Any
) -> tuple[MockConfigEntry, str]:
    """A LocalCam entry for a virtual camera (make_entry's options), set up: it and its entity."""
    entry = make_entry(cam, **kwargs)
    await setup_entry(hass, entry)
    return entry, main_entity_id(hass, entry)


def onvif_form(cam: VirtualCamera, host: str = "127.0.0.1") -> dict[str, Any]:
    """The ONVIF form as a user fills it in for a virtual camera."""
    return {
        "host": host,
        "port": cam.http_port,
        "username": CAM_USER,
        "password": CAM_PASSWORD,
        "verify_ssl": True,
    }


async def onvif_flow(hass: HomeAssistant, cam: VirtualCamera, host: str = "127.0.0.1") -> Any:
    """Add an ONVIF virtual camera as a user does: the flow's last result (entry or form)."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "onvif"}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], onvif_form(cam, host)
    )
    await hass.async_block_till_done()
    return result


async def add_onvif_entry(
    hass: HomeAssistant, cam: VirtualCamera, host: str = "127.0.0.1"
) -> ConfigEntry:
    """Add an ONVIF virtual camera as a user does (the flow's ONVIF form); return its entry."""
    return (await onvif_flow(hass, cam, host))["result"]


@pytest.fixture
async def quiet_tls_rejects() -> AsyncIterator[None]:
    """Drop the server-side report of a TLS handshake our client rightly aborts.

    asyncio hands that report to the loop's exception handler, which Home
    Assistant's test plugin turns into a test error; anything else still passes.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(handler_loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        if message.startswith("Error on transport creation") and isinstance(
            exc, ConnectionResetError | ssl.SSLError
        ):
            return
        if previous is not None:
            previous(handler_loop, context)
        else:
            handler_loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    loop.set_exception_handler(previous)
