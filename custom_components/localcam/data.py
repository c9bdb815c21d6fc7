"""Typed runtime data of a LocalCam config entry."""

from dataclasses import dataclass

from homeassistant.config_entries import ConfigEntry

from .coordinator import LocalCamCoordinator
from .core.snapshot import CameraClient
from .core.snapshot_cache import SnapshotCache

type LocalCamConfigEntry = ConfigEntry[LocalCamData]


@dataclass(slots=True)
class StreamRuntime:
    """One stream of the camera (a URL camera has one, ONVIF one per profile)."""

    client: CameraClient
    cache: SnapshotCache


@dataclass(slots=True)
class LocalCamData:
    """What a loaded entry holds: its streams and the camera's health."""

    streams: dict[str, StreamRuntime]
    main: str
    coordinator: LocalCamCoordinator

    @property
    def client(self) -> CameraClient:
        """The main stream's client (health checks, cast)."""
        return self.streams[self.main].client

    @property
    def cache(self) -> SnapshotCache:
        """The main stream's still cache."""
        return self.streams[self.main].cache
