"""Command line: run a farm of virtual cameras on 127.0.0.1 until SIGINT/SIGTERM."""

import argparse
import asyncio
import json
from pathlib import Path
import signal
import sys
import tempfile

from .farm import CameraFarm
from .tls import self_signed


def _size(text: str) -> tuple[int, int]:
    """Parse WIDTHxHEIGHT."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must look like 640x360") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("width and height must be even and >= 16")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI options."""
    parser = argparse.ArgumentParser(
        prog="python -m virtualcam", description="Emulate IP cameras on 127.0.0.1."
    )
    parser.add_argument("--count", type=int, default=1, help="number of cameras")
    parser.add_argument("--rtsp-port", type=int, default=0, help="base RTSP port (0 = auto)")
    parser.add_argument("--http-port", type=int, default=0, help="base HTTP port (0 = auto)")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--auth", choices=("digest", "basic"), default="digest")
    parser.add_argument("--gop", type=float, default=1.0, help="seconds between keyframes")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", type=_size, default=(640, 360), help="WIDTHxHEIGHT")
    parser.add_argument("--name", default="cam", help="camera name prefix")
    parser.add_argument("--rtsp-only", type=int, default=0, help="last K cameras: no HTTP")
    parser.add_argument("--no-http", action="store_true", help="no HTTP snapshot at all")
    parser.add_argument(
        "--keyframe-on-connect", action="store_true", help="IDR as soon as a client plays"
    )
    parser.add_argument("--onvif", action="store_true", help="serve ONVIF Device/Media SOAP")
    parser.add_argument(
        "--clock-offset", type=float, default=0.0, help="camera clock minus real time (s)"
    )
    parser.add_argument("--hevc-only", action="store_true", help="ONVIF profiles report H265")
    parser.add_argument(
        "--noise", action="store_true", help="a band of noise: a real camera's bit rate"
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve rtsps:// with a throwaway self-signed certificate"
    )
    parser.add_argument(
        "--wsdiscovery-port",
        type=int,
        help="answer WS-Discovery probes on 127.0.0.1 (base port; 0 = auto)",
    )
    parser.add_argument(
        "--scope-mix",
        choices=("streaming", "t_only", "no_profile", "device_only"),
        default="streaming",
        help="WS-Discovery scopes/types to announce",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not 0 <= args.rtsp_only <= args.count:
        parser.error("--rtsp-only must be between 0 and --count")
    return args


async def run(args: argparse.Namespace) -> None:
    """Start the farm, announce it on stdout, wait for a signal, stop."""
    width, height = args.size
    tls: dict[str, str] = {}
    folder = tempfile.TemporaryDirectory(prefix="virtualcam-tls-") if args.tls else None
    if folder is not None:
        cert, key = await asyncio.to_thread(self_signed, Path(folder.name), "127.0.0.1")
        tls = {"tls_cert": str(cert), "tls_key": str(key)}
    farm = CameraFarm(
        args.count,
        base_name=args.name,
        rtsp_only=args.count if args.no_http else args.rtsp_only,
        host="127.0.0.1",
        rtsp_port=args.rtsp_port,
        http_port=args.http_port,
        width=width,
        height=height,
        fps=args.fps,
        gop_seconds=args.gop,
        username=args.username,
        password=args.password if args.username else None,
        auth=args.auth,
        keyframe_on_connect=args.keyframe_on_connect,
        onvif=args.onvif,
        clock_offset=args.clock_offset,
        hevc_only=args.hevc_only,
        wsdiscovery_port=args.wsdiscovery_port,
        scope_mix=args.scope_mix,
        noise=args.noise,
        **tls,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await farm.start()
    try:
        for cam in farm.cameras:
            line: dict[str, object] = {
                "name": cam.name,
                "color": list(cam.color),
                "rtsp_url": cam.rtsp_url,
                "snapshot_url": cam.snapshot_url if cam.config.http_snapshot else None,
            }
            if cam.config.onvif:
                line |= {
                    "onvif_url": cam.onvif_url,
                    "device_uuid": cam.device_uuid,
                    "serial": cam.config.serial,
                    "mac": cam.config.mac,
                }
            if cam.config.wsdiscovery_port is not None:
                line["wsdiscovery_port"] = cam.wsdiscovery_port
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await farm.stop()
        if folder is not None:
            folder.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except OSError as err:  # typically a base port already in use
        sys.stderr.write(f"virtualcam: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
