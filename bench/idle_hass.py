"""Idle CPU of the whole hass process, three side by side: no camera, 32 LocalCam, 32 generic.

ANCHORS.md's "32 cameras configured, nobody watching" is a Home Assistant
that was restarted with its cameras configured and left alone. bench/run
measures its idle phase in the one hass that ran every other phase (its
contenders, flows and 200-viewer bursts live on in it), where hass with no
idle camera at all reads 0.1-0.4 % of a core; this bench measures what a
user's installation does:

- three hass processes on the same 32 virtual cameras (their own process,
  bench.camhost): one with no camera, one with 32 LocalCam cameras, one with
  32 of HA core's generic cameras (still URL only, as bench/run adds them);
- each camera added through its integration's config flow, then every hass
  restarted, so none carries what adding left behind;
- after a settle, the CPU of each process (schedstat, every thread) over the
  same windows, so a moment when the shared host is busy falls on all three.

Prints a table (share of one core per process, LocalCam's over generic's and
over hass alone) and the requests the cameras saw; writes
bench/results/idle-hass-<UTC time>.json. Everything runs on 127.0.0.1.

Usage: bench/idle_hass [--cameras N] [--settle S] [--window S] [--windows N]
"""

import argparse
import asyncio
from collections import Counter
import contextlib
import itertools
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.harness import (
    CAMERA_PASSWORD,
    CAMERA_USER,
    ROOT,
    CamHost,
    Hass,
    cpu_ns,
    cpu_ns_between,
)

NONE, LOCALCAM, GENERIC = "hass, no camera", "LocalCam", "HA generic"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=32)
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the restarts")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument("--windows", type=int, default=4)
    return parser.parse_args(argv)


def log(text: str) -> None:
    """Progress, on stderr."""
    print(f"[idle-hass {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def add_cameras(hass: Hass, who: str, cams: CamHost, names: list[str]) -> None:
    """Add each camera through the integration's own flow, one at a time."""
    for name in names:
        snapshot = cams.cameras[name]["snapshot_url"]
        if who == LOCALCAM:
            await hass.add_localcam(cams.rtsp_url(name), snapshot)
        else:
            await hass.add_generic(still_url=snapshot, stream_url=None)


def share(ns: int, seconds: float) -> float:
    """CPU ns over ``seconds`` as a percentage of one core."""
    return 100 * ns / 1e9 / seconds


async def measure(
    processes: dict[str, Hass], cams: CamHost, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Every process's CPU over the same windows, and the cameras' requests meanwhile."""
    marks: list[tuple[float, dict[str, dict[str, int] | None]]] = []

    def sample() -> None:
        marks.append((time.monotonic(), {who: cpu_ns(h.pid) for who, h in processes.items()}))

    before = await cams.stats()
    sample()
    for i in range(args.windows):
        await asyncio.sleep(args.window)
        sample()
        log(f"window {i + 1}/{args.windows}")
    after = await cams.stats()
    for hass in processes.values():
        hass.check_alive()
    wall = marks[-1][0] - marks[0][0]
    rows: dict[str, Any] = {}
    for who in processes:
        windows, exited = [], 0
        for (t0, a), (t1, b) in itertools.pairwise(marks):
            first, last = a[who], b[who]
            if first is None or last is None:
                raise RuntimeError("this kernel has no schedstat: nothing fine enough to measure")
            used, gone = cpu_ns_between(first, last)
            exited = max(exited, gone)
            windows.append(share(used, t1 - t0))
        total, _ = cpu_ns_between(marks[0][1][who] or {}, marks[-1][1][who] or {})
        rows[who] = {
            "pct_one_core": share(total, wall),
            "windows": windows,
            "median_window": statistics.median(windows),
            "threads_exited": exited,
        }
    upstream = Counter[str]()
    for name in names:
        for key, value in after[name].items():
            if isinstance(value, int | float):
                upstream[key] += value - before[name].get(key, 0)
    requests = upstream["snapshot_requests"] + upstream["describe_requests"]
    real = requests - upstream["unauthorized_responses"]
    return {
        "seconds": round(wall, 1),
        "processes": rows,
        "upstream": dict(upstream),
        "requests_per_camera_per_minute": real / len(names) / (wall / 60),
    }


def table(result: dict[str, Any], cameras: int) -> str:
    """The figures, one line per process, then the ratios."""
    rows = result["processes"]
    lines = [
        f"idle CPU of the whole hass process, {cameras} cameras configured, nobody watching "
        f"({result['seconds']:.0f} s, {len(rows[NONE]['windows'])} windows, the same for all):"
    ]
    for who in (NONE, LOCALCAM, GENERIC):
        r = rows[who]
        windows = " / ".join(f"{w:.3f}" for w in r["windows"])
        lines.append(f"  {who:16} {r['pct_one_core']:.3f} % of one core (windows {windows})")
    lc, ha, none = (rows[w]["pct_one_core"] for w in (LOCALCAM, GENERIC, NONE))
    lines.append(
        f"  LocalCam - hass alone: {lc - none:+.3f} %; generic - hass alone: {ha - none:+.3f} %;"
        f" LocalCam / generic: {lc / ha:.2f}"
        if ha > 0
        else "  generic used no CPU at all"
    )
    lines.append(
        f"  target <= 0.1 % of one core: {'met' if lc <= 0.1 else 'NOT met'} ({lc:.3f} %);"
        f" camera requests: {result['requests_per_camera_per_minute']:.2f} per camera per minute"
        f" (all processes together; only LocalCam's health checks ask)"
    )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the cameras and the three hass processes, add, restart, settle, measure."""
    names = [f"idle-{i:02d}" for i in range(args.cameras)]
    cams = CamHost()
    processes: dict[str, Hass] = {}
    with tempfile.TemporaryDirectory(prefix="localcam-idle-hass-") as tmp:
        try:
            await cams.start(
                {
                    "username": CAMERA_USER,
                    "password": CAMERA_PASSWORD,
                    "width": 640,
                    "height": 360,
                    "fps": 10.0,
                    "cameras": [{"name": name, "gop": 1.0, "http": True} for name in names],
                }
            )
            for who in (NONE, LOCALCAM, GENERIC):
                processes[who] = Hass(config_dir=Path(tmp) / who.split()[-1].replace(",", ""))
            log("starting three hass processes")
            await asyncio.gather(*(h.start([]) for h in processes.values()))
            log(f"adding {args.cameras} cameras to two of them")
            await asyncio.gather(
                add_cameras(processes[LOCALCAM], LOCALCAM, cams, names),
                add_cameras(processes[GENERIC], GENERIC, cams, names),
            )
            log("restarting all three (the cameras set up from storage)")
            for hass in processes.values():
                await hass.restart()
            log(f"settling {args.settle:.0f} s")
            await asyncio.sleep(args.settle)
            return await measure(processes, cams, names, args)
        finally:
            for hass in processes.values():
                with contextlib.suppress(Exception):
                    await hass.stop()
            await cams.stop()


def main(argv: list[str]) -> int:
    """Run, print the table, keep the JSON."""
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(table(result, args.cameras))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"idle-hass-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **result}, indent=1))
    log(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
