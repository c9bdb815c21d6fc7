"""LocalCam: LAN-only cameras for Home Assistant."""

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN
from .coordinator import LocalCamCoordinator
from .core.snapshot import CameraClient
from .data import LocalCamConfigEntry, LocalCamData
from .helpers import policy_from_options, source_from_entry

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)
PLATFORMS: list[Platform] = [Platform.CAMERA]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Set up the integration (actions and discovery register here later)."""
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
    client = CameraClient(
        async_get_clientsession(hass), policy, source_from_entry(entry.data, entry.options)
    )
    coordinator = LocalCamCoordinator(hass, entry, client)
    # 401 -> ConfigEntryAuthFailed (reauth); unreachable -> ConfigEntryNotReady.
    await coordinator.async_config_entry_first_refresh()
    entry.runtime_data = LocalCamData(client=client, coordinator=coordinator)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> bool:
    """Unload a camera; HA's camera component stops its stream."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
