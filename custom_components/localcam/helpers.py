"""Glue helpers: build core objects from an entry; translate core errors."""

from collections.abc import Mapping
from typing import Any

from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.exceptions import HomeAssistantError

from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DEFAULT_RTSP_TRANSPORT,
    DOMAIN,
)
from .core.errors import LocalCamError
from .core.identity import Identity
from .core.models import CameraSource, RtspTransport
from .core.netpolicy import NetPolicy, parse_networks


def policy_from_options(options: Mapping[str, Any]) -> NetPolicy:
    """Build the LAN policy, with the networks the user added in the options."""
    return NetPolicy(extra_networks=parse_networks(options.get(CONF_ALLOWED_NETWORKS, "")))


def source_from_entry(data: Mapping[str, Any], options: Mapping[str, Any]) -> CameraSource:
    """Build the camera source from entry data (connection) and options."""
    return CameraSource(
        camera_id=data[CONF_CAMERA_ID],
        stream_url=data[CONF_STREAM_URL],
        snapshot_url=data.get(CONF_SNAPSHOT_URL) or None,
        username=data.get(CONF_USERNAME) or None,
        password=data.get(CONF_PASSWORD) or None,
        verify_ssl=data.get(CONF_VERIFY_SSL, True),
        rtsp_transport=RtspTransport(options.get(CONF_RTSP_TRANSPORT, DEFAULT_RTSP_TRANSPORT)),
        identity=Identity.from_dict(data.get(CONF_IDENTITY)),
    )


def translated_error(err: LocalCamError) -> HomeAssistantError:
    """Turn a core error into a translated HomeAssistantError.

    This is the one place core errors cross into Home Assistant; placeholders
    come from core.errors, which never puts credentials or URLs in them.
    """
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key=err.translation_key,
        translation_placeholders=err.placeholders,
    )
