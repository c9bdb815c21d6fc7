"""LocalCam's reliability soak: one real hass, N cameras, mixed traffic, scheduled faults.

Everything listens on and talks to 127.0.0.1. Cameras run in separate
processes started here (one process per camera that gets rebooted, one for
the rest), so a reboot is a stop and start of that process by its PID on the
same ports. Every loop is bounded in time and count; only processes started
here are ever signalled, by PID.
"""

import argparse
import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
import ipaddress
import json
import os
from pathlib import Path
import random
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    CAMERA_PASSWORD,
    CAMERA_USER,
    HOST,
    ROOT,
    Hass,
    Sample,
    camera_of,
    cpu_seconds,
    end_process,
    fetch,
    free_port,
    rss_kb,
    wait_for,
)
from bench.soak_cast import CastTraffic
from tests.e2e_support import in_private_netns
from tests.netns import can_make_namespace, rerun_in_namespace
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for

RESULTS = ROOT / "bench" / "results"
SELF = Path(__file__).resolve()
WIDTH, HEIGHT, FPS = 320, 180, 5.0
DEFAULT_MAX_AGE = 1.0  # LocalCam's default snapshot_max_age (const.py)
CLOCK_SLACK = 0.05  # isoformat rounding and wall/monotonic drift, seconds
RECOVERY_TARGET = 30.0
RECOVERY_LIMIT = 90.0
PROXY_SIZES = [None, (160, 90), (240, 136), (320, 180)]
CARDS = 4  # requests one viewer (a dashboard) has in flight at most
TCP_STATES_LISTEN = "0A"


# -- camera processes ---------------------------------------------------------------------------


def _camera_config(cam: dict[str, Any], host: str = HOST) -> CameraConfig:
    """A soak camera on `host`; the swap pair's are ONVIF, with an identity."""
    identity: dict[str, Any] = {}
    if cam.get("onvif"):
        identity = {
            "onvif": True,
            "serial": f"SOAK-SERIAL-{cam['index']}",
            "mac": f"02:00:00:00:50:{cam['index']:02x}",
        }
    return CameraConfig(
        name=cam["name"],
        color=color_for(cam["index"]),
        host=host,
        rtsp_port=cam["rtsp_port"],
        http_port=cam["http_port"],
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        gop_seconds=1.0,
        username=CAMERA_USER,
        password=CAMERA_PASSWORD,
        http_snapshot=cam.get("http", True),
        **identity,
    )


async def camera_process(spec: dict[str, Any]) -> None:
    """Run the cameras of `spec` until SIGTERM, the parent's exit or an hour.

    A swap pair (two ONVIF cameras on 127.0.0.2 and 127.0.0.3, same ports)
    takes "swap" / "unswap" lines on stdin: both reboot onto each other's
    address (a reused DHCP lease) or back; "DONE" answers each.
    """
    cameras = [VirtualCamera(_camera_config(cam)) for cam in spec["cameras"]]
    pair = spec.get("pair") or []
    pair_cams = [VirtualCamera(_camera_config(cam, cam["host"])) for cam in pair]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    commands: asyncio.Queue[str] = asyncio.Queue()
    if pair:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def read_commands() -> None:
            while line := await reader.readline():
                await commands.put(line.decode().strip())

        reading = loop.create_task(read_commands())
    try:
        await asyncio.gather(*(cam.start() for cam in [*cameras, *pair_cams]))
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        for _ in range(3600):
            if stop.is_set() or os.getppid() != parent:
                break
            command = ""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    command = await commands.get()
            if command in ("swap", "unswap"):
                await asyncio.gather(*(cam.stop() for cam in pair_cams))
                hosts = [cam["host"] for cam in pair]
                if command == "swap":
                    hosts.reverse()
                pair_cams = [
                    VirtualCamera(_camera_config(cam, host))
                    for cam, host in zip(pair, hosts, strict=True)
                ]
                await asyncio.gather(*(cam.start() for cam in pair_cams))
                sys.stdout.write("DONE\n")
                sys.stdout.flush()
    finally:
        if pair:
            reading.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(
                    *(cam.stop() for cam in [*cameras, *pair_cams]), return_exceptions=True
                )


@dataclass
class Cam:
    """One virtual camera as the soak sees it."""

    index: int
    name: str
    http: bool
    rtsp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    host: str = HOST
    onvif: bool = False
    entry_id: str = ""
    entity_id: str = ""
    header_id: str | None = None  # X-LocalCam-Camera of its first frame

    @property
    def rtsp_url(self) -> str:
        """Its RTSP URL (no credentials)."""
        return f"rtsp://{self.host}:{self.rtsp_port}/stream"

    @property
    def snapshot_url(self) -> str | None:
        """Its HTTP snapshot URL, if it has one."""
        return f"http://{self.host}:{self.http_port}/snapshot.jpg" if self.http else None

    @property
    def control_url(self) -> str:
        """Its fault switch (HTTP cameras only)."""
        return f"http://{self.host}:{self.http_port}/control"


class CameraProcess:
    """A `bench/soak.py --camera-process` child holding some of the cameras."""

    def __init__(self, cams: list[Cam], pair: list[Cam] | None = None) -> None:
        """Nothing runs until start()."""
        self.cams = cams
        self.pair = pair or []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process and wait (bounded) until its cameras listen."""
        spec = {
            "cameras": [
                {
                    "index": c.index,
                    "name": c.name,
                    "rtsp_port": c.rtsp_port,
                    "http_port": c.http_port,
                    "http": c.http,
                }
                for c in self.cams
            ],
            "pair": [
                {
                    "index": c.index,
                    "name": c.name,
                    "rtsp_port": c.rtsp_port,
                    "http_port": c.http_port,
                    "host": c.host,
                    "onvif": True,
                }
                for c in self.pair
            ],
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SELF),
            "--camera-process",
            json.dumps(spec),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE if self.pair else asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            line = await self.proc.stdout.readline()
        if line.strip() != b"READY":
            await end_process(self.proc, 5)
            raise RuntimeError("a camera process exited before it was ready")

    async def command(self, line: str) -> None:
        """Tell the swap pair to "swap" or "unswap"; wait (bounded) until it has."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(60):
            answer = await self.proc.stdout.readline()
        if answer.strip() != b"DONE":
            raise RuntimeError(f"the camera process did not {line}")

    async def stop(self) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL)."""
        if self.proc is not None:
            await end_process(self.proc, 15)


# -- /proc audit --------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _hex_addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/{tcp,udp}{,6} prints it (32-bit words in host order)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _allowed(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Unconnected (all zero) or loopback, also as an IPv4-mapped IPv6 address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_unspecified or addr in ipaddress.ip_network("127.0.0.0/8") or addr.is_loopback


def outside_peers(pid: int) -> list[str]:
    """Remote addresses outside 127.0.0.0/8 of the sockets `pid` holds right now."""
    inodes = _socket_inodes(pid)
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
            for line in lines:
                parts = line.split()
                if len(parts) < 10 or parts[9] not in inodes:
                    continue
                rem_addr, rem_port = parts[2].split(":")
                addr = _hex_addr(rem_addr)
                if not _allowed(addr):
                    found.append(f"{proto} {addr} port {int(rem_port, 16)}")
    return found


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Counters:
    """What the traffic saw."""

    requests: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    decoded: int = 0
    cross_camera: list[dict[str, Any]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    broken_200: int = 0
    header_mismatch: list[dict[str, Any]] = field(default_factory=list)
    max_age_seen: float = 0.0
    outside: dict[str, int] = field(default_factory=dict)
    audit_samples: int = 0
    peak_rss_kb: int = 0
    peak_cpu_pct: float = 0.0
    cpu_s: float = 0.0


class Soak:
    """One soak run."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Plan the cameras; nothing runs yet."""
        self.args = args
        self.rng = random.Random(args.seed)
        n, rtsp_only = args.cameras, max(2, args.cameras // 8)
        self.cams = [Cam(i, f"soak-{i:02d}", http=i < n - rtsp_only) for i in range(n)]
        # Two ONVIF cameras on 127.0.0.2 and .3 with the same ports: they swap
        # addresses once (a reused DHCP lease); identity must keep every frame
        # with its own entity. They take dashboard traffic like the others.
        rtsp_port, http_port = free_port(), free_port()
        self.pair = [
            Cam(n + k, f"soak-swap-{k}", http=True, rtsp_port=rtsp_port, http_port=http_port,
                host=f"127.0.0.{2 + k}", onvif=True)
            for k in range(2)
        ]  # fmt: skip
        self.colors = [color_for(i) for i in range(n + len(self.pair))]
        # One HTTP and one RTSP-only camera get rebooted (two of each from 16 cameras).
        per = 2 if n >= 16 else 1
        self.reboot_cams = [c for c in self.cams if c.http][-per:] + [
            c for c in self.cams if not c.http
        ][:per]
        self.fault_cams = [c for c in self.cams if c.http and c not in self.reboot_cams]
        self.reload_cams = [c for c in self.cams if c not in self.reboot_cams]
        self.procs = {c.index: CameraProcess([c]) for c in self.reboot_cams}
        rest = [c for c in self.cams if c not in self.reboot_cams]
        self.bulk = CameraProcess(rest, self.pair)
        self.cams = [*self.cams, *self.pair]
        self.config_dir = Path(tempfile.mkdtemp(prefix="localcam-soak-"))
        self.hass = Hass(config_dir=self.config_dir)
        self.counters = Counters()
        self.events: list[dict[str, Any]] = []
        self.max_age = DEFAULT_MAX_AGE
        self.restarting = False
        # False from a restart until LocalCam's actions are registered again
        # (hass answers HTTP before its integrations are set up): no cast is
        # sent before, as an automation would get "action not found" then.
        self.actions_ready = True
        # Cameras whose entry is being set up again (a reload, a completed reauth, a
        # restart) until their first good frame: a 404 then is "no such entity yet".
        self.loading: set[int] = set()
        self.swap_outcomes: dict[str, int] | None = None
        self.t0 = 0.0
        self.stop_at = 0.0
        self._cpu_done = 0.0  # CPU seconds of hass processes that have ended
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cast traffic needs HA's cast integration, which runs zeroconf: only
        # inside the soak's own network namespace (see main()).
        self.cast = (
            CastTraffic(self.hass, self.colors, args.cast_every) if args.cast == "on" else None
        )

    # -- setup -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Cameras, hass, one LocalCam entry per camera, first frames."""
        await asyncio.gather(self.bulk.start(), *(p.start() for p in self.procs.values()))
        if self.cast is not None:
            await self.cast.start()
        log(f"{len(self.cams)} cameras up; starting hass in {self.config_dir}")
        started = time.monotonic()
        await self.hass.start([])
        log(f"hass up in {time.monotonic() - started:.1f} s (pid {self.hass.pid})")
        gate = asyncio.Semaphore(4)

        async def add(cam: Cam) -> None:
            async with gate:
                if cam.onvif:
                    cam.entry_id = await self.hass.add_localcam_onvif(cam.host, cam.http_port)
                else:
                    cam.entry_id = await self.hass.add_localcam(cam.rtsp_url, cam.snapshot_url)
                cam.entity_id = await self.hass.entity_for_entry(cam.entry_id)

        await asyncio.gather(*(add(c) for c in self.cams))
        self.max_age = self._max_age_option()
        log(f"{len(self.cams)} LocalCam entries; max age {self.max_age} s")
        for cam in self.cams:
            await self.hass.wait_available(cam.entity_id, 60)
        if self.cast is not None:
            await self.cast.add_to_hass()
            log(f"HA's cast integration sees the emulated receiver as {self.cast.media_player}")

    def _max_age_option(self) -> float:
        """The largest snapshot_max_age among LocalCam's entries (HA's own storage)."""
        path = self.config_dir / ".storage" / "core.config_entries"
        if not path.exists():  # HA writes it a little later; the restart flushes it
            return self.max_age
        storage = json.loads(path.read_text())
        ages = [
            float(entry.get("options", {}).get("snapshot_max_age", DEFAULT_MAX_AGE))
            for entry in storage["data"]["entries"]
            if entry["domain"] == "localcam"
        ]
        return max(ages, default=DEFAULT_MAX_AGE)

    # -- checking answers --------------------------------------------------------------------

    def check(self, kind: str, cam: Cam, sample: Sample, received: float) -> bool:
        """Count one answer; True for a good frame (200, right camera, fresh)."""
        c = self.counters
        c.requests[kind] = c.requests.get(kind, 0) + 1
        if self.swap_outcomes is not None and cam in self.pair:
            # What the swapped pair's viewers got: errors, or their own camera only.
            shown = camera_of(sample.body, self.colors) if sample.status == 200 else None
            outcome = "error" if shown is None else ("own" if shown == cam.index else "foreign")
            self.swap_outcomes[outcome] = self.swap_outcomes.get(outcome, 0) + 1
        if sample.status != 200:
            key = f"{kind} {sample.status or sample.error}"
            if self.restarting:
                key += " (hass restarting)"
            elif sample.status == 404 and cam.index in self.loading:
                key += " (entry loading)"
            c.errors[key] = c.errors.get(key, 0) + 1
            return False
        c.ok[kind] = c.ok.get(kind, 0) + 1
        index = camera_of(sample.body, self.colors)
        c.decoded += 1
        t = round(time.monotonic() - self.t0, 2)
        if index is None or not sample.ok_jpeg:
            c.broken_200 += 1
            return False
        if index != cam.index:
            c.cross_camera.append({"t": t, "kind": kind, "asked": cam.index, "got": index})
            return False
        good = True
        if kind == "view":
            header = sample.headers.get("x-localcam-camera")
            if cam.header_id is None:
                cam.header_id = header
            elif header != cam.header_id:
                c.header_mismatch.append({"t": t, "camera": cam.index, "header": header})
                good = False
            # As the view sent it (X-LocalCam-Age, on the frame's own
            # monotonic clock), and, not to take the server's word alone, no
            # older than max age when the request started (age on arrival
            # less the request's time: transit after the hand-over grows
            # with load, so arrival itself cannot be held to max age).
            captured = datetime.fromisoformat(sample.headers["x-localcam-captured-at"])
            at_start = (received - sample.seconds) - captured.timestamp()
            header = sample.headers.get("x-localcam-age")
            # No header (an older LocalCam): the start bound alone.
            age_at_send = float(header) if header is not None else at_start
            c.max_age_seen = max(c.max_age_seen, age_at_send)
            if age_at_send > self.max_age + 0.001 or at_start > self.max_age + CLOCK_SLACK:
                c.stale.append({"t": t, "camera": cam.index, "age_at_send": round(age_at_send, 3)})
                good = False
        return good

    async def get(self, kind: str, cam: Cam, path: str, timeout: float = 15) -> bool:
        """GET one still through hass and check it."""
        sample = await fetch(
            self.hass.http, self.hass.base + path, self.hass.headers, timeout=timeout
        )
        return self.check(kind, cam, sample, time.time())

    async def view(self, cam: Cam) -> bool:
        """LocalCam's own view."""
        return await self.get("view", cam, f"/api/localcam/snapshot/{cam.entity_id}")

    # -- traffic -----------------------------------------------------------------------------

    async def viewer(self, seed: int) -> None:
        """A dashboard: stills and LocalCam's view of random cameras until the end.

        Its cards load side by side (up to CARDS requests in flight), so a camera
        that hangs holds its own card, not the viewer: the other cameras keep
        being asked, as they are on a real dashboard.
        """
        rng = random.Random(seed)
        cards: set[asyncio.Task[bool]] = set()
        try:
            for _ in range(1_000_000):
                if time.monotonic() >= self.stop_at:
                    break
                if len(cards) >= CARDS:
                    done, _ = await asyncio.wait(cards, return_when=asyncio.FIRST_COMPLETED)
                    for card in done:
                        cards.discard(card)
                        card.result()  # a harness error ends the run, as before
                cam = rng.choice(self.cams)
                if rng.random() < 0.55:
                    size = rng.choice(PROXY_SIZES)
                    query = f"?width={size[0]}&height={size[1]}" if size else ""
                    request = self.get(
                        "camera_proxy", cam, f"/api/camera_proxy/{cam.entity_id}{query}"
                    )
                else:
                    request = self.view(cam)
                cards.add(asyncio.create_task(request))
                await asyncio.sleep(rng.uniform(0.05, 0.3))
            # Requests are bounded (15 s): let the last ones finish and be counted.
            for card in asyncio.as_completed(cards):
                await card
        except asyncio.CancelledError:
            for card in cards:
                card.cancel()  # the run is being torn down: no card outlives it
            raise

    async def hls(self) -> None:
        """Now and then, a stream through HA's `camera/stream` and its HLS playlist."""
        c = self.counters
        for n in range(100_000):
            if time.monotonic() >= self.stop_at:
                return
            await asyncio.sleep(self.args.hls_every)
            if self.restarting or time.monotonic() >= self.stop_at:
                continue
            cam = self.cams[0] if self.args.short else self.cams[n % len(self.cams)]
            c.requests["hls"] = c.requests.get("hls", 0) + 1
            try:
                result = await self.hass.ws_call("camera/stream", entity_id=cam.entity_id)
                sample = await fetch(self.hass.http, self.hass.base + result["url"], {}, timeout=15)
                ok = sample.status == 200 and sample.body.startswith(b"#EXTM3U")
                key = "ok" if ok else f"HTTP {sample.status or sample.error}"
            except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError, KeyError) as err:
                key = type(err).__name__
            if key == "ok":
                c.ok["hls"] = c.ok.get("hls", 0) + 1
            else:
                c.errors[f"hls {key}"] = c.errors.get(f"hls {key}", 0) + 1

    async def monitor(self) -> None:
        """Every second: hass's RSS and CPU, and a socket audit of its connections."""
        c = self.counters
        window: list[tuple[float, float]] = []
        for _ in range(100_000):
            if time.monotonic() >= self.stop_at + 5:
                return
            if not self.restarting and self.hass.proc and self.hass.proc.returncode is None:
                pid = self.hass.pid
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    c.peak_rss_kb = max(c.peak_rss_kb, rss_kb(pid))
                    cpu = cpu_seconds(pid)
                    c.cpu_s = self._cpu_done + cpu
                    # Six samples a second apart: a 5 s window.
                    window = [*window[-5:], (time.monotonic(), c.cpu_s)]
                    if len(window) >= 2 and window[-1][0] > window[0][0]:
                        pct = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
                        c.peak_cpu_pct = max(c.peak_cpu_pct, 100 * pct)
                    for peer in outside_peers(pid):
                        c.outside[peer] = c.outside.get(peer, 0) + 1
                    c.audit_samples += 1
            else:
                window = []
            await asyncio.sleep(1)

    # -- faults ------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str, Cam | None]]:
        """(offset s, fault, camera): a cycle of faults, one HA restart in the middle."""
        minutes = self.args.minutes
        total = 60.0 if self.args.short else minutes * 60
        kinds = ["reboot", "hang", "auth", "reload"]
        plan: list[tuple[float, str, Cam | None]] = []
        step = 5.0 if self.args.short else 25.0
        t, n = 3.0, 0
        restart_at = total * 0.45
        restarted = False
        while t < total - (15 if self.args.short else 45) and n < 1000:
            if not restarted and t >= restart_at:
                plan.append((t, "ha_restart", None))
                restarted = True
                t += step
                continue
            kind = kinds[n % len(kinds)]
            pool = {"reboot": self.reboot_cams, "reload": self.reload_cams}.get(
                kind, self.fault_cams
            )
            plan.append((t, kind, pool[(n + n // len(kinds)) % len(pool)]))
            n += 1
            t += step
        if not restarted:
            plan.append((restart_at, "ha_restart", None))
        # The address swap, once, between two other faults.
        plan.append((total * (0.3 if self.args.short else 0.72) + step / 2, "ip_swap", None))
        return sorted(plan, key=lambda item: item[0])

    async def faults(self) -> None:
        """Run the schedule; each fault's recovery is measured while the next ones run."""
        hold = 4.0 if self.args.short else 10.0
        for offset, kind, cam in self.schedule():
            await asyncio.sleep(max(0.0, self.t0 + offset - time.monotonic()))
            event: dict[str, Any] = {
                "t": round(time.monotonic() - self.t0, 1),
                "fault": kind,
                "camera": cam.index if cam else "all",
            }
            self.events.append(event)
            log(f"t={event['t']:6.1f}  {kind} {cam.name if cam else ''}")
            try:
                if kind == "ha_restart":
                    await self.ha_restart(event)
                    continue
                if kind == "ip_swap":
                    event["camera"] = "swap pair"
                    await self.bulk.command("swap")
                    self.swap_outcomes = event["while_swapped"] = {}
                    await asyncio.sleep(hold)
                    self.swap_outcomes = None
                    await self.bulk.command("unswap")
                    self._spawn(self.recovery(event, self.pair, time.monotonic()))
                    continue
                assert cam is not None
                if kind == "reboot":
                    await self.procs[cam.index].stop()
                    await asyncio.sleep(hold)
                    await self.procs[cam.index].start()
                elif kind == "hang":
                    await self.set_fault(cam, Fault.HANG)
                    await asyncio.sleep(hold)
                    await self.set_fault(cam, None)
                elif kind == "auth":
                    cleared = await self.credentials_change(cam, hold, event)
                    self._spawn(self.recovery(event, [cam], cleared))
                    continue
                elif kind == "reload":
                    self.loading.add(cam.index)
                    await self.hass.reload_entry(cam.entry_id)
            except (RuntimeError, TimeoutError, aiohttp.ClientError, OSError) as err:
                event["error"] = f"{type(err).__name__}: {err}"
                log(f"  fault {kind} failed: {event['error']}")
                self.loading.discard(cam.index)  # no recovery follows to end the window
                continue
            self._spawn(self.recovery(event, [cam], time.monotonic()))

    def _spawn(self, coro: Any) -> None:
        """Keep a reference to a background task."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def set_fault(self, cam: Cam, fault: Fault | None) -> dict[str, Any]:
        """POST /control on the camera's own HTTP port; the camera's status and counters."""
        async with self.hass.http.post(
            cam.control_url, json={"fault": fault.value if fault else None}
        ) as resp:
            resp.raise_for_status()
            return dict(await resp.json())

    async def _reauth_flow(self, cam: Cam) -> str | None:
        """The reauth flow in progress for the camera's entry, if any."""
        flows = await self.hass.ws_call("config_entries/flow/progress")
        for flow in flows:
            context = flow.get("context", {})
            if (
                flow.get("handler") == "localcam"
                and context.get("source") == "reauth"
                and context.get("entry_id") == cam.entry_id
            ):
                return str(flow["flow_id"])
        return None

    async def credentials_change(self, cam: Cam, hold: float, event: dict[str, Any]) -> float:
        """The camera answers 401, LocalCam should start reauth; restore, confirm the form.

        Returns when the camera took its old credentials back: recovery counts from there,
        so it includes the user's answer to the reauth form. `camera_refused` counts the
        requests the camera answered 401 meanwhile: reauth is due once LocalCam met one.
        None may come: while HA's stream of the camera runs (a live cast, a card playing),
        stills come from its keyframes over the session authenticated before the change,
        and the next new connection (at the latest the health check, once a minute) is
        the first to hear the 401.
        """
        before = await self.set_fault(cam, Fault.UNAUTHORIZED)
        flow_id = None
        started = time.monotonic()
        for _ in range(int(hold * 4) + 40):
            if flow_id is None:
                flow_id = await self._reauth_flow(cam)
                if flow_id is not None:
                    event["reauth_started_s"] = round(time.monotonic() - started, 2)
            if time.monotonic() - started >= hold and flow_id is not None:
                break
            if time.monotonic() - started >= hold + 10:
                break
            await asyncio.sleep(0.25)
        event["reauth_started"] = flow_id is not None
        after = await self.set_fault(cam, None)
        cleared = time.monotonic()
        event["camera_refused"] = after["unauthorized_responses"] - before["unauthorized_responses"]
        if flow_id is not None:
            # The user types the camera's (restored) credentials into the reauth form;
            # the entry reloads (recovery ends the loading window at the first good frame).
            self.loading.add(cam.index)
            result = await self.hass.post_json(
                f"/api/config/config_entries/flow/{flow_id}",
                {"username": CAMERA_USER, "password": CAMERA_PASSWORD},
            )
            event["reauth_result"] = result.get("reason") or result.get("type")
        return cleared

    async def ha_restart(self, event: dict[str, Any]) -> None:
        """Stop hass by its PID and start it again on the same configuration and port."""
        hass = self.hass
        self.restarting = True
        self.actions_ready = False
        began = time.monotonic()
        try:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self._cpu_done += cpu_seconds(hass.pid)
            if hass._ws is not None:  # noqa: SLF001 - the harness's own socket, reopened later
                with contextlib.suppress(Exception):
                    await hass._ws.close()  # noqa: SLF001
                hass._ws = None  # noqa: SLF001
            assert hass.proc is not None
            await end_process(hass.proc, 30)
            event["stopped_s"] = round(time.monotonic() - began, 1)
            log = hass.log_path.open("ab")
            hass.proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "hass"),
                "-c",
                str(hass.config_dir),
                "--skip-pip",
                stdout=log,
                stderr=log,
            )
            log.close()

            async def up() -> bool:
                hass.check_alive()
                async with hass.http.get(f"{hass.base}/api/", headers=hass.headers) as resp:
                    return resp.status == 200

            await wait_for(up, 180, "Home Assistant to restart", 0.5)
            self.max_age = max(self.max_age, self._max_age_option())
            event["down_s"] = round(time.monotonic() - began, 1)
            # Up, but each entry loads in its own time (recovery ends each window).
            self.loading.update(cam.index for cam in self.cams)
            self._spawn(self._actions_back())
        finally:
            self.restarting = False
        cleared = time.monotonic()
        await self.recovery(event, self.cams, cleared)

    async def _actions_back(self) -> None:
        """Mark LocalCam's actions ready once hass lists them again (bounded)."""

        async def listed() -> bool:
            services = await self.hass.get_json("/api/services")
            return any(entry.get("domain") == "localcam" for entry in services)

        try:
            await wait_for(listed, 120, "LocalCam's actions after the restart", 0.25)
        except TimeoutError as err:
            log(f"  {err}; casting again anyway")  # the casts then record the error
        finally:
            self.actions_ready = True

    async def recovery(self, event: dict[str, Any], cams: list[Cam], cleared: float) -> None:
        """Time from the fault cleared to each camera's first good frame (LocalCam's view)."""

        async def one(cam: Cam) -> float | None:
            try:
                for _ in range(10_000):
                    if time.monotonic() - cleared > RECOVERY_LIMIT:
                        return None
                    if await self.view(cam):
                        return time.monotonic() - cleared
                    await asyncio.sleep(0.25)
                return None
            finally:
                self.loading.discard(cam.index)

        times = await asyncio.gather(*(one(c) for c in cams))
        done = [t for t in times if t is not None]
        event["recovered"] = len(done) == len(times)
        event["recovery_s"] = round(max(done), 2) if event["recovered"] else None
        log(f"  {event['fault']} {event['camera']}: recovery {event['recovery_s']} s")

    # -- the whole run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Set up, run traffic and faults, tear down; return the report."""
        started = datetime.now(UTC)
        workers: list[asyncio.Task[Any]] = []
        try:
            await self.setup()
            duration = 60.0 if self.args.short else self.args.minutes * 60
            self.t0 = time.monotonic()
            self.stop_at = self.t0 + duration
            # The mean CPU is of the traffic: hass's start-up and the flows
            # that added the cameras are taken out.
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self._cpu_done -= cpu_seconds(self.hass.pid)
            monitor = asyncio.create_task(self.monitor())
            viewers = [asyncio.create_task(self.viewer(i)) for i in range(self.args.viewers)]
            hls = asyncio.create_task(self.hls())
            casting = []
            if self.cast is not None:
                plan = self.cast.run(
                    self.cams,
                    self.stop_at,
                    lambda: self.restarting or not self.actions_ready,
                    random.Random(self.args.seed),
                )
                casting.append(asyncio.create_task(plan))
            workers = [monitor, hls, *viewers, *casting]
            await self.faults()
            # Traffic runs to the planned end, or until the last recovery is measured.
            for _ in range(1000):
                if not self._tasks:
                    break
                await asyncio.wait(set(self._tasks), timeout=1)
            await asyncio.gather(*viewers, hls, *casting)
            elapsed = time.monotonic() - self.t0
            if self.cast is not None:
                self.cast.check_all(self.cams)
            self.stop_at = time.monotonic() - 5
            await monitor
        finally:
            for task in [*self._tasks, *workers]:
                task.cancel()
            await self.teardown()
        return self.report(started, elapsed)

    async def teardown(self) -> None:
        """Stop hass and the cameras (by PID), keep hass's log, drop the config dir."""
        with contextlib.suppress(Exception):
            await self.hass.stop()
        if self.cast is not None:
            with contextlib.suppress(Exception):
                await self.cast.stop()
        await asyncio.gather(
            self.bulk.stop(), *(p.stop() for p in self.procs.values()), return_exceptions=True
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copy(self.hass.log_path, self.args.json.with_suffix(".hass.log"))
        shutil.rmtree(self.config_dir, ignore_errors=True)

    def report(self, started: datetime, elapsed: float) -> dict[str, Any]:
        """Everything the run measured, and whether it met the targets."""
        c = self.counters
        recoveries = [e for e in self.events if "recovered" in e or "error" in e]
        worst = (
            max(
                (1e9 if e["recovery_s"] is None else e["recovery_s"])
                for e in recoveries
                if "recovered" in e
            )
            if recoveries
            else 0
        )
        failed = [e for e in self.events if not e.get("recovered")]
        report = {
            "started": started.isoformat(),
            "cameras": len(self.cams),
            "rtsp_only": [c.index for c in self.cams if not c.http],
            "traffic_seconds": round(elapsed, 1),
            "max_age_option_s": self.max_age,
            "requests_served": sum(c.requests.values()),
            "requests_200": sum(c.ok.values()),
            "requests": c.requests,
            "ok": c.ok,
            "errors": c.errors,
            "frames_decoded": c.decoded,
            "cross_camera_frames": len(c.cross_camera),
            "cross_camera": c.cross_camera[:50],
            "frames_past_max_age": len(c.stale),
            "stale": c.stale[:50],
            "max_frame_age_at_send_s": round(c.max_age_seen, 3),
            "broken_200": c.broken_200,
            "camera_header_mismatch": len(c.header_mismatch),
            "outside_connections": sum(c.outside.values()),
            "outside_peers": c.outside,
            "socket_audit": (
                f"{c.audit_samples} samples, one a second: /proc/<hass pid>/net/tcp, tcp6, udp"
                " and udp6 rows whose inode is one of /proc/<hass pid>/fd's sockets; any remote"
                " address that is neither unspecified nor in 127.0.0.0/8 (or ::1, or"
                " IPv4-mapped loopback) counts. A socket opened and closed within one second"
                " can be missed; unconnected UDP sendto() has no remote address to see."
            ),
            "hass_peak_rss_mb": round(c.peak_rss_kb / 1024, 1),
            "hass_peak_cpu_pct_5s": round(c.peak_cpu_pct, 1),
            "hass_mean_cpu_pct": round(100 * c.cpu_s / elapsed, 1) if elapsed else None,
            "faults": self.events,
            "worst_recovery_s": worst if worst < 1e9 else None,
            "recovery_target_s": RECOVERY_TARGET,
            "hls": "camera/stream websocket + GET of its HLS master playlist",
            "ip_swaps": (
                "two ONVIF cameras on 127.0.0.2 and .3 (same ports) reboot onto each other's"
                " address, stay swapped, then swap back; frames of either are checked like"
                " all others (cross-camera must be 0). DHCP-following: tests/test_swap.py"
            ),
        }
        if self.cast is not None:
            report["cast"] = self.cast.report()
        else:
            report["cast"] = {"skipped": "needs root and `ip` for a network namespace (--cast on)"}
        cast = report["cast"]
        report["passed"] = bool(
            (
                "skipped" in cast
                or (
                    cast["played"] > 0
                    and cast["foreign_pictures"] == 0
                    and not cast["url_still_alive"]
                )
            )
            and report["cross_camera_frames"] == 0
            and report["frames_past_max_age"] == 0
            and report["broken_200"] == 0
            and report["camera_header_mismatch"] == 0
            and report["outside_connections"] == 0
            and not failed
            and worst <= RECOVERY_TARGET
        )
        return report


def log(text: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"soak: {text}\n")
    sys.stderr.flush()


def print_table(report: dict[str, Any]) -> None:
    """The headline figures and the faults."""
    rows = [
        ("cameras (RTSP-only)", f"{report['cameras']} ({len(report['rtsp_only'])})"),
        ("traffic seconds", report["traffic_seconds"]),
        ("requests served (200s)", f"{report['requests_served']} ({report['requests_200']})"),
        ("  by kind", report["requests"]),
        ("  200s", report["ok"]),
        ("  errors", report["errors"]),
        ("frames decoded", report["frames_decoded"]),
        ("cross-camera frames (must be 0)", report["cross_camera_frames"]),
        ("frames past max age (must be 0)", report["frames_past_max_age"]),
        (
            "  oldest frame at send / max age",
            f"{report['max_frame_age_at_send_s']} s / {report['max_age_option_s']} s",
        ),
        ("broken 200s", report["broken_200"]),
        ("outside connections (must be 0)", report["outside_connections"]),
        ("hass peak RSS", f"{report['hass_peak_rss_mb']} MB"),
        (
            "hass CPU peak 5 s / mean",
            f"{report['hass_peak_cpu_pct_5s']} % / {report['hass_mean_cpu_pct']} % of one core",
        ),
        ("worst recovery (target <= 30 s)", report["worst_recovery_s"]),
        *_cast_rows(report["cast"]),
        ("passed", report["passed"]),
    ]
    width = max(len(r[0]) for r in rows)
    print("\nLocalCam soak")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\n  {'t (s)':>7}  {'fault':<11} {'camera':>6}  {'recovery s':>10}  notes")
    for e in report["faults"]:
        notes = {k: v for k, v in e.items() if k not in ("t", "fault", "camera", "recovery_s")}
        recovery = e.get("recovery_s")
        print(f"  {e['t']:>7}  {e['fault']:<11} {e['camera']!s:>6}  {recovery!s:>10}  {notes}")


def _cast_rows(cast: dict[str, Any]) -> list[tuple[str, Any]]:
    """The cast traffic's headline figures."""
    if "skipped" in cast:
        return [("cast traffic", f"skipped: {cast['skipped']}")]
    first = cast["call_to_first_picture"]
    return [
        (
            "casts / stops (to an emulated receiver)",
            f"{cast['casts']} / {cast['stops']} via {cast['media_player']}",
        ),
        (
            "  played / LOADs all of the right camera",
            f"{cast['played']} / {cast['playbacks_all_right_camera']}",
        ),
        ("  not played, action errors", f"{cast['not_played']}, {cast['service_errors']}"),
        (
            "  foreign pictures (must be 0)",
            f"{cast['foreign_pictures']} of {cast['pictures_decoded']}",
        ),
        (
            "  call -> first picture (median / max)",
            ", ".join(f"{m} {v['median_s']} / {v['max_s']} s" for m, v in first.items()) or "-",
        ),
        (
            "  old URL 404 after stop/replace (<= 10 s)",
            f"{cast['dead_url_checked']} checked, max {cast['dead_url_max_s']} s,"
            f" still alive {len(cast['url_still_alive'])}",
        ),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options."""
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cameras", type=int, default=32)
    parser.add_argument("--short", action="store_true", help="8 cameras, about 60 s")
    parser.add_argument("--viewers", type=int, default=0, help="concurrent viewers")
    parser.add_argument("--hls-every", type=float, default=0.0, help="seconds between HLS fetches")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="report path (default bench/results/soak-*.json)")
    parser.add_argument("--budget", type=float, default=0.0, help="abort after this many seconds")
    parser.add_argument(
        "--cast",
        choices=("auto", "on", "off"),
        default="auto",
        help="cast traffic to an emulated receiver (needs root: runs in a network namespace)",
    )
    parser.add_argument("--cast-every", type=float, default=0.0, help="seconds between casts")
    args = parser.parse_args(argv)
    if args.cast == "auto":
        args.cast = "on" if in_private_netns() or can_make_namespace() else "off"
    args.cast_every = args.cast_every or (5.0 if args.short else 15.0)
    if args.short:
        args.cameras, args.minutes = 8, 1.0
    if args.cameras < 4:
        parser.error("--cameras must be at least 4")
    args.viewers = args.viewers or (4 if args.short else 10)
    args.hls_every = args.hls_every or (15.0 if args.short else 10.0)
    args.budget = args.budget or (135.0 if args.short else args.minutes * 60 + 420)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.json = args.json or RESULTS / f"soak-{stamp}.json"
    return args


async def main_async(args: argparse.Namespace) -> int:
    """Run the soak within its budget; SIGTERM ends it cleanly."""
    soak = Soak(args)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    async with asyncio.timeout(args.budget):
        report = await soak.run()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"\nreport: {args.json}")
    return 0 if report["passed"] else 1


def main() -> int:
    """Entry point (also the camera processes' one)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--camera-process":
        asyncio.run(camera_process(json.loads(sys.argv[2])))
        return 0
    args = parse_args()
    if args.cast == "on" and not in_private_netns():
        if not can_make_namespace():
            sys.exit("soak: --cast on needs root and `ip` (it runs in a network namespace)")
        return rerun_in_namespace(
            [sys.executable, str(SELF), *sys.argv[1:], "--cast", "on"], "lcsoak", ROOT
        )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
