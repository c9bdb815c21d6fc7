"""Diagnostics hold no credentials, hosts or URLs."""

import json

from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from virtualcam import VirtualCamera

from .conftest import CAM_PASSWORD, CAM_USER, make_entry, setup_entry


@pytest.mark.usefixtures("secrets_absent_from_logs")
async def test_diagnostics_are_redacted(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, camera: VirtualCamera
) -> None:
    """Secrets, the camera's address and its identity hash are redacted."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    text = json.dumps(diagnostics)
    for secret in (CAM_PASSWORD, CAM_USER, "127.0.0.1", str(camera.rtsp_port), entry.unique_id):
        assert secret not in text
    data = diagnostics["entry"]["data"]
    assert data["stream_url"].startswith("rtsp://**REDACTED**")
    assert data["stream_url"].endswith("/stream")
    assert diagnostics["health"]["last_update_success"] is True
    assert diagnostics["health"]["interval_seconds"] == 60
    streams = diagnostics["streams"]
    assert list(streams) == ["main"]
    assert set(streams["main"]["snapshot_cache"]) == {
        "max_age_seconds",
        "hits",
        "misses",
        "coalesced_waiters",
        "upstream_fetches",
        "scaled",
        "rejected_images",
        "errors",
        "last_capture_age_seconds",
    }
    assert streams["main"]["rtsp_warm_session"] == {"active": False, "sessions_opened": 0}


async def test_onvif_diagnostics_redact_identity_and_addresses(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, socket_enabled: None
) -> None:
    """An ONVIF camera's MAC, serial, UUID, host and profile URLs are redacted."""
    from homeassistant.config_entries import SOURCE_USER

    from virtualcam import CameraConfig

    cam = VirtualCamera(
        CameraConfig(
            name="d",
            color=(10, 200, 30),
            username=CAM_USER,
            password=CAM_PASSWORD,
            width=320,
            height=180,
            onvif=True,
            serial="SERIAL-XYZ",
            mac="02:00:00:12:34:56",
        )
    )
    await cam.start()
    try:
        result = await hass.config_entries.flow.async_init(
            "localcam", context={"source": SOURCE_USER}
        )
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"next_step_id": "onvif"}
        )
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"],
            {
                "host": "127.0.0.1",
                "port": cam.http_port,
                "username": CAM_USER,
                "password": CAM_PASSWORD,
                "verify_ssl": True,
            },
        )
        entry = result["result"]
        await hass.async_block_till_done()
        diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
        text = json.dumps(diagnostics)
        for secret in ("SERIAL-XYZ", "02:00:00:12:34:56", "127.0.0.1", CAM_PASSWORD, CAM_USER):
            assert secret not in text
        assert diagnostics["identity_known"] == {"mac": True, "serial": True, "uuid": True}
        assert len(diagnostics["streams"]) == len(entry.data["profiles"])
        for profile in diagnostics["entry"]["data"]["profiles"]:
            assert profile["stream_url"].startswith("rtsp://**REDACTED**")
    finally:
        await hass.config_entries.async_unload(entry.entry_id)
        await cam.stop()
