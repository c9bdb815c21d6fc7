"""LocalCam: LAN-only cameras for Home Assistant."""

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .const import CONF_SNAPSHOT_MAX_AGE, DEFAULT_SNAPSHOT_MAX_AGE, DOMAIN
from .coordinator import LocalCamCoordinator
from .core.snapshot import CameraClient
from .core.snapshot_cache import SnapshotCache
from .data import LocalCamConfigEntry, LocalCamData
from .helpers import policy_from_options, source_from_entry
from .views import async_register_views

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)
PLATFORMS: list[Platform] = [Platform.CAMERA]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Set up what is shared by every camera: LocalCam's HTTP views."""
    async_register_views(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> bool:
    """Set up one camera: test it (health check), then add its entity."""
    try:
        policy = policy_from_options(entry.options)
    except ValueError as err:
        raise ConfigEntryError(
            translation_domain=DOMAIN,
            translation_key="invalid_networks",
            translation_placeholders={"reason": str(err)},
        ) from err
    source = source_from_entry(entry.data, entry.options)
    client = CameraClient(async_get_clientsession(hass), policy, source)
    coordinator = LocalCamCoordinator(hass, entry, client)
    # 401 -> ConfigEntryAuthFailed (reauth); unreachable -> ConfigEntryNotReady.
    await coordinator.async_config_entry_first_refresh()
    # One cache per camera, bound to this camera's id and source fingerprint.
    # A reload (new URL, credentials or options) builds a new, empty one.
    cache = SnapshotCache(
        source.camera_id,
        source.fingerprint,
        client.fetch_snapshot,
        max_age=float(entry.options.get(CONF_SNAPSHOT_MAX_AGE, DEFAULT_SNAPSHOT_MAX_AGE)),
    )
    entry.runtime_data = LocalCamData(client=client, coordinator=coordinator, cache=cache)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> bool:
    """Unload a camera: its platforms, its fetches in flight, its RTSP session."""
    unloaded = await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
    if unloaded:
        await entry.runtime_data.cache.close()
        await entry.runtime_data.client.close()
    return unloaded
