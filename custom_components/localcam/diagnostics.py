"""Diagnostics for a LocalCam entry, with every secret and address redacted."""

import time
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant

from .cast import async_cast_diagnostics
from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_PROFILES,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
)
from .core.netpolicy import redact_url
from .data import LocalCamConfigEntry

# Credentials obviously; the camera id and unique id because they are hashes
# of the camera's URL; allowed networks because they map the user's LAN.
# The identity (MAC, serial, UUID) and the host identify the device and the
# home network; they are redacted like credentials.
TO_REDACT = {
    CONF_PASSWORD,
    CONF_USERNAME,
    CONF_CAMERA_ID,
    CONF_ALLOWED_NETWORKS,
    CONF_HOST,
    "mac",
    "serial",
    "uuid",
    "unique_id",
    "title",
}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: LocalCamConfigEntry
) -> dict[str, Any]:
    """Return diagnostics for a config entry."""
    data = dict(entry.data)
    # URLs keep their scheme and path (useful to spot a wrong stream path)
    # but lose host, port, credentials and query values.
    for key in (CONF_STREAM_URL, CONF_SNAPSHOT_URL):
        if data.get(key):
            data[key] = redact_url(data[key])
    data[CONF_PROFILES] = [
        {
            **profile,
            "stream_url": redact_url(profile["stream_url"]),
            "snapshot_url": redact_url(profile["snapshot_url"])
            if profile.get("snapshot_url")
            else None,
        }
        for profile in data.get(CONF_PROFILES) or []
    ]
    coordinator = entry.runtime_data.coordinator
    streams = entry.runtime_data.streams
    return {
        "entry": async_redact_data(
            {
                "title": entry.title,
                "unique_id": entry.unique_id,
                "data": data,
                "options": dict(entry.options),
            },
            TO_REDACT,
        ),
        "health": {
            "last_update_success": coordinator.last_update_success,
            "last_error": coordinator.last_error,
            "last_checked": (coordinator.data.checked_at.isoformat() if coordinator.data else None),
            "interval_seconds": coordinator.update_interval.total_seconds()
            if coordinator.update_interval
            else None,
        },
        "identity_known": {
            field: bool(value) for field, value in (entry.data.get(CONF_IDENTITY) or {}).items()
        },
        "main_stream": entry.runtime_data.main,
        # Last cast per receiver: no camera id, no URL; tokens redacted.
        "cast": async_cast_diagnostics(hass, entry.data[CONF_CAMERA_ID]),
        # Counters only: never image bytes. Keyed by stream (profile).
        "streams": {
            profile: {
                "snapshot_cache": {
                    "max_age_seconds": stream.cache.max_age,
                    **stream.cache.stats.as_dict(time.monotonic()),
                },
                "rtsp_warm_session": {
                    "active": stream.client.grabber.active,
                    "sessions_opened": stream.client.grabber.sessions_opened,
                },
            }
            for profile, stream in streams.items()
        },
    }
