"""What the RTSP guard's relay costs a live stream, beside FFmpeg reading the camera directly.

Home Assistant's way: its stream worker (FFmpeg through PyAV) reads the
camera's RTSP itself. LocalCam's: the same reader, through core.rtsp_guard's
relay in the event loop. One virtual camera (its own process, so its encoder
is not counted; noise in its picture gives it a real camera's bit rate)
streams H.264 over TCP; this process demuxes it for a fixed
time each way, as HA's worker does (packets, no decode), and reports its
own CPU time, the bytes received, and the ratio (JSON in bench/results/).
All on 127.0.0.1.

Then cold stills, as LocalCam takes one (a new warm session, its first
keyframe as a JPEG), alternating straight to the camera and through the
relay: what the relay's hop costs the first picture.

With --tls the camera serves rtsps:// (self-signed): FFmpeg reads it with its
certificate check off (tls_verify=0, as Home Assistant's stream runs it unless
an integration asks for the check), and the relay is the TLS client, FFmpeg
reading plain RTSP from it.

With --udp the camera is set to UDP: FFmpeg reads it directly over UDP (HA's
way), and through the relay over TCP while the relay takes the camera's
datagrams (every packet passes through this process's event loop).

    .venv/bin/python -m bench.relay [--seconds 15] [--size 1280x720] [--fps 25] [--tls | --udp]
"""

import argparse
import asyncio
import contextlib
import json
import os
from pathlib import Path
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import av

from custom_components.localcam.core.models import RtspTransport
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.rtsp import WarmGrabber
from custom_components.localcam.core.rtsp_guard import RtspGuard

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _cpu_seconds() -> float:
    """This process's CPU time (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _demux(url: str, seconds: float, result: dict[str, float], transport: str) -> None:
    """Read packets for ``seconds`` after the first one, as HA's worker does (no decode)."""
    options = {"rtsp_transport": transport, "timeout": "5000000"}
    if url.startswith("rtsps://"):
        options["tls_verify"] = "0"  # the camera's certificate is self-signed
    with av.open(url, options=options, timeout=(5, 5)) as container:
        stream = container.streams.video[0]
        deadline = None
        size = packets = 0
        for packet in container.demux(stream):
            if deadline is None:
                deadline = time.monotonic() + seconds
                result["cpu_start"] = _cpu_seconds()
            size += packet.size
            packets += 1
            if time.monotonic() >= deadline:
                break
        result["cpu_end"] = _cpu_seconds()
        result["bytes"] = size
        result["packets"] = packets


async def _measure(url: str, seconds: float, transport: str = "tcp") -> dict[str, float]:
    """Demux in a thread (as HA's worker), with this event loop free to run the relay."""
    result: dict[str, float] = {}
    await asyncio.to_thread(_demux, url, seconds, result, transport)
    if "cpu_end" not in result:
        raise RuntimeError("the demux thread failed")
    return result


async def _cold_still(url: str, transport: RtspTransport) -> float:
    """Seconds to one cold still as LocalCam takes it (a new warm session), then closed."""
    grabber = WarmGrabber(transport=transport, linger=0)
    try:
        started = time.monotonic()
        await grabber.grab(url, timeout=5)
        return time.monotonic() - started
    finally:
        await grabber.close()


async def _start_camera(size: str, fps: float, tls: bool) -> tuple[subprocess.Popen[str], str]:
    """One virtual camera in its own process; return it and its RTSP URL."""
    command = [sys.executable, "-m", "virtualcam", "--no-http", "--noise", "--size", size]
    command += ["--tls"] if tls else []
    process = subprocess.Popen(  # noqa: ASYNC220 - read line by line below, bounded
        [*command, "--fps", str(fps)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = None
    try:
        async with asyncio.timeout(60):  # bounded in time as in count
            for _ in range(10):
                line = await asyncio.to_thread(process.stdout.readline)
                if line.strip() == "READY":
                    break
                if line.startswith("{"):
                    url = json.loads(line)["rtsp_url"]
    except TimeoutError:
        url = None
    if url is None:
        process.terminate()
        raise RuntimeError("the virtual camera did not start")
    return process, url


def _row(name: str, result: dict[str, float], seconds: float) -> str:
    cpu = (result["cpu_end"] - result["cpu_start"]) / seconds * 100
    rate = result["bytes"] * 8 / seconds / 1e6
    return f"{name:<34} {rate:7.2f} Mbit/s {result['packets']:7.0f} packets {cpu:7.2f} % of a core"


async def main(args: argparse.Namespace) -> None:
    """Run both ways, alternating, and print the figures."""
    process, url = await _start_camera(args.size, args.fps, args.tls)
    guard = RtspGuard()
    try:
        target = await NetPolicy().check(url)
        relayed = guard.url(target, None, None, verify_ssl=False, udp=args.udp)
        direct = "udp" if args.udp else "tcp"
        runs: dict[str, list[dict[str, float]]] = {"direct": [], "relay": []}
        for _ in range(args.rounds):
            runs["direct"].append(await _measure(target.pinned_url(), args.seconds, direct))
            runs["relay"].append(await _measure(relayed, args.seconds))
        # Cold stills, alternating which way goes first; the pause before
        # each (0.4-0.8 s) steps through the camera's frame clock, which
        # alone moves a cold still by up to a frame interval. (Not for
        # --tls: FFmpeg would check the self-signed certificate directly.)
        cold: dict[str, list[float]] = {"direct": [], "relay": []}
        ways = (("direct", target.pinned_url()), ("relay", relayed))
        for i in range(0 if args.tls else args.cold):
            for name, way in ways if i % 2 else ways[::-1]:
                await asyncio.sleep(0.4 + (i * 0.037) % 0.4)
                transport = RtspTransport(direct) if name == "direct" else RtspTransport.TCP
                cold[name].append(await _cold_still(way, transport))
    finally:
        await guard.close()
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    scheme = "rtsps (TLS)" if args.tls else "rtsp over UDP" if args.udp else "rtsp"
    print(
        f"relay: one {scheme} camera {args.size} at {args.fps:g} fps, "
        f"{args.seconds:g} s x {args.rounds}"
    )
    totals: dict[str, float] = {}
    labels = (("direct", "HA's way: FFmpeg reads the camera"), ("relay", "LocalCam: via the relay"))
    for name, label in labels:
        merged: dict[str, Any] = {
            "cpu_start": 0.0,
            "cpu_end": sum(r["cpu_end"] - r["cpu_start"] for r in runs[name]),
            "bytes": sum(r["bytes"] for r in runs[name]),
            "packets": sum(r["packets"] for r in runs[name]),
        }
        print(_row(label, merged, args.seconds * args.rounds))
        totals[name] = merged["cpu_end"]
    extra = (totals["relay"] - totals["direct"]) / (args.seconds * args.rounds) * 100
    ratio = totals["relay"] / totals["direct"]
    print(f"relay's own cost: {extra:.2f} % of a core; LocalCam:HA CPU {ratio:.2f}")
    if cold["relay"]:
        medians = {name: statistics.median(values) for name, values in cold.items()}
        print(
            f"cold still ({args.cold} each, LocalCam's grab): straight to the camera "
            f"{medians['direct'] * 1000:.1f} ms median, via the relay "
            f"{medians['relay'] * 1000:.1f} ms; "
            f"relay:direct {medians['relay'] / medians['direct']:.2f}"
        )
    if args.udp:
        print(f"datagrams from other senders dropped: {guard.datagrams_refused}")
    name = "relay-tls" if args.tls else "relay-udp" if args.udp else "relay"
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "runs": runs,
                "relay_cost_pct": extra,
                "cpu_ratio": ratio,
                "cold_seconds": cold,
            },
            indent=2,
        )
    )
    print(f"JSON: {out.relative_to(ROOT)}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/relay", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--cold", type=int, default=60, help="cold stills each way")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--tls", action="store_true", help="an rtsps:// camera")
    kind.add_argument("--udp", action="store_true", help="a camera set to UDP")
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("LOCALCAM_DISABLE_NETWORK_SCANS", "1")
    asyncio.run(main(_parse()))
