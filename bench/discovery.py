"""WS-Discovery benchmark: HA core's ONVIF discovery beside LocalCam's scanner, in one run.

Everything multicast happens inside network namespaces this program creates and deletes:

    <p>h   br0 10.213.9.1/24      the scanners (HA's and LocalCam's), one subprocess each scan
     |-- veth -- <p>c00..<p>c49   10.213.9.10-59  50 cameras, mixed scopes, one per address
     |-- veth -- <p>s             10.213.9.100    a spoofer (200 fake devices per probe)
     `-- veth -- <p>x             10.213.9.101    one camera whose XAddr has port 99999

No namespace has a default route; the bridge floods multicast like a dumb switch. The cameras
are virtualcam.wsdiscovery responders: all 50 in one process whose sockets are created in each
camera namespace by a thread that enters it with setns(2) (a socket stays in the namespace it
was created in). Scans run as `ip netns exec <hub> python -m bench.discovery ha-scan|lc-scan`,
so the scanning process sees nothing but the hub namespace.

Scenarios (in this order, in one run): "mixed" (the 50 cameras), "spoof" (the 50 cameras and
the spoofer), "invalid_port" (the 50 cameras and the bad-port camera).

HA's side is HA's own code: homeassistant.components.onvif.config_flow.async_discovery (which
runs its wsdiscovery(): ThreadedWSDiscovery(ttl=4, relates_to=True), NVT type, one
Profile/Streaming scope, timeout=10), called with a minimal stand-in for `hass` that only
provides async_add_executor_job. If `onvif_parsers` (used only by HA's event manager, which
discovery never calls) is not installed, an empty stand-in module is registered so the
config-flow module imports. LocalCam's side is core.wsdiscovery.scan with the arguments
custom_components/localcam/discovery.async_scan passes (multicast on the enabled adapter's
IPv4 address, no unicast hosts, port 3702, default timeout and caps, NetPolicy()).

Usage: bench/discovery [--reps N]  (needs root for ip netns).
"""

import argparse
import asyncio
from collections.abc import Callable
import contextlib
from datetime import UTC, datetime
import importlib.util
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any, cast
import uuid

from tests.netns import bridged_namespaces, in_namespace, stop_process, wait_ready

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFIX = f"lcd{os.getpid()}"
SUBNET = "10.213.9"
HUB = f"{PREFIX}h"
HUB_IP = f"{SUBNET}.1"
CAMERAS = 50
SPOOF_COUNT = 200
SPOOF_NS = f"{PREFIX}s"
SPOOF_IP = f"{SUBNET}.100"
BAD_NS = f"{PREFIX}x"
BAD_IP = f"{SUBNET}.101"
BAD_NAME = "bad-port"
BAD_PORT = 99999
# Round-robin over five: 2/5 Streaming (what HA's probe matches), 1/5 each of the others.
MIXES = ("streaming", "streaming", "t_only", "no_profile", "device_only")
SCAN_TIMEOUT = 60.0  # bound on one scan subprocess (HA's alone takes ~10 s)
READY_TIMEOUT = 30.0
RESULT_TAG = "RESULT "
# (side, scan subcommand, its extra arguments). "localcam" is the scan as the add flow and
# background discovery call it (default timeout, 3 s); "localcam_1s" the same with
# timeout=1.0, to show whether the <= 1 s target is reachable with LocalCam's own scanner.
SIDES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ha", "ha", ()),
    ("localcam", "lc", ()),
    ("localcam_1s", "lc", ("--timeout", "1.0")),
)


def camera_ns(index: int) -> str:
    return f"{PREFIX}c{index:02d}"


def camera_ip(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


def camera_name(index: int) -> str:
    return f"cam-{index:02d}"


def camera_mix(index: int) -> str:
    return MIXES[index % len(MIXES)]


# -- namespaces ------------------------------------------------------------------------------


def namespaces(members: dict[str, str]) -> contextlib.AbstractContextManager[None]:
    """The hub (bridge, no default route) and one namespace per member {name: address}."""
    return bridged_namespaces(HUB, HUB_IP, members)


# -- responders (subcommand "serve", run under `ip netns exec`) -----------------------------


def serve(spec: list[dict[str, Any]]) -> int:
    """Answer probes for the given namespaces until SIGTERM; print READY, then STATS."""
    from virtualcam.wsdiscovery import Announcement, ScopeMix, WsDiscoveryResponder, scopes_for

    class NsResponder(WsDiscoveryResponder):
        """A responder whose socket is created inside another (named) namespace."""

        def __init__(self, netns: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.netns = netns

        def _socket(self) -> Any:
            return in_namespace(self.netns, super()._socket)

    responders: list[WsDiscoveryResponder] = []
    for item in spec:
        announcements = [
            Announcement.make(name, item["ip"], 80, mix=ScopeMix(mix)) for name, mix in item["cams"]
        ]
        if item.get("bad_port"):
            announcements.append(
                Announcement(
                    endpoint=f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, BAD_NAME)}",
                    xaddrs=(f"http://{item['ip']}:{BAD_PORT}/onvif/device_service",),
                    scopes=scopes_for(ScopeMix.STREAMING, BAD_NAME, "VirtualCam"),
                )
            )
        responders.append(
            NsResponder(
                item["netns"],
                announcements,
                multicast_interface=item["ip"],
                spoof=int(item.get("spoof", 0)),
            )
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            for responder in responders:
                await responder.start()
            print("READY", flush=True)
            await stop.wait()
        finally:
            for responder in responders:
                responder.stop()
            probes = sum(r.stats.probes for r in responders)
            replies = sum(r.stats.replies for r in responders)
            print(f"STATS probes={probes} replies={replies}", flush=True)

    asyncio.run(run())
    return 0


def start_serve(netns: str, spec: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """A `serve` subprocess started inside namespace `netns`."""
    return subprocess.Popen(
        [
            "ip", "netns", "exec", netns, sys.executable, "-m", "bench.discovery",
            "serve", json.dumps(spec),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def stop_proc(proc: subprocess.Popen[str]) -> str:
    """Stop one process we started (by its PID); its stdout, or "" if stopping failed."""
    try:
        return stop_process(proc)
    except OSError, subprocess.SubprocessError:
        return ""


# -- scans (subcommands "ha-scan" and "lc-scan", run in the hub namespace) ------------------


class _MiniHass:
    """What HA's async_discovery uses of `hass`: async_add_executor_job only."""

    async def async_add_executor_job(self, target: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, target, *args)


def _import_ha_discovery() -> Callable[[Any], Any]:
    """HA's own async_discovery from the onvif config flow (see the module docstring)."""
    import types

    if importlib.util.find_spec("onvif_parsers") is None:
        stub = types.ModuleType("onvif_parsers")
        util = types.ModuleType("onvif_parsers.util")
        stub.util = util  # type: ignore[attr-defined]
        sys.modules["onvif_parsers"] = stub
        sys.modules["onvif_parsers.util"] = util
    from homeassistant.components.onvif.config_flow import async_discovery

    return cast(Callable[[Any], Any], async_discovery)


def ha_scan() -> dict[str, Any]:
    async_discovery = _import_ha_discovery()

    async def run() -> dict[str, Any]:
        start = time.monotonic()
        error = None
        devices: list[dict[str, Any]] = []
        try:
            devices = await async_discovery(_MiniHass())
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        seconds = time.monotonic() - start
        listed = [
            {"name": d.get("name"), "host": d.get("host"), "port": d.get("port")} for d in devices
        ]
        return {"seconds": seconds, "error": error, "devices": listed}

    return asyncio.run(run())


def lc_scan(timeout: float | None) -> dict[str, Any]:
    from custom_components.localcam.core.netpolicy import NetPolicy
    from custom_components.localcam.core.wsdiscovery import WSD_PORT, scan

    async def run() -> dict[str, Any]:
        start = time.monotonic()
        error = None
        devices: list[Any] = []
        try:
            devices = await scan(
                multicast_interfaces=[HUB_IP],
                unicast_hosts=[],
                port=WSD_PORT,
                policy=NetPolicy(),
                **({} if timeout is None else {"timeout": timeout}),
            )
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
        seconds = time.monotonic() - start
        listed = [{"name": d.name, "host": d.host, "port": d.port} for d in devices]
        return {"seconds": seconds, "error": error, "devices": listed}

    return asyncio.run(run())


def run_scan(kind: str, *extra: str) -> dict[str, Any]:
    """One scan in a subprocess inside the hub namespace; its RESULT line, parsed."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [
                "ip", "netns", "exec", HUB, sys.executable, "-m", "bench.discovery",
                f"{kind}-scan", *extra,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=SCAN_TIMEOUT,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": f"scan did not finish in {SCAN_TIMEOUT} s", "devices": []}
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            data = cast(dict[str, Any], json.loads(line.removeprefix(RESULT_TAG)))
            data["process_seconds"] = time.monotonic() - started
            return data
    return {
        "seconds": None,
        "error": f"no result (exit {result.returncode}): {result.stderr[-500:]}",
        "devices": [],
    }


# -- scoring and report -----------------------------------------------------------------------


def score(raw: dict[str, Any]) -> dict[str, Any]:
    """Counts from one scan's device list."""
    real = {camera_name(i): camera_mix(i) for i in range(CAMERAS)}
    names = [d["name"] for d in raw["devices"]]
    hosts = [d["host"] for d in raw["devices"]]
    cams = sorted({n for n in names if n in real})
    by_mix = {mix: sum(1 for n in cams if real[n] == mix) for mix in dict.fromkeys(MIXES)}
    return {
        "seconds": raw["seconds"],
        "error": raw["error"],
        "step_failed": raw["error"] is not None,
        "listed": len(names),
        "cameras_listed": len(cams),
        "cameras_by_mix": by_mix,
        "fakes_listed": sum(1 for h in hosts if h == SPOOF_IP),
        "bad_port_listed": sum(1 for n in names if n == BAD_NAME),
        "missing_cameras": sorted(set(real) - set(cams)),
    }


def mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-scenario, per-side figures over the repetitions (mean time, worst counts)."""
    return {
        "seconds_mean": mean([r["seconds"] for r in runs]),
        "seconds_max": max((r["seconds"] for r in runs if r["seconds"] is not None), default=None),
        "cameras_listed_min": min(r["cameras_listed"] for r in runs),
        "streaming_listed_min": min(r["cameras_by_mix"]["streaming"] for r in runs),
        "fakes_listed_max": max(r["fakes_listed"] for r in runs),
        "bad_port_listed_max": max(r["bad_port_listed"] for r in runs),
        "step_failed_any": any(r["step_failed"] for r in runs),
        "errors": sorted({r["error"] for r in runs if r["error"]}),
    }


def ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None:
        return "n/a"
    if den == 0:
        return "inf" if num else "="
    return f"{num / den:.1f}x"


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The side-by-side table (HA vs LocalCam with ratios, plus LocalCam with a 1 s scan)."""
    rows: list[tuple[str, ...]] = []

    def secs(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    def outcome(side: dict[str, Any]) -> str:
        return "step FAILED" if side["step_failed_any"] else "ok"

    def rest_listed(side: dict[str, Any]) -> str:
        return "yes" if side["cameras_listed_min"] and not side["step_failed_any"] else "no"

    def row_for(scenario: str, sides: dict[str, dict[str, Any]]) -> Callable[..., None]:
        ha, lc, lc1 = sides["ha"], sides["localcam"], sides["localcam_1s"]

        def row(work: str, key: str, fmt: Callable[[Any], str], how: str) -> None:
            if how == "more":  # more is better: LocalCam over HA
                rat = f"LC/HA {ratio(lc[key], ha[key])}"
            elif how:  # less is better (time, fakes): HA over LocalCam
                rat = f"HA/LC {ratio(ha[key], lc[key])}"
            else:
                rat = ""
            rows.append((f"{scenario}: {work}", fmt(ha[key]), fmt(lc[key]), rat, fmt(lc1[key])))

        return row

    for scenario, sides in summary.items():
        ha, lc, lc1 = sides["ha"], sides["localcam"], sides["localcam_1s"]
        row = row_for(scenario, sides)
        row("time to result", "seconds_mean", secs, "time")
        row(f"cameras listed of {CAMERAS}", "cameras_listed_min", str, "more")
        if scenario == "spoof":
            row(
                f"Streaming cameras listed of {MIXES.count('streaming') * CAMERAS // len(MIXES)}",
                "streaming_listed_min",
                str,
                "more",
            )
            row(f"fakes listed (spoofer: {SPOOF_COUNT}/probe)", "fakes_listed_max", str, "fewer")
        if scenario == "invalid_port":
            rows.append(("invalid_port: step outcome", outcome(ha), outcome(lc), "", outcome(lc1)))
            rows.append(
                (
                    "invalid_port: rest still listed",
                    rest_listed(ha),
                    rest_listed(lc),
                    "",
                    rest_listed(lc1),
                )
            )
            row("bad-port reply listed", "bad_port_listed_max", str, "")
    header = ("work", "HA core", "LocalCam", "ratio", "LocalCam scan(timeout=1 s)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.append(
        "(times: mean over reps; cameras: fewest over reps; fakes/bad-port: most over reps. "
        "HA: its async_discovery, 10 s probe; LocalCam: core scan as the flow calls it.)"
    )
    return "\n".join(lines)


# -- orchestration ----------------------------------------------------------------------------


def camera_spec() -> list[dict[str, Any]]:
    return [
        {"netns": camera_ns(i), "ip": camera_ip(i), "cams": [[camera_name(i), camera_mix(i)]]}
        for i in range(CAMERAS)
    ]


def run_scenario(name: str, reps: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {side: [] for side, _, _ in SIDES}
    for rep in range(reps):
        for side, kind, extra in SIDES:
            raw = run_scan(kind, *extra)
            scored = score(raw)
            scored["rep"] = rep
            scored["process_seconds"] = raw.get("process_seconds")
            scored["devices"] = raw["devices"]
            out[side].append(scored)
            print(
                f"  {name:13s} {side:8s} rep {rep}: {scored['cameras_listed']} cameras, "
                f"{scored['fakes_listed']} fakes, {scored['bad_port_listed']} bad-port, "
                f"{'n/a' if scored['seconds'] is None else f'{scored["seconds"]:.2f}'} s"
                + (f", error: {scored['error'][:120]}" if scored["error"] else ""),
                flush=True,
            )
    return out


def orchestrate(reps: int) -> dict[str, Any]:
    members = {camera_ns(i): camera_ip(i) for i in range(CAMERAS)}
    members[SPOOF_NS] = SPOOF_IP
    members[BAD_NS] = BAD_IP
    scenarios: dict[str, dict[str, list[dict[str, Any]]]] = {}
    stats: dict[str, str] = {}
    procs: dict[str, subprocess.Popen[str]] = {}
    t0 = time.monotonic()
    with namespaces(members):
        print(f"namespaces up in {time.monotonic() - t0:.1f} s ({len(members) + 1})", flush=True)
        try:
            procs["cameras"] = start_serve(camera_ns(0), camera_spec())
            wait_ready(procs["cameras"], READY_TIMEOUT)
            scenarios["mixed"] = run_scenario("mixed", reps)

            procs["spoofer"] = start_serve(
                SPOOF_NS, [{"netns": SPOOF_NS, "ip": SPOOF_IP, "cams": [], "spoof": SPOOF_COUNT}]
            )
            wait_ready(procs["spoofer"], READY_TIMEOUT)
            scenarios["spoof"] = run_scenario("spoof", reps)
            stats["spoofer"] = stop_proc(procs.pop("spoofer")).strip()

            procs["bad_port"] = start_serve(
                BAD_NS, [{"netns": BAD_NS, "ip": BAD_IP, "cams": [], "bad_port": True}]
            )
            wait_ready(procs["bad_port"], READY_TIMEOUT)
            scenarios["invalid_port"] = run_scenario("invalid_port", reps)
        finally:
            for key in list(procs):
                stats[key] = stop_proc(procs.pop(key)).strip()
    return {"scenarios": scenarios, "responder_output": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/discovery", description=__doc__.split("\n")[0])
    parser.add_argument(
        "mode", nargs="?", default="bench", choices=["bench", "serve", "ha-scan", "lc-scan"]
    )
    parser.add_argument("spec", nargs="?", help="(serve) JSON list of namespaces to answer in")
    parser.add_argument("--timeout", type=float, help="(lc-scan) scan timeout, s")
    parser.add_argument("--reps", type=int, default=1, help="scans per side and scenario (1-5)")
    args = parser.parse_args(argv)

    if args.mode == "serve":
        return serve(json.loads(args.spec))
    if args.mode in ("ha-scan", "lc-scan"):
        result = ha_scan() if args.mode == "ha-scan" else lc_scan(args.timeout)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    if os.geteuid() != 0:
        print("bench/discovery: needs root (ip netns add)", file=sys.stderr)
        return 1
    reps = min(max(args.reps, 1), 5)

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # so the finally blocks clean up
    started = datetime.now(UTC)
    print(
        f"WS-Discovery bench: {CAMERAS} cameras ({', '.join(sorted(set(MIXES)))}), "
        f"spoofer x{SPOOF_COUNT}, one XAddr port {BAD_PORT}; {reps} rep(s)",
        flush=True,
    )
    data = orchestrate(reps)
    summary = {
        scenario: {side: summarize(runs) for side, runs in sides.items()}
        for scenario, sides in data["scenarios"].items()
    }
    text = table(summary)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"discovery-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "benchmark": "discovery",
        "started": started.isoformat(),
        "reps": reps,
        "setup": {
            "cameras": CAMERAS,
            "mixes": {
                mix: MIXES.count(mix) * CAMERAS // len(MIXES) for mix in dict.fromkeys(MIXES)
            },
            "spoofed_per_probe": SPOOF_COUNT,
            "bad_port": BAD_PORT,
            "topology": f"hub {HUB_IP}/24 bridge; cameras {camera_ip(0)}-{camera_ip(CAMERAS - 1)}, "
            f"spoofer {SPOOF_IP}, bad-port {BAD_IP}; one netns each, no default route",
            "ha": "homeassistant.components.onvif.config_flow.async_discovery (HA's code, "
            "minimal hass stand-in with async_add_executor_job)",
            "localcam": "core.wsdiscovery.scan as discovery.async_scan calls it",
        },
        "summary": summary,
        "table": text,
        **data,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    # A scan process that printed no result crashed (an import, the harness):
    # that is no figure for either side, so the bench fails loudly.
    crashed = sorted(
        {
            run["error"]
            for sides in data["scenarios"].values()
            for runs in sides.values()
            for run in runs
            if run["error"] and run["error"].startswith("no result")
        }
    )
    for error in crashed:
        print(f"bench/discovery: a scan crashed: {error}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
