"""Host the benchmark's virtual cameras in their own process, on 127.0.0.1 only.

A separate process keeps the cameras' encoders out of the CPU figures of both
Home Assistant and the benchmark client. Unlike `python -m virtualcam`, it also
reports the counters of RTSP-only cameras (they have no HTTP /status), and it
can give each camera its own GOP.

Usage: python -m bench.camhost SPEC_JSON. SPEC_JSON is an object with
"username", "password", "width", "height", "fps" and "cameras": a list of
{"name", "gop", "http"}. Prints one JSON line per camera, then READY. Then
reads commands on stdin, one a line: "stats" answers one JSON line with every
camera's counters; "quit" (or end of input) stops everything.
"""

import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from virtualcam import CameraConfig, VirtualCamera, color_for

# Bounds the stop at exit so a wedged camera cannot keep the process alive.
STOP_TIMEOUT = 15.0


def build(spec: dict[str, Any]) -> list[VirtualCamera]:
    """One VirtualCamera per spec entry, each in its own palette colour."""
    cameras = []
    for index, cam in enumerate(spec["cameras"]):
        config = CameraConfig(
            name=str(cam["name"]),
            color=color_for(index),
            host="127.0.0.1",
            width=int(spec.get("width", 640)),
            height=int(spec.get("height", 360)),
            fps=float(spec.get("fps", 10.0)),
            gop_seconds=float(cam.get("gop", 1.0)),
            username=spec.get("username"),
            password=spec.get("password"),
            http_snapshot=bool(cam.get("http", True)),
        )
        cameras.append(VirtualCamera(config))
    return cameras


def count_images(cameras: list[VirtualCamera]) -> dict[str, int]:
    """Count the JPEGs each camera actually serves.

    The camera's own snapshot_requests also counts the 401 challenge that
    precedes every Digest-authenticated GET, so it says more about a client's
    auth handshake than about how many pictures it fetched.
    """
    served = dict.fromkeys((cam.name for cam in cameras), 0)
    for cam in cameras:
        original = cam.media.snapshot

        async def snapshot(name: str = cam.name, original: Any = original) -> bytes:
            served[name] += 1
            return bytes(await original())

        cam.media.snapshot = snapshot  # type: ignore[method-assign]
    return served


def stats(cameras: list[VirtualCamera], served: dict[str, int]) -> dict[str, Any]:
    """Every camera's counters, plus JPEGs served and whether its encoder runs."""
    return {
        cam.name: {
            **cam.stats.as_dict(),
            "images_served": served[cam.name],
            "encoder_running": cam.encoder_running,
        }
        for cam in cameras
    }


async def serve(spec: dict[str, Any]) -> None:
    """Start the cameras, announce them, answer stdin commands until told to stop."""
    cameras = build(spec)
    served = count_images(cameras)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    results = await asyncio.gather(*(cam.start() for cam in cameras), return_exceptions=True)
    try:
        if errors := [r for r in results if isinstance(r, BaseException)]:
            raise errors[0]
        for index, cam in enumerate(cameras):
            line = {
                "name": cam.name,
                "index": index,
                "color": list(cam.color),
                "gop": cam.config.gop_seconds,
                "rtsp_url": cam.rtsp_url,
                "snapshot_url": cam.snapshot_url if cam.config.http_snapshot else None,
                # Its frame clock: frame n is due at epoch + n / fps on
                # time.monotonic() (CLOCK_MONOTONIC, shared by every process),
                # so a benchmark can start its tries at a chosen point of it.
                "epoch": cam.media.epoch,
                "fps": cam.config.fps,
            }
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.write("READY\n")
        sys.stdout.flush()

        async def commands() -> None:
            """Answer stdin commands; end of input means stop."""
            while line := await reader.readline():
                command = line.decode().strip()
                if command == "stats":
                    sys.stdout.write(json.dumps(stats(cameras, served)) + "\n")
                    sys.stdout.flush()
                elif command == "quit":
                    break
            stop.set()

        task = asyncio.create_task(commands())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*(cam.stop() for cam in cameras), return_exceptions=True)


def main() -> int:
    """Entry point."""
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m bench.camhost SPEC_JSON\n")
        return 2
    try:
        asyncio.run(serve(json.loads(sys.argv[1])))
    except OSError as err:
        sys.stderr.write(f"camhost: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
