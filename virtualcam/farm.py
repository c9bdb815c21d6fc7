"""Many virtual cameras at once, with distinct colours and auto-allocated ports."""

import asyncio
from dataclasses import fields
import hashlib
from typing import Any, Self

from .camera import CameraConfig, VirtualCamera
from .media import color_for

_PER_CAMERA = frozenset({"name", "color"})


class CameraFarm:
    """`count` cameras named f"{base_name}-{i:02d}" with color_for(i) as their colour."""

    # With onvif=True every camera gets its own serial and a locally administered MAC
    # (unless `shared` sets them). wsdiscovery_port works like the other ports: None = no
    # responder, 0 = a free port each, N = N + i.

    def __init__(
        self, count: int, *, base_name: str = "cam", rtsp_only: int = 0, **shared: Any
    ) -> None:
        """Build the cameras; `shared` holds CameraConfig fields common to all of them."""
        # Non-zero rtsp_port / http_port are base ports: camera i uses base + i.
        known = {f.name for f in fields(CameraConfig)} - _PER_CAMERA
        if unknown := set(shared) - known:
            raise TypeError(f"unknown camera settings: {sorted(unknown)}")
        if count < 0 or not 0 <= rtsp_only <= count:
            raise ValueError("need count >= 0 and 0 <= rtsp_only <= count")
        rtsp_base = shared.pop("rtsp_port", 0)
        http_base = shared.pop("http_port", 0)
        wsd_base = shared.pop("wsdiscovery_port", None)
        # One byte of the farm name in every MAC, so two farms do not share MACs.
        farm_byte = hashlib.sha256(base_name.encode()).digest()[0]
        self.cameras: list[VirtualCamera] = []
        for i in range(count):
            identity: dict[str, Any] = {}
            if shared.get("onvif"):
                identity = {
                    "serial": f"VC{farm_byte:02X}{i:06d}",
                    "mac": f"02:4c:43:{farm_byte:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}",
                }
            config = CameraConfig(
                name=f"{base_name}-{i:02d}",
                color=color_for(i),
                rtsp_port=rtsp_base + i if rtsp_base else 0,
                http_port=http_base + i if http_base else 0,
                wsdiscovery_port=None if wsd_base is None else (wsd_base + i if wsd_base else 0),
                **(identity | shared),
            )
            if i >= count - rtsp_only:
                config.http_snapshot = False
            self.cameras.append(VirtualCamera(config))

    def __len__(self) -> int:
        """Number of cameras."""
        return len(self.cameras)

    def __getitem__(self, index: int) -> VirtualCamera:
        """Camera by index."""
        return self.cameras[index]

    @property
    def wsdiscovery_targets(self) -> list[str]:
        """Host:port of every camera's WS-Discovery responder (after start())."""
        return [
            f"{cam.config.host}:{cam.wsdiscovery_port}"
            for cam in self.cameras
            if cam.config.wsdiscovery_port is not None
        ]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """Colours by camera index (for nearest_camera)."""
        return [cam.color for cam in self.cameras]

    async def start(self) -> None:
        """Start every camera; if one fails, stop them all and re-raise."""
        results = await asyncio.gather(
            *(cam.start() for cam in self.cameras), return_exceptions=True
        )
        if errors := [r for r in results if isinstance(r, BaseException)]:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        """Stop every camera (idempotent)."""
        await asyncio.gather(*(cam.stop() for cam in self.cameras))

    async def __aenter__(self) -> Self:
        """Start on entering `async with`."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop on leaving `async with`."""
        await self.stop()
