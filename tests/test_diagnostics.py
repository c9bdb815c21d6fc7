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
    assert set(diagnostics["snapshot_cache"]) == {
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
    assert diagnostics["rtsp_warm_session"] == {"active": False, "sessions_opened": 0}
