"""Virtual IP cameras on loopback for LocalCam's demo, tests and benchmarks.

Each camera streams H.264 over RTSP (TCP-interleaved or UDP) and serves JPEG snapshots over
HTTP. Its picture is a solid fill of its own colour (see color_for) with the camera's name and
a running clock in a small black box at the top-left corner; the centre 50% of the picture is
always pure colour, so nearest_camera() on a decoded centre pixel tells which camera a frame
came from.
"""

from .camera import CameraConfig, CameraStats, Fault, VirtualCamera
from .farm import CameraFarm
from .media import color_for, nearest_camera, palette

__all__ = [
    "CameraConfig",
    "CameraFarm",
    "CameraStats",
    "Fault",
    "VirtualCamera",
    "color_for",
    "nearest_camera",
    "palette",
]
