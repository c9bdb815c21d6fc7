"""Typed runtime data of a LocalCam config entry."""

from dataclasses import dataclass

from homeassistant.config_entries import ConfigEntry

from .coordinator import LocalCamCoordinator
from .core.snapshot import CameraClient
from .core.snapshot_cache import SnapshotCache

type LocalCamConfigEntry = ConfigEntry[LocalCamData]


@dataclass(slots=True)
class LocalCamData:
    """What a loaded entry holds: the camera's client and its health."""

    client: CameraClient
    coordinator: LocalCamCoordinator
    cache: SnapshotCache
