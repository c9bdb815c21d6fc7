"""Benchmark plumbing: camera host, a real `hass` process, its HTTP/WS APIs, /proc figures.

Everything listens on and connects to 127.0.0.1 only. Every wait here is
bounded in time, every loop in count, and only processes started here are
ever signalled, by their PIDs.
"""

import asyncio
from collections.abc import Callable
import contextlib
from dataclasses import dataclass, field
import io
import json
import math
import os
from pathlib import Path
import socket
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

# scripts/demo.py as a module (its loopback-only HA configuration), loaded once.
from tests.e2e_support import demo

ROOT = Path(__file__).resolve().parent.parent
GCWATCH = ROOT / "bench" / "gcwatch.py"
HOST = "127.0.0.1"
USER = "bench"
PASSWORD = "localcam-bench"
CAMERA_USER = "admin"
CAMERA_PASSWORD = "camera-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# `stream` is what generic's stream_source and its config-flow preview need;
# `frontend` (in scripts/demo.py's configuration) keeps the process as heavy as
# a real installation's. A 200-viewer burst makes these log hundreds of
# expected failures; the benchmark counts the HTTP answers instead.
# `diagnostics` (in default_config for users) lets a bench read LocalCam's own.
COMPONENTS = ("stream", "ffmpeg", "diagnostics")
# bench/bound_camera, linked into custom_components when a bench asks for it.
BOUND_DOMAIN = "bench_bound"
LOGS = {
    "homeassistant.components.generic": "critical",
    "homeassistant.components.camera": "critical",
    "homeassistant.components.stream": "critical",
    "haffmpeg": "critical",
    "custom_components.localcam": "error",
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, never one this process handed out before."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def link_bound_camera(config_dir: Path) -> None:
    """Link bench/bound_camera into a bench configuration's custom_components."""
    link = config_dir / "custom_components" / BOUND_DOMAIN
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parent / "bound_camera")


def require_loopback(url: str) -> str:
    """Refuse any URL that is not on loopback (127.0.0.0/8): benchmarks never leave the host."""
    import ipaddress

    from yarl import URL

    try:
        loopback = ipaddress.ip_address(URL(url).host or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError("the benchmarks only talk to 127.0.0.0/8")
    return url


async def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll an async predicate until it returns truthy; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if result := await predicate():
                return result
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


async def end_process(proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    """SIGTERM one process we started, then SIGKILL it after `grace` seconds (the demo's way)."""
    await demo.stop_process(proc, grace)


# -- /proc ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command name: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_ns(pid: int) -> dict[str, int] | None:
    """CPU time of each live thread in ns (schedstat), by thread id; None where the kernel lacks it.

    Clock ticks are 10 ms, a third of what HA spends idle in a minute; the
    scheduler's own counter resolves far below that. Per thread, so that a
    window's CPU is told by cpu_ns_between, not by a difference of sums (a
    thread that exits takes its whole lifetime out of the later sum).
    """
    times: dict[str, int] = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                times[task.name] = int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    return times


def cpu_ns_between(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """CPU ns the threads used between two cpu_ns readings, and how many exited meanwhile.

    A thread born in between counts whole; one that exited is left out (its
    share of the window is unknown: the figure is then a lower bound).
    """
    used = sum(ns - before.get(tid, 0) for tid, ns in after.items())
    return used, sum(1 for tid in before if tid not in after)


async def settled_rss_kb(pid: int, seconds: float) -> int:
    """The median of VmRSS samples over the last part of a quiet wait."""
    await asyncio.sleep(seconds * 0.6)
    samples = []
    for _ in range(10):
        samples.append(rss_kb(pid))
        await asyncio.sleep(seconds * 0.04)
    return int(statistics.median(samples))


# -- camera host ------------------------------------------------------------------------------


class CamHost:
    """The virtual cameras, in their own process (python -m bench.camhost)."""

    def __init__(self) -> None:
        """Nothing runs until start()."""
        self.proc: asyncio.subprocess.Process | None = None
        self.cameras: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def start(self, spec: dict[str, Any]) -> None:
        """Start the process and read the cameras' addresses."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.camhost",
            json.dumps(spec),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 22,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            for _ in range(len(spec["cameras"]) + 1):
                line = (await self.proc.stdout.readline()).decode().strip()
                if line == "READY":
                    return
                if not line:
                    raise RuntimeError("the camera host exited before it was ready")
                info = json.loads(line)
                for key in ("rtsp_url", "snapshot_url"):
                    if info[key]:
                        require_loopback(info[key])
                self.cameras[info["name"]] = info
        raise RuntimeError("the camera host announced more cameras than asked for")

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Every camera's counters right now."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        async with self._lock, asyncio.timeout(10):
            self.proc.stdin.write(b"stats\n")
            await self.proc.stdin.drain()
            return dict(json.loads(await self.proc.stdout.readline()))

    async def stop(self) -> None:
        """Ask the host to stop, then make sure it did."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
        try:
            async with asyncio.timeout(20):
                await self.proc.wait()
        except TimeoutError:
            await end_process(self.proc, 5)

    def rtsp_url(self, name: str, *, credentials: bool = False) -> str:
        """A camera's RTSP URL, optionally with the credentials in it."""
        url = str(self.cameras[name]["rtsp_url"])
        if credentials:
            url = url.replace("rtsp://", f"rtsp://{CAMERA_USER}:{CAMERA_PASSWORD}@", 1)
        return url

    def color(self, name: str) -> tuple[int, int, int]:
        """A camera's colour."""
        r, g, b = self.cameras[name]["color"]
        return (r, g, b)


# -- Home Assistant ---------------------------------------------------------------------------


@dataclass
class Hass:
    """One `hass` process on 127.0.0.1 and an authenticated client for it."""

    config_dir: Path
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    session: aiohttp.ClientSession | None = None
    headers: dict[str, str] = field(default_factory=dict)
    _ws: aiohttp.ClientWebSocketResponse | None = None
    _ws_id: int = 0
    _ws_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def base(self) -> str:
        """The base URL."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The hass process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        """Where hass writes its output."""
        return self.config_dir / "bench-hass.log"

    @property
    def gc_log_path(self) -> Path:
        """Where bench/gcwatch.py records hass's slow garbage collections."""
        return self.config_dir / "bench-gc.jsonl"

    def gc_pauses(self, start: float, end: float) -> list[dict[str, Any]]:
        """hass's recorded collections that overlap [start, end] (time.monotonic())."""
        try:
            lines = self.gc_log_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        pauses = []
        for line in lines:
            try:
                pause = json.loads(line)
            except ValueError:  # a line hass was writing as it was read
                continue
            if pause["start"] < end and pause["end"] > start:
                pauses.append(pause)
        return pauses

    async def start(self, yaml_cameras: list[dict[str, str]]) -> None:
        """Write the configuration, seed onboarding, start hass, log in."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        cameras = ""
        if yaml_cameras:
            cameras = "camera:\n" + "".join(
                "  - " + "    ".join(f"{key}: {value}\n" for key, value in cam.items())
                for cam in yaml_cameras
            )
        # The demo's configuration: HTTP on 127.0.0.1 only, no default_config,
        # onboarding pre-seeded (finishing core_config through the API would
        # add integrations that call the internet), only loopback enabled in
        # HA's network settings, LocalCam linked into custom_components.
        demo.prepare_config(
            self.config_dir,
            self.port,
            writer="bench/harness.py",
            name="LocalCam bench",
            components=COMPONENTS,
            logs=LOGS,
            extra=cameras,
        )
        if any(cam.get("platform") == BOUND_DOMAIN for cam in yaml_cameras):
            link_bound_camera(self.config_dir)
        await self._spawn()
        connector = aiohttp.TCPConnector(limit=0)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        )

        async def up() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"hass exited with {self.proc.returncode}; see {self.log_path}")
            async with self.http.get(f"{self.base}/api/onboarding") as resp:
                return resp.status == 200

        await wait_for(up, 240, "Home Assistant to start", 0.5)
        await self._login()

    async def _spawn(self) -> None:
        """Start the hass process on this configuration (its output to log_path)."""
        log = self.log_path.open("ab")
        # hass, started through bench/gcwatch.py: its slow collections are
        # recorded (gc_pauses) for the figures they fall in.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(GCWATCH),
            str(self.gc_log_path),
            "-c",
            str(self.config_dir),
            "--skip-pip",
            stdout=log,
            stderr=log,
        )
        log.close()

    async def restart(self) -> None:
        """Stop hass by its PID and start it again on the same configuration and port.

        What a user's restart gives: the configured entries set up from
        storage, none of what adding them left behind (flows, previews).
        """
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        assert self.proc is not None
        await end_process(self.proc, 30)
        await self._spawn()

        async def up() -> bool:
            self.check_alive()
            async with self.http.get(f"{self.base}/api/", headers=self.headers) as resp:
                return resp.status == 200

        await wait_for(up, 240, "Home Assistant to restart", 0.5)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client session."""
        assert self.session is not None
        return self.session

    async def _login(self) -> None:
        """Create the owner through onboarding and keep an access token."""
        client_id = f"{self.base}/"
        async with self.http.post(
            f"{self.base}/api/onboarding/users",
            json={
                "client_id": client_id,
                "name": "Bench",
                "username": USER,
                "password": PASSWORD,
                "language": "en",
            },
        ) as resp:
            resp.raise_for_status()
            code = (await resp.json())["auth_code"]
        async with self.http.post(
            f"{self.base}/auth/token",
            data={"grant_type": "authorization_code", "code": code, "client_id": client_id},
        ) as resp:
            resp.raise_for_status()
            self.headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}

    def check_alive(self) -> None:
        """Raise if hass has exited (a run must not measure a dead process)."""
        if self.proc is None or self.proc.returncode is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"hass is not running (exit code {code}); see {self.log_path}")

    async def stop(self) -> None:
        """Close the clients and stop hass (by its PID)."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            await end_process(self.proc, 30)

    # -- REST and WebSocket -------------------------------------------------------------------

    async def get_json(self, path: str) -> Any:
        """GET an API path and decode the JSON answer."""
        async with self.http.get(f"{self.base}{path}", headers=self.headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST JSON to an API path and decode the JSON answer."""
        async with self.http.post(f"{self.base}{path}", json=body, headers=self.headers) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"POST {path}: HTTP {resp.status} {text[:300]}")
            return json.loads(text) if text else None

    async def ws_call(self, command: str, **payload: Any) -> Any:
        """One WebSocket API command and its result.

        The connection is kept between calls, but nothing reads it in
        between, so it does not answer HA's heartbeat pings and HA closes it
        after about a minute. A call that finds it gone opens a new one and
        sends again (the commands used here only read or are idempotent).
        """
        async with self._ws_lock, asyncio.timeout(30):
            try:
                return await self._ws_send(command, payload)
            except aiohttp.ClientError, aiohttp.WSMessageTypeError, ConnectionError:
                if self._ws is not None:
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                self._ws = None
            return await self._ws_send(command, payload)  # on a new connection

    async def _ws_send(self, command: str, payload: dict[str, Any]) -> Any:
        """Send one command on the (re)opened connection and wait for its result."""
        if self._ws is None or self._ws.closed:
            self._ws = await self.http.ws_connect(f"{self.base}/api/websocket")
            await self._ws.receive_json()  # auth_required
            token = self.headers["Authorization"].removeprefix("Bearer ")
            await self._ws.send_json({"type": "auth", "access_token": token})
            if (reply := await self._ws.receive_json())["type"] != "auth_ok":
                raise RuntimeError(f"WebSocket auth failed: {reply}")
        self._ws_id += 1
        await self._ws.send_json({"id": self._ws_id, "type": command, **payload})
        for _ in range(1000):
            msg = await self._ws.receive_json()
            if msg.get("id") == self._ws_id and msg.get("type") == "result":
                if not msg.get("success"):
                    raise RuntimeError(f"{command}: {msg.get('error')}")
                return msg.get("result")
        raise RuntimeError(f"{command}: no result")

    # -- config entries and entities ----------------------------------------------------------

    async def _flow_step(self, flow_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Post one step of a config flow."""
        return dict(await self.post_json(f"/api/config/config_entries/flow/{flow_id}", body))

    async def add_localcam(self, stream_url: str, snapshot_url: str | None) -> str:
        """Add a LocalCam camera through the config flow HTTP API; return the entry id."""
        return _entry_id(await self.localcam_flow_result(stream_url, snapshot_url), "localcam")

    async def localcam_flow_result(
        self, stream_url: str, snapshot_url: str | None
    ) -> dict[str, Any]:
        """Run LocalCam's add flow for a camera; return the last step's answer."""
        flow = await self.post_json(
            "/api/config/config_entries/flow",
            {"handler": "localcam", "show_advanced_options": False},
        )
        if flow.get("type") == "menu":
            flow = await self._flow_step(flow["flow_id"], {"next_step_id": "url"})
        body: dict[str, Any] = {
            "stream_url": require_loopback(stream_url),
            "username": CAMERA_USER,
            "password": CAMERA_PASSWORD,
            "verify_ssl": True,
        }
        if snapshot_url:
            body["snapshot_url"] = require_loopback(snapshot_url)
        return await self._flow_step(flow["flow_id"], body)

    async def add_localcam_onvif(self, host: str, port: int) -> str:
        """Add an ONVIF camera through LocalCam's flow (identity, profiles); the entry id."""
        require_loopback(f"http://{host}:{port}/")
        flow = await self.post_json(
            "/api/config/config_entries/flow",
            {"handler": "localcam", "show_advanced_options": False},
        )
        if flow.get("type") == "menu":
            flow = await self._flow_step(flow["flow_id"], {"next_step_id": "onvif"})
        body = {
            "host": host,
            "port": port,
            "username": CAMERA_USER,
            "password": CAMERA_PASSWORD,
            "verify_ssl": True,
        }
        return _entry_id(await self._flow_step(flow["flow_id"], body), "localcam")

    async def generic_flow_abandoned(self, still_url: str) -> None:
        """Run generic's first step for a still URL, then close the flow as a user would."""
        flow = await self.post_json(
            "/api/config/config_entries/flow",
            {"handler": "generic", "show_advanced_options": True},
        )
        await self._flow_step(flow["flow_id"], _generic_input(still_url, None))
        async with self.http.delete(
            f"{self.base}/api/config/config_entries/flow/{flow['flow_id']}", headers=self.headers
        ) as resp:
            resp.raise_for_status()

    async def add_generic(self, *, still_url: str | None, stream_url: str | None) -> str:
        """Add HA's generic camera through its config flow (form, then preview confirm)."""
        flow = await self.post_json(
            "/api/config/config_entries/flow",
            {"handler": "generic", "show_advanced_options": True},
        )
        result = await self._flow_step(flow["flow_id"], _generic_input(still_url, stream_url))
        if result.get("type") == "form" and result.get("step_id") == "user_confirm":
            # The preview step: the frontend shows the still (and stream) and
            # the user ticks "this image looks good".
            result = await self._flow_step(flow["flow_id"], {"confirmed_ok": True})
        return _entry_id(result, "generic")

    async def entity_for_entry(self, entry_id: str, timeout: float = 60) -> str:
        """The (enabled) camera entity of a config entry (from the entity registry)."""

        async def find() -> str | None:
            for ent in await self.ws_call("config/entity_registry/list"):
                if (
                    ent.get("config_entry_id") == entry_id
                    and ent["entity_id"].startswith("camera.")
                    and ent.get("disabled_by") is None
                ):
                    return str(ent["entity_id"])
            return None

        return str(await wait_for(find, timeout, f"the entity of entry {entry_id}", 0.5))

    async def entity_by_name(self, name: str, timeout: float = 60) -> str:
        """A YAML camera's entity id, found by its friendly name."""

        async def find() -> str | None:
            for state in await self.get_json("/api/states"):
                if state["attributes"].get("friendly_name") == name:
                    return str(state["entity_id"])
            return None

        return str(await wait_for(find, timeout, f"the entity named {name}", 0.5))

    async def wait_available(self, entity_id: str, timeout: float = 30) -> None:
        """Wait until an entity exists and is not unavailable."""

        async def ready() -> bool:
            async with self.http.get(
                f"{self.base}/api/states/{entity_id}", headers=self.headers
            ) as resp:
                if resp.status != 200:
                    return False
                return (await resp.json())["state"] not in ("unavailable", "unknown")

        await wait_for(ready, timeout, f"{entity_id} to be available", 0.2)

    async def reload_entry(self, entry_id: str) -> None:
        """Reload a config entry: its entity, cache and streams start from nothing."""
        await self.post_json(f"/api/config/config_entries/entry/{entry_id}/reload", {})

    async def remove_entry(self, entry_id: str) -> None:
        """Delete a config entry."""
        async with self.http.delete(
            f"{self.base}/api/config/config_entries/entry/{entry_id}", headers=self.headers
        ) as resp:
            resp.raise_for_status()


def _generic_input(still_url: str | None, stream_url: str | None) -> dict[str, Any]:
    """What a user types into generic's form for a virtual camera."""
    body: dict[str, Any] = {
        "username": CAMERA_USER,
        "password": CAMERA_PASSWORD,
        # HA's defaults (DEFAULT_DATA), with digest auth since the virtual
        # cameras, like most real ones, only accept digest.
        "advanced": {
            "framerate": 2,
            "verify_ssl": True,
            "authentication": "digest",
            "rtsp_transport": "tcp",
        },
    }
    if still_url:
        body["still_image_url"] = require_loopback(still_url)
    if stream_url:
        body["stream_source"] = require_loopback(stream_url)
    return body


def _entry_id(result: dict[str, Any], what: str) -> str:
    """The entry id from a finished flow, or a clear error."""
    if result.get("type") != "create_entry":
        raise RuntimeError(
            f"adding the {what} camera failed: {result.get('errors') or result.get('reason')}"
        )
    entry = result["result"]
    return str(entry["entry_id"] if isinstance(entry, dict) else entry)


# -- HTTP load --------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One HTTP answer as the client saw it."""

    status: int
    seconds: float
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok_jpeg(self) -> bool:
        """A 200 carrying something that starts and ends like a JPEG."""
        return (
            self.status == 200
            and self.body.startswith(b"\xff\xd8")
            and self.body.rstrip(b"\0").endswith(b"\xff\xd9")
        )


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    keep_body: bool = True,
    timeout: float = 30.0,
) -> Sample:
    """GET one URL and time it to the last body byte."""
    start = time.perf_counter()
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            body = await resp.read()
            return Sample(
                resp.status,
                time.perf_counter() - start,
                body if keep_body else body[:2] + body[-2:],
                {k.lower(): v for k, v in resp.headers.items()},
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        return Sample(0, time.perf_counter() - start, error=type(err).__name__)


async def first_picture(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    retry_every: float = 0.1,
    timeout: float = 30.0,
) -> tuple[Sample, Sample, int]:
    """GET until a JPEG comes back, as a viewer's image retry would (bounded).

    HA answers a cold stream-backed still with an immediate 500 until its
    stream has decoded a keyframe, so the time a viewer waits for a picture
    is the time to the first JPEG, not to the first answer. Returns the first
    answer, the answer that ended the wait (its `seconds` measured from the
    very first request), and the number of requests made.
    """
    start = time.perf_counter()
    first: Sample | None = None
    for attempt in range(1, 1000):
        sample = await fetch(session, url, headers, timeout=max(1.0, timeout))
        first = first or sample
        elapsed = time.perf_counter() - start
        if sample.ok_jpeg or elapsed + retry_every >= timeout:
            sample.seconds = elapsed
            return first, sample, attempt
        await asyncio.sleep(retry_every)
    raise RuntimeError("unreachable: the loop is bounded by its timeout")


async def burst(
    url: str,
    headers: dict[str, str],
    viewers: int,
    *,
    align: Callable[[], float] | None = None,
) -> tuple[list[Sample], float]:
    """`viewers` simultaneous GETs of one URL (HA answers each within 10 s).

    Each viewer has its own keep-alive connection, opened before the burst
    (a dashboard tab that is already open), so the burst times the server's
    answers, not TCP handshakes or a heavy client. Once all are connected,
    it waits the seconds ``align`` returns (at most one second), then sends.
    Returns the samples and when (time.monotonic()) the first was sent.
    """
    clients = [KeepAliveClient(url) for _ in range(viewers)]
    try:
        async with asyncio.timeout(30):
            await asyncio.gather(*(client.connect() for client in clients))
        if align is not None:
            await asyncio.sleep(min(max(align(), 0.0), 1.0))
        started = time.monotonic()
        samples = await asyncio.gather(
            *(client.get(headers, timeout=40, keep_body=True) for client in clients)
        )
        return list(samples), started
    finally:
        for client in clients:
            client.close()


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive GET client for the sustained-rate loops.

    aiohttp's client costs this 2-core host about as much CPU per request as
    HA's server does, and in a one-at-a-time loop its time adds to every
    request, so it would flatten any difference between two servers. This
    client only writes the request and reads the status line, the headers and
    a Content-Length (or chunked) body: the figures measure the server.
    Correctness (is it a JPEG, whose colour) is checked with aiohttp's
    `fetch` around the timed loops.
    """

    MAX_HEAD = 64 * 1024
    MAX_BODY = 64 * 1024 * 1024

    def __init__(self, url: str) -> None:
        """Remember the target; the connection opens on the first request."""
        parsed = urlsplit(url)
        self.host = parsed.hostname or ""
        self.port = parsed.port or 80
        self.target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection now (a viewer whose tab is already open)."""
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def get(
        self, headers: dict[str, str], timeout: float, *, keep_body: bool = False
    ) -> Sample:
        """One GET, timed from the write to the last body byte; reconnects if closed."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await self.connect()
                assert self._reader is not None
                assert self._writer is not None
                lines = [f"GET {self.target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                head = await self._reader.readuntil(b"\r\n\r\n")
                if len(head) > self.MAX_HEAD:
                    raise ValueError("response head too large")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split(" ", 2)[1])
                got = {}
                for line in header_lines:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        got[key.strip().lower()] = value.strip()
                body = await self._body(got, status)
                if got.get("connection", "").lower() == "close":
                    self.close()
                seconds = time.perf_counter() - start
                return Sample(status, seconds, body if keep_body else body[:2] + body[-2:], got)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as err:
            self.close()
            return Sample(0, time.perf_counter() - start, error=type(err).__name__)

    async def _body(self, headers: dict[str, str], status: int) -> bytes:
        """Read the body the headers announce (none for 304 and 204)."""
        assert self._reader is not None
        if status in (204, 304):
            return b""
        if "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= self.MAX_BODY:
                raise ValueError("bad Content-Length")
            return await self._reader.readexactly(length)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            for _ in range(100_000):
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
            raise ValueError("too many chunks")
        raise ValueError("response without a length")

    def close(self) -> None:
        """Drop the connection."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def sustained(
    url: str,
    headers: dict[str, str],
    *,
    seconds: float,
    concurrency: int,
    max_requests: int,
    revalidate: bool = False,
) -> tuple[list[Sample], float]:
    """Back-to-back GETs from `concurrency` workers for `seconds` (at most `max_requests`).

    Each worker holds one keep-alive connection (KeepAliveClient), as a
    browser tab does. With `revalidate`, each worker is a client that keeps
    the picture it has: it sends the ETag of its last 200 as If-None-Match,
    as a browser or an automation that re-polls a still does; a 304 means
    that picture is still the current one.
    """
    samples: list[Sample] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        client = KeepAliveClient(url)
        etag: str | None = None
        try:
            while time.perf_counter() < deadline and len(samples) < max_requests:
                ask = {**headers, "If-None-Match": etag} if revalidate and etag else headers
                sample = await client.get(ask, timeout=15)
                if revalidate and sample.status == 200:
                    etag = sample.headers.get("etag")
                samples.append(sample)
        finally:
            client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


def percentile(values: list[float], pct: float) -> float | None:
    """The pct-th percentile by nearest rank (the ceil(pct/100 * n)-th value); None for none.

    Of an even count the median is the lower middle; a p99 of fewer than 100
    values is their maximum.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct * len(ordered) / 100 - 1e-9)))
    return ordered[rank - 1]


def camera_of(jpeg: bytes, colors: list[tuple[int, int, int]]) -> int | None:
    """Index of the camera whose colour the JPEG's centre shows (None if undecodable)."""
    from PIL import Image

    from virtualcam import nearest_camera

    try:
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        pixel = image.getpixel((image.width // 2, image.height // 2))
    except OSError, ValueError:
        return None
    if not isinstance(pixel, tuple):
        return None
    return nearest_camera(pixel, colors)


def picture_size(jpeg: bytes) -> str | None:
    """A JPEG's size as WIDTHxHEIGHT (None if undecodable)."""
    from PIL import Image

    try:
        width, height = Image.open(io.BytesIO(jpeg)).size
    except OSError, ValueError:
        return None
    return f"{width}x{height}"
