"""The LocalCam demo's stand-in for Home Assistant's `brands`: local images only.

Home Assistant 2026.10 always loads `brands`, which fetches each integration's
icon server-side from https://brands.home-assistant.io (and caches it) when the
frontend shows it; only custom integrations with a brand/ folder (LocalCam) are
served from disk. The demo sends no packet beyond loopback, so scripts/demo.py
links this folder into its config's custom_components as `brands`, which Home
Assistant loads instead of its own. It is the built-in integration with one
change: nothing is fetched. Custom integrations' brand/ images and whatever is
already in the disk cache are served as before; any other image answers 404,
and the frontend shows no icon. Same views, same token, same websocket command.
"""

from collections import deque
import logging
from pathlib import Path
from random import SystemRandom
from typing import Any

from homeassistant.components import brands as core, websocket_api
from homeassistant.components.brands.const import DOMAIN, TOKEN_CHANGE_INTERVAL
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.typing import ConfigType

CONFIG_SCHEMA = core.CONFIG_SCHEMA
_LOGGER = logging.getLogger(__name__)
_RND = SystemRandom()


class _NoFetch:
    """Overrides the one method of the built-in views that calls the CDN."""

    async def _fetch_and_cache(self, cdn_path: str, cache_path: Path) -> bytes | None:
        return None  # as the built-in does when the CDN cannot be reached


class LocalIntegrationView(_NoFetch, core.BrandsIntegrationView):
    """/api/brands/integration/{domain}/{image}, without the CDN."""


class LocalHardwareView(_NoFetch, core.BrandsHardwareView):
    """/api/brands/hardware/{category}/{image}, without the CDN."""


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Set up as the built-in does, with the views that never fetch."""
    if not callable(vars(core._BrandsBaseView).get("_fetch_and_cache")):  # noqa: SLF001
        # A Home Assistant whose views fetch through another method: load
        # nothing rather than a stand-in that would still call the CDN.
        _LOGGER.error("brands' views no longer fetch through _fetch_and_cache: update the demo")
        return False
    access_tokens: deque[str] = deque(maxlen=2)
    access_tokens.append(hex(_RND.getrandbits(256))[2:])
    hass.data[DOMAIN] = access_tokens

    @callback
    def _rotate_token(_now: Any) -> None:
        access_tokens.append(hex(_RND.getrandbits(256))[2:])

    async_track_time_interval(hass, _rotate_token, TOKEN_CHANGE_INTERVAL, cancel_on_shutdown=True)
    hass.http.register_view(LocalIntegrationView(hass))
    hass.http.register_view(LocalHardwareView(hass))
    websocket_api.async_register_command(hass, core.ws_access_token)
    return True
