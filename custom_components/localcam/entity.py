"""Base entity: one device per camera, named after the config entry."""

from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import CONF_CAMERA_ID, CONF_CODEC, DOMAIN
from .coordinator import LocalCamCoordinator


class LocalCamEntity(CoordinatorEntity[LocalCamCoordinator]):
    """Common device info and naming for LocalCam entities."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: LocalCamCoordinator) -> None:
        """Attach the entity to its camera's device."""
        super().__init__(coordinator)
        entry = coordinator.config_entry
        self.camera_id: str = entry.data[CONF_CAMERA_ID]
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, self.camera_id)},
            name=entry.title,
            manufacturer="LocalCam",
            model=f"RTSP camera ({entry.data.get(CONF_CODEC, 'video').upper()})",
        )
