"""Two virtual cameras on the same port at two loopback addresses stay independent.

A camera that moves to another address while a second device takes its old one ends
up, in the emulator, as two VirtualCameras sharing a port (127.0.0.1:P and 127.0.0.2:P).
A PyAV client moving from one to the other (as HA's stream worker does after
update_source) must get each camera's own pictures, and a session on one camera must
keep flowing whatever the other camera's (or a short-lived second client's) sessions do.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
import time

import av
import pytest
import pytest_socket

from virtualcam import CameraConfig, VirtualCamera, color_for, nearest_camera

pytestmark = pytest.mark.usefixtures("socket_enabled")

#: What HA's stream worker passes for an RTSP source over TCP (timeout in µs).
CLIENT_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000", "fpsprobesize": "0"}
#: Wall-clock bound on one client session (open + reading); a hang fails, never blocks.
SESSION_DEADLINE = 20.0
COLORS = [color_for(i) for i in range(8)]


@dataclass(slots=True)
class Session:
    """What one client session saw."""

    packets: int
    camera: int | None  # index in COLORS of the first decoded picture's centre colour
    timed_out: bool


def _play(url: str, packets: int) -> Session:
    """Read `packets` video packets from url (bounded by SESSION_DEADLINE), then close."""
    deadline = time.monotonic() + SESSION_DEADLINE
    container = av.open(url, options=dict(CLIENT_OPTIONS), timeout=(10.0, 5.0))
    count, camera = 0, None
    try:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if time.monotonic() > deadline:
                return Session(count, camera, timed_out=True)
            if packet.size == 0:
                continue
            count += 1
            if camera is None:
                for frame in packet.decode():
                    rgb = frame.to_ndarray(format="rgb24")
                    r, g, b = rgb[frame.height // 2, frame.width // 2]
                    camera = nearest_camera((int(r), int(g), int(b)), COLORS)
                    break
            if count >= packets:
                break
    finally:
        container.close()
    return Session(count, camera, timed_out=False)


async def _session(cam: VirtualCamera, packets: int) -> Session:
    """_play() against cam in a worker thread."""
    return await asyncio.to_thread(_play, cam.rtsp_url, packets)


async def _wait_idle(*cams: VirtualCamera) -> None:
    """Wait (bounded) until no camera counts an active play session."""
    for _ in range(100):
        if all(cam.stats.active_play_sessions == 0 for cam in cams):
            return
        await asyncio.sleep(0.05)
    raise AssertionError([cam.stats for cam in cams])


@asynccontextmanager
async def _two_cameras_one_port() -> AsyncIterator[tuple[VirtualCamera, VirtualCamera]]:
    """Camera 0 on 127.0.0.1:P and camera 5 on 127.0.0.2:P (same P)."""
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"], allow_unix_socket=True)

    def config(index: int, host: str, port: int = 0) -> CameraConfig:
        return CameraConfig(
            name=f"c{index}",
            color=COLORS[index],
            host=host,
            rtsp_port=port,
            http_snapshot=False,
            width=320,
            height=180,
        )

    first = VirtualCamera(config(0, "127.0.0.1"))
    await first.start()
    second: VirtualCamera | None = None
    try:
        second = VirtualCamera(config(5, "127.0.0.2", first.rtsp_port))
        await second.start()
        assert second.rtsp_port == first.rtsp_port
        yield first, second
    finally:
        for cam in (first, second):
            if cam is not None:
                await cam.stop()


async def test_a_client_moving_between_two_cameras_on_one_port_gets_each_one_s_stream() -> None:
    """Play from 127.0.0.1:P, then from 127.0.0.2:P: both flow, each from its own camera."""
    async with _two_cameras_one_port() as (first, second):
        before = await _session(first, 30)
        await _wait_idle(first, second)
        after = await _session(second, 30)
        await _wait_idle(first, second)

        assert before == Session(30, 0, timed_out=False)
        assert after == Session(30, 5, timed_out=False)
        assert (first.stats.play_sessions, second.stats.play_sessions) == (1, 1)
        assert (first.stats.rtsp_connections, second.stats.rtsp_connections) == (1, 1)


async def test_sessions_on_one_camera_survive_the_other_camera_s_and_short_sessions() -> None:
    """A long session on 127.0.0.2:P keeps flowing while short ones come and go on both."""
    async with _two_cameras_one_port() as (first, second):
        long_run = asyncio.create_task(_session(second, 100))
        shorts = [await _session(cam, 3) for cam in (first, second, first, second)]
        after_shorts = await long_run
        await _wait_idle(first, second)

        assert [s.camera for s in shorts] == [0, 5, 0, 5]
        assert all(s.packets == 3 and not s.timed_out for s in shorts)
        assert after_shorts == Session(100, 5, timed_out=False)
        assert (first.stats.play_sessions, second.stats.play_sessions) == (2, 3)
