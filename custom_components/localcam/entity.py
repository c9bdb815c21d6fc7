"""Base entity: one device per camera, named after the config entry."""

from homeassistant.helpers.device_registry import CONNECTION_NETWORK_MAC, DeviceInfo
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import CONF_CAMERA_ID, CONF_CODEC, CONF_DEVICE_INFO, CONF_IDENTITY, DOMAIN
from .coordinator import LocalCamCoordinator
from .core.identity import Identity


class LocalCamEntity(CoordinatorEntity[LocalCamCoordinator]):
    """Common device info and naming for LocalCam entities."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: LocalCamCoordinator) -> None:
        """Attach the entity to its camera's device."""
        super().__init__(coordinator)
        entry = coordinator.config_entry
        self.camera_id: str = entry.data[CONF_CAMERA_ID]
        info = entry.data.get(CONF_DEVICE_INFO) or {}
        codec = str(entry.data.get(CONF_CODEC, "video")).upper()
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, self.camera_id)},
            name=entry.title,
            manufacturer=info.get("manufacturer") or "LocalCam",
            model=info.get("model") or f"RTSP camera ({codec})",
            sw_version=info.get("firmware"),
        )
        # The MAC lets HA's DHCP watcher tell us when the camera's address
        # changes (manifest: dhcp registered_devices).
        if mac := Identity.from_dict(entry.data.get(CONF_IDENTITY)).mac:
            self._attr_device_info["connections"] = {(CONNECTION_NETWORK_MAC, mac)}
