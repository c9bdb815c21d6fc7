"""A camera entity whose still costs nothing (benchmark only, see __init__.py)."""

from pathlib import Path
from typing import Any, override

from homeassistant.components.camera import Camera
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback


async def async_setup_platform(
    hass: HomeAssistant,
    config: dict[str, Any],
    async_add_entities: AddEntitiesCallback,
    discovery_info: dict[str, Any] | None = None,
) -> None:
    """Read the picture file once, then add the entity."""
    image = await hass.async_add_executor_job(Path(config["file"]).read_bytes)
    async_add_entities([BoundCamera(str(config["name"]), image)])


class BoundCamera(Camera):
    """Answers every still with the same picture, at once."""

    def __init__(self, name: str, image: bytes) -> None:
        """Keep the picture."""
        super().__init__()
        self._attr_name = name
        self._image = image

    @override
    async def async_camera_image(
        self, width: int | None = None, height: int | None = None
    ) -> bytes | None:
        """The same bytes for every request (unsized requests only are compared)."""
        return self._image
