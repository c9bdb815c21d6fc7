"""Diagnostics for a LocalCam entry, with every secret and address redacted."""

import time
from typing import Any
from urllib.parse import quote

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr, entity_registry as er
import yarl

from .cast import async_cast_diagnostics
from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_PROFILES,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
)
from .core.netpolicy import REDACTED, redact_url
from .data import LocalCamConfigEntry, LocalCamData
from .discovery import DATA_DISCOVERY

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


# A password this short would mask ordinary words all over the report.
MIN_SCRUBBED_PASSWORD = 4


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: LocalCamConfigEntry
) -> dict[str, Any]:
    """Return diagnostics for a config entry."""
    return _scrub_password(_entry_diagnostics(hass, entry), entry)


def _entry_diagnostics(hass: HomeAssistant, entry: LocalCamConfigEntry) -> dict[str, Any]:
    """The entry's diagnostics, redacted field by field."""
    data = dict(entry.data)
    # URLs keep their scheme and path (useful to spot a wrong stream path)
    # but lose host, port, credentials and query values. Tolerant of data no
    # flow stores (a hand edit): that entry failed its setup with
    # stored_data_incomplete, and its diagnostics are what the user asks for.
    for key in (CONF_STREAM_URL, CONF_SNAPSHOT_URL):
        if data.get(key):
            data[key] = _redacted_url(data[key])
    profiles = data.get(CONF_PROFILES)
    data[CONF_PROFILES] = [
        {
            **profile,
            CONF_STREAM_URL: _redacted_url(profile.get(CONF_STREAM_URL)),
            CONF_SNAPSHOT_URL: _redacted_url(profile.get(CONF_SNAPSHOT_URL)),
        }
        if isinstance(profile, dict)
        else REDACTED
        for profile in (profiles if isinstance(profiles, list) else [])
    ]
    camera_id = entry.data.get(CONF_CAMERA_ID)
    diagnostics: dict[str, Any] = {
        # "loaded", or why not ("setup_retry" while the camera is down, ...).
        "state": entry.state.value,
        "entry": async_redact_data(
            {
                "title": entry.title,
                "unique_id": entry.unique_id,
                "data": data,
                "options": dict(entry.options),
            },
            TO_REDACT,
        ),
        "identity_known": {
            field: bool(value) for field, value in (entry.data.get(CONF_IDENTITY) or {}).items()
        },
        "discovery": _discovery(hass, entry),
        # Last cast per receiver: no camera id, no URL; tokens redacted.
        "cast": async_cast_diagnostics(hass, camera_id) if camera_id else {},
    }
    # Health and streams exist only while the entry is loaded: an entry that
    # waits to retry its setup (camera down) or failed it has no runtime data.
    runtime: LocalCamData | None = getattr(entry, "runtime_data", None)
    if entry.state is not ConfigEntryState.LOADED or runtime is None:
        return diagnostics
    coordinator = runtime.coordinator
    return {
        **diagnostics,
        "health": {
            "last_update_success": coordinator.last_update_success,
            "last_error": coordinator.last_error,
            "last_checked": (coordinator.data.checked_at.isoformat() if coordinator.data else None),
            "interval_seconds": coordinator.check_interval.total_seconds()
            if coordinator.check_interval
            else None,
        },
        "main_stream": runtime.main,
        # Counters only: never image bytes. Keyed by stream (profile).
        "streams": {
            profile: {
                "snapshot_cache": {
                    "max_age_seconds": stream.cache.max_age,
                    # How long a viewer waits on a camera that stopped
                    # answering (null: no still yet, the fetch timeout).
                    "slowest_still_seconds": _rounded(stream.cache.slowest),
                    "stalled_after_seconds": _rounded(stream.cache.stall_after),
                    **stream.cache.stats.as_dict(time.monotonic()),
                },
                "rtsp_warm_session": {
                    "active": stream.client.grabber.active,
                    "sessions_opened": stream.client.grabber.sessions_opened,
                    "last_session": (
                        timing.as_dict()
                        if (timing := stream.client.grabber.last_session) is not None
                        else None
                    ),
                },
                # FFmpeg's loopback relay; sessions refused: redirects and unreadable replies.
                "rtsp_relay": stream.client.guard.as_dict(),
            }
            for profile, stream in runtime.streams.items()
        },
    }


async def async_get_device_diagnostics(
    hass: HomeAssistant, entry: LocalCamConfigEntry, device: dr.DeviceEntry
) -> dict[str, Any]:
    """Return diagnostics for the camera's device: the entry's, plus its entities."""
    entities = er.async_entries_for_device(er.async_get(hass), device.id)
    return _scrub_password(
        {
            **_entry_diagnostics(hass, entry),
            "device": {
                "manufacturer": device.manufacturer,
                "model": device.model,
                "sw_version": device.sw_version,
                "hw_version": device.hw_version,
                "connections": len(device.connections),  # MACs: counted, never shown
            },
            "entities": [
                {
                    "translation_key": entity.translation_key,
                    "disabled_by": entity.disabled_by,
                    "state": (
                        state.state if (state := hass.states.get(entity.entity_id)) else None
                    ),
                }
                for entity in sorted(entities, key=lambda e: e.entity_id)
            ],
        },
        entry,
    )


def _scrub_password(report: dict[str, Any], entry: LocalCamConfigEntry) -> dict[str, Any]:
    """Mask the entry's password wherever it still appears, the last line of redaction.

    Field rules redact credentials and URL hosts, userinfo and ``name=value``
    pairs; a camera may still put its password in a bare path segment of a URL
    it reports (``/admin/<password>/ch1``), which no URL rule can tell apart.
    """
    password = entry.data.get(CONF_PASSWORD) or ""
    if len(password) < MIN_SCRUBBED_PASSWORD:
        return report
    forms = {
        password,
        quote(password, safe=""),
        quote(password),
        # As yarl writes it (redact_url keeps yarl's raw path and query):
        # sub-delimiters such as ! $ ( ) stay, spaces become %20 or +.
        yarl.URL.build(path="/" + password).raw_path[1:],
        yarl.URL.build(query={"p": password}).raw_query_string[2:],
    }

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            for form in forms:
                item = item.replace(form, REDACTED)
            return item
        if isinstance(item, dict):
            return {key: scrub(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [scrub(inner) for inner in item]
        return item

    return {key: scrub(inner) for key, inner in report.items()}


def _discovery(hass: HomeAssistant, entry: LocalCamConfigEntry) -> dict[str, Any]:
    """How the camera was found, and what the background scans do."""
    status = hass.data.get(DATA_DISCOVERY)
    return {
        "source": entry.source,
        "background_scans": status.scans_enabled if status else None,
        "scans": status.scans if status else 0,
        "last_scan": status.last_scan.isoformat() if status and status.last_scan else None,
        "last_found": status.last_found if status else None,
    }


def _redacted_url(url: Any) -> str | None:
    """A stored URL for diagnostics: redacted, None when absent, masked when not a string."""
    if not url:
        return None
    return redact_url(url) if isinstance(url, str) else REDACTED


def _rounded(seconds: float | None) -> float | None:
    """Seconds to the millisecond, or None."""
    return None if seconds is None else round(seconds, 3)
