"""Run a real Home Assistant with LocalCam on a virtual camera, on loopback only.

Starts the virtual camera (python -m virtualcam) and `hass` as child processes,
onboards Home Assistant with a demo user through its REST API, adds the camera
through the config flow's HTTP API exactly as the frontend does, and prints the
URL and login. HA's HTTP server, the camera and everything the demo starts listen
on 127.0.0.1 only, and no discovery integration is loaded. One socket is wider:
HA's shared HTTP client resolves through a zeroconf (mDNS) resolver, which binds
UDP *:5353 on all interfaces; with only loopback enabled in HA's network settings
it joins no multicast group and sends nothing, and HA 2026.10 has no setting or
variable to leave it out (helpers/aiohttp_client.py always builds it).
"""

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
import contextlib
from datetime import UTC, datetime
from http import HTTPStatus
import ipaddress
import json
import os
from pathlib import Path
import signal
import socket
import sys
import time
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEMO_USER = "demo"
DEMO_PASSWORD = "localcam-demo"  # noqa: S105 - a local demo login, printed on purpose
CAMERA_USER = "admin"
CAMERA_PASSWORD = "camera-demo"  # noqa: S105
# Each ends the demo the same way: its children are stopped, by PID, before it exits.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

CONFIGURATION = """\
# Written by {writer}. No default_config: it would load zeroconf, ssdp and
# dhcp, which send multicast on the real network.
homeassistant:
  name: {name}
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
  internal_url: "http://127.0.0.1:{port}"
# No http: section. Home Assistant 2026.10 reads it only on the first start
# (then only .storage/http counts): {writer} writes .storage/http before
# every start instead, so each run's port takes effect.
frontend:
config:
{components}logger:
  default: warning
  logs:
{logs}{extra}"""


def _seed_storage(storage: Path, key: str, version: int, data: dict[str, Any]) -> None:
    """Write one of HA's .storage files before the first start (never over one HA wrote)."""
    path = storage / key
    if not path.exists():
        path.write_text(
            json.dumps({"version": version, "minor_version": 1, "key": key, "data": data})
        )


def write_http_storage(storage: Path, port: int) -> None:
    """Write HA's stored HTTP config: 127.0.0.1 only, on ``port``, nothing pending.

    Home Assistant 2026.10 migrates a YAML http: section to .storage/http once
    and ignores YAML on every later start, so a second run with another port
    would keep listening on the first one. Written before every start, as the
    confirmed ("stable") config with the YAML migration marked done, it is what
    HA binds, with no trial to confirm and nothing for HA to revert to.
    """
    from homeassistant.components.http.config import (  # noqa: PLC0415 - HA's own schema
        HTTP_STORAGE_SCHEMA,
        STORAGE_KEY,
        STORAGE_MINOR_VERSION,
        STORAGE_VERSION,
    )

    stable = HTTP_STORAGE_SCHEMA({"server_host": [LOOPBACK], "server_port": port})
    stable |= {"created_at": datetime.now(UTC).isoformat(), "error": None, "error_message": None}
    path = storage / STORAGE_KEY
    path.write_text(
        json.dumps(
            {
                "version": STORAGE_VERSION,
                "minor_version": STORAGE_MINOR_VERSION,
                "key": STORAGE_KEY,
                "data": {"stable": stable, "pending": None, "yaml_migration_done": True},
            },
            indent=2,
        )
    )
    path.chmod(0o600)


def prepare_config(
    config_dir: Path,
    port: int,
    *,
    writer: str = "scripts/demo",
    name: str = "LocalCam demo",
    components: tuple[str, ...] = (),
    logs: dict[str, str] | None = None,
    extra: str = "",
) -> None:
    """Write a loopback-only Home Assistant configuration (shared with bench/harness.py).

    configuration.yaml (no default_config), HTTP on 127.0.0.1:``port`` in
    .storage/http (rewritten on every call), onboarding pre-seeded, only
    loopback enabled in HA's network settings, and LocalCam linked into
    custom_components.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    levels = logs if logs is not None else {"custom_components.localcam": "info"}
    (config_dir / "configuration.yaml").write_text(
        CONFIGURATION.format(
            writer=writer,
            name=name,
            port=port,
            components="".join(f"{component}:\n" for component in components),
            logs="".join(f"    {logger}: {level}\n" for logger, level in levels.items()),
            extra=extra,
        )
    )
    storage = config_dir / ".storage"
    storage.mkdir(exist_ok=True)
    write_http_storage(storage, port)
    # Mark every onboarding step but the user's as done before the first
    # start: finishing the core_config step through the API would add
    # Met.no, Radio Browser and Google Translate, which call the internet.
    _seed_storage(storage, "onboarding", 4, {"done": ["core_config", "analytics", "integration"]})
    # Only loopback is enabled in HA's network settings: the zeroconf
    # resolver behind HA's shared HTTP session then joins no multicast
    # group on a real interface (it would on the default one otherwise).
    _seed_storage(storage, "core.network", 1, {"configured_adapters": ["lo"]})
    custom = config_dir / "custom_components"
    custom.mkdir(exist_ok=True)
    link_into(custom / "localcam", ROOT / "custom_components" / "localcam")


def link_into(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing one to anywhere else.

    A config dir made by a checkout that has since moved holds a dangling link
    (exists() is False, yet the name is taken), or one to the old checkout.
    """
    if link.is_symlink():
        if link.readlink() == target:
            return
        link.unlink()
    link.symlink_to(target)


def port_in_use(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 cannot be bound (something listens there).

    SO_REUSEADDR, as Home Assistant's server uses: a connection of an earlier
    run in TIME_WAIT does not count, a listener (also on 0.0.0.0) does.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


class NotLoopbackError(RuntimeError):
    """Home Assistant listens, or is configured to listen, elsewhere than the demo's address."""


def _proc_address(hex_address: str) -> tuple[str, int]:
    """Decode a /proc/net/tcp{,6} address ("0100007F:1F90") to ("127.0.0.1", 8080)."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        # The kernel prints each 32-bit word of the address in host byte order.
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def tcp_listeners(pid: int, proc: Path = Path("/proc")) -> set[tuple[str, int]]:
    """The addresses a process's own TCP sockets listen on (Linux /proc)."""
    inodes = set()
    for fd in (proc / str(pid) / "fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    listeners = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in (proc / str(pid) / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    listeners.add(_proc_address(fields[1]))
    return listeners


def check_listeners(listeners: set[tuple[str, int]], port: int) -> None:
    """Raise unless hass listens on exactly 127.0.0.1:``port`` and nowhere else.

    Run before the demo logs in: the server that answered is then hass itself
    (not another one holding the port), and hass did not fall back to a
    configuration listening on all interfaces.
    """
    if listeners != {(LOOPBACK, port)}:
        found = ", ".join(f"{host}:{p}" for host, p in sorted(listeners)) or "nothing"
        raise NotLoopbackError(
            f"Home Assistant should listen on {LOOPBACK}:{port} only, but listens on {found}"
        )


def check_http_config(config: dict[str, Any], port: int) -> None:
    """Raise unless HA's http/config says it runs the stored 127.0.0.1:``port`` config.

    ``config`` is the reply of HA's ``http/config`` websocket command: the
    active slot must be the stable one the demo wrote (not a pending trial,
    not HA's default, which listens on all interfaces on 8123).
    """
    active = config.get("active_config_type")
    stable = config.get("stable") or {}
    if (
        active != "stable"
        or config.get("pending") is not None
        or stable.get("server_host") != [LOOPBACK]
        or stable.get("server_port") != port
    ):
        raise NotLoopbackError(
            f"Home Assistant's HTTP config is not the demo's {LOOPBACK}:{port}: "
            f"active {active!r}, stable host {stable.get('server_host')!r} "
            f"port {stable.get('server_port')!r}, pending {config.get('pending')!r}"
        )


async def http_config(session: aiohttp.ClientSession, base: str, access: str) -> dict[str, Any]:
    """HA's ``http/config`` websocket reply (stable, pending, active slot)."""
    async with session.ws_connect(f"{base}/api/websocket") as ws:
        await ws.receive_json()  # auth_required
        await ws.send_json({"type": "auth", "access_token": access})
        if (await ws.receive_json()).get("type") != "auth_ok":
            raise RuntimeError("websocket authentication failed")
        await ws.send_json({"id": 1, "type": "http/config"})
        reply = await ws.receive_json()
    if not reply.get("success"):
        raise RuntimeError(f"http/config failed: {reply.get('error')}")
    return dict(reply["result"])


class ChildExitedError(Exception):
    """A child this script started (hass, the camera) exited while it was needed."""

    def __init__(self, what: str, code: int) -> None:
        """Remember which child and its exit code (negative: killed by that signal)."""
        super().__init__(f"{what} exited with code {code}")
        self.what = what
        self.code = code

    @property
    def exit_status(self) -> int:
        """This script's exit status for it: the child's own, never 0."""
        if self.code < 0:
            return 128 - self.code
        return self.code or 1


async def watched[T](
    work: Coroutine[Any, Any, T], children: dict[asyncio.subprocess.Process, str]
) -> T:
    """Run ``work`` unless a child exits first; then raise ChildExitedError.

    A dead hass otherwise goes unnoticed: the demo polled it for 180 s during
    startup and exited 0 without a word once it was running.
    """
    task = asyncio.ensure_future(work)
    exits = {asyncio.ensure_future(proc.wait()): proc for proc in children}
    try:
        await asyncio.wait([task, *exits], return_when=asyncio.FIRST_COMPLETED)
        if task.done() and task.exception() is not None:
            # A request failing because hass just died: report the death, not the request.
            await asyncio.wait(exits, timeout=2)
        for proc, what in children.items():
            if proc.returncode is not None:
                raise ChildExitedError(what, proc.returncode)
        return task.result()
    finally:
        for future in (task, *exits):
            future.cancel()
        await asyncio.gather(task, *exits, return_exceptions=True)


async def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate`` (an async callable) until it returns truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if result := await predicate():
                return result
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


async def start_camera(
    rtsp_port: int, http_port: int
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start one virtual camera and return its process and description."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "virtualcam",
        "--count",
        "1",
        "--name",
        "porch",
        "--rtsp-port",
        str(rtsp_port),
        "--http-port",
        str(http_port),
        "--username",
        CAMERA_USER,
        "--password",
        CAMERA_PASSWORD,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    info: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            while (line := (await proc.stdout.readline()).decode().strip()) != "READY":
                if not line:
                    raise RuntimeError("the virtual camera exited before it was ready")
                if line.startswith("{"):
                    info = json.loads(line)
    except BaseException:
        # Not yet handed to the caller's cleanup (a signal may land here): stop it now.
        await stop_process(proc)
        raise
    return proc, info


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 30.0) -> None:
    """End one process this script started, by its PID: SIGTERM, then SIGKILL."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            await proc.wait()


def link_local_brands(config_dir: Path) -> None:
    """Put scripts/demo_brands in as `brands`, which Home Assistant then loads instead of its own.

    HA's built-in `brands` fetches other integrations' icons from
    brands.home-assistant.io when the frontend shows them; the stand-in
    serves local images only (see scripts/demo_brands/__init__.py).
    """
    link_into(config_dir / "custom_components" / "brands", ROOT / "scripts" / "demo_brands")


async def start_hass(
    config_dir: Path, port: int, *, local_brands: bool = False
) -> asyncio.subprocess.Process:
    """Write the configuration and start Home Assistant (with local-only brands if asked)."""
    prepare_config(config_dir, port)
    if local_brands:
        link_local_brands(config_dir)
    log = (config_dir / "demo-hass.log").open("ab")
    # Nothing is multicast on the real network: LocalCam's WS-Discovery stays
    # off, and default_config (zeroconf, ssdp, dhcp) is not loaded at all.
    env = {**os.environ, "LOCALCAM_DISABLE_NETWORK_SCANS": "1"}
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "hass"),
        "-c",
        str(config_dir),
        "--skip-pip",
        stdout=log,
        stderr=log,
        env=env,
    )


async def login_code(session: aiohttp.ClientSession, base: str, client_id: str) -> str:
    """Log the demo user in through HA's login flow; return the authorization code."""
    async with session.post(
        f"{base}/auth/login_flow",
        json={
            "client_id": client_id,
            "handler": ["homeassistant", None],
            "redirect_uri": client_id,
        },
    ) as resp:
        flow = await resp.json()
    async with session.post(
        f"{base}/auth/login_flow/{flow['flow_id']}",
        json={"client_id": client_id, "username": DEMO_USER, "password": DEMO_PASSWORD},
    ) as resp:
        return str((await resp.json())["result"])


async def exchange_code(
    session: aiohttp.ClientSession, base: str, code: str, client_id: str
) -> dict[str, Any]:
    """Trade an authorization code for HA's token response (access and refresh token)."""
    async with session.post(
        f"{base}/auth/token",
        data={"grant_type": "authorization_code", "code": code, "client_id": client_id},
    ) as resp:
        resp.raise_for_status()
        return dict(await resp.json())


async def token(session: aiohttp.ClientSession, base: str) -> str:
    """Onboard on first run (or log in later) and return an access token."""
    client_id = f"{base}/"
    async with session.get(f"{base}/api/onboarding") as resp:
        if resp.status == HTTPStatus.NOT_FOUND:
            # Fully onboarded: HA no longer registers the onboarding views.
            steps = dict.fromkeys(("user", "core_config", "analytics", "integration"), True)
        else:
            resp.raise_for_status()
            steps = {step["step"]: step["done"] for step in await resp.json()}
    if not steps.get("user"):
        async with session.post(
            f"{base}/api/onboarding/users",
            json={
                "client_id": client_id,
                "name": "Demo",
                "username": DEMO_USER,
                "password": DEMO_PASSWORD,
                "language": "en",
            },
        ) as resp:
            resp.raise_for_status()
            code = (await resp.json())["auth_code"]
    else:
        code = await login_code(session, base, client_id)
    access = str((await exchange_code(session, base, code, client_id))["access_token"])
    headers = {"Authorization": f"Bearer {access}"}
    for step, body in (
        ("core_config", {}),
        ("analytics", {}),
        ("integration", {"client_id": client_id, "redirect_uri": client_id}),
    ):
        if not steps.get(step):
            async with session.post(f"{base}/api/onboarding/{step}", json=body, headers=headers):
                pass
    return access


def stale_camera_entries(config_dir: Path, camera: dict[str, Any]) -> list[str]:
    """LocalCam entries in HA's stored config that point elsewhere than this run's camera.

    Read before hass starts (HA then has nothing unsaved): a run with other
    --camera-rtsp-port/--camera-http-port finds the entry of an earlier run
    still pointing at the old ports.
    """
    path = config_dir / ".storage" / "core.config_entries"
    try:
        entries = json.loads(path.read_text())["data"]["entries"]
    except OSError, ValueError, KeyError, TypeError:
        return []
    want = (camera["rtsp_url"], camera["snapshot_url"])
    return [
        str(entry["entry_id"])
        for entry in entries
        if entry.get("domain") == "localcam"
        and (entry["data"].get("stream_url"), entry["data"].get("snapshot_url")) != want
    ]


async def ensure_camera(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    camera: dict[str, Any],
    stale: Sequence[str] = (),
) -> str:
    """Add the virtual camera through the config flow API unless it is there.

    Entries in ``stale`` (an earlier run's camera on other ports) are deleted
    first, as the frontend's Delete does, and the camera is added afresh.
    """
    for entry_id in stale:
        async with session.delete(
            f"{base}/api/config/config_entries/entry/{entry_id}", headers=headers
        ) as resp:
            resp.raise_for_status()
    async with session.get(f"{base}/api/config/config_entries/entry", headers=headers) as resp:
        entries = [e for e in await resp.json() if e["domain"] == "localcam"]
    if not entries:
        async with session.post(
            f"{base}/api/config/config_entries/flow",
            json={"handler": "localcam", "show_advanced_options": False},
            headers=headers,
        ) as resp:
            flow = await resp.json()
        url = f"{base}/api/config/config_entries/flow/{flow['flow_id']}"
        async with session.post(url, json={"next_step_id": "url"}, headers=headers) as resp:
            await resp.json()
        async with session.post(
            url,
            json={
                "stream_url": camera["rtsp_url"],
                "snapshot_url": camera["snapshot_url"],
                "username": CAMERA_USER,
                "password": CAMERA_PASSWORD,
                "verify_ssl": True,
            },
            headers=headers,
        ) as resp:
            result = await resp.json()
        if result.get("type") != "create_entry":
            raise RuntimeError(f"adding the camera failed: {result.get('errors')}")

    async def entity() -> str | None:
        async with session.get(f"{base}/api/states", headers=headers) as resp:
            states = await resp.json()
        return next((s["entity_id"] for s in states if s["entity_id"].startswith("camera.")), None)

    return str(await wait_for(entity, 30, "the camera entity"))


async def main() -> int:
    """Start everything, print the login, wait for Ctrl-C (or check and stop).

    SIGINT, SIGTERM and SIGHUP cancel this task from the moment it starts, so
    the cleanup below (stopping the children it started, by PID) always runs:
    before the demo is up and in --check mode too, where an unhandled SIGTERM
    used to kill this script alone and leave hass and the camera running.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--camera-rtsp-port", type=int, default=18554)
    parser.add_argument("--camera-http-port", type=int, default=18080)
    parser.add_argument("--dir", type=Path, default=ROOT / ".demo")
    parser.add_argument("--check", action="store_true", help="fetch one still, then stop")
    args = parser.parse_args()

    received: list[int] = []
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        # Only the first signal cancels: a second one must not cut the cleanup short.
        if not received:
            received.append(sig)
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    running = asyncio.Event()
    try:
        return await run(args, running.set)
    except asyncio.CancelledError:
        if not received:
            raise
        # Ctrl-C on a running demo is its normal end; a signal before that is not.
        return 0 if running.is_set() else 128 + received[0]
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def run(args: argparse.Namespace, on_running: Callable[[], None]) -> int:
    """The demo itself; stopping its children is in the `finally` below."""
    base = f"http://{LOOPBACK}:{args.port}"
    ports = {
        "--port": args.port,
        "--camera-rtsp-port": args.camera_rtsp_port,
        "--camera-http-port": args.camera_http_port,
    }
    if busy := [
        f"{LOOPBACK}:{port} ({option})" for option, port in ports.items() if port_in_use(port)
    ]:
        # Never talk to (or onboard, or log in to) a server this demo did not start.
        print(
            f"Something already listens on {', '.join(busy)}: choose other ports "
            "(e.g. --port 8124) or stop what uses them.",
            file=sys.stderr,
        )
        return 1
    procs: list[asyncio.subprocess.Process] = []
    try:
        cam_proc, camera = await start_camera(args.camera_rtsp_port, args.camera_http_port)
        procs.append(cam_proc)
        config_dir = args.dir.resolve() / "config"
        stale = stale_camera_entries(config_dir, camera)
        hass = await start_hass(config_dir, args.port, local_brands=True)
        procs.append(hass)
        hass_log = config_dir / "home-assistant.log"
        children = {hass: f"Home Assistant (log: {hass_log})", cam_proc: "The virtual camera"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                entity_id, status, body = await watched(
                    bring_up(session, base, camera, stale, hass.pid, args.port), children
                )
            except NotLoopbackError as err:
                print(f"{err}: stopping it.", file=sys.stderr)
                return 1
            except ChildExitedError as err:
                print(
                    f"{err.what} exited with code {err.code} during startup.",
                    file=sys.stderr,
                )
                return err.exit_status
            still = f"HTTP {status}, {len(body)} bytes"
            print(f"\nLocalCam demo is running: {base}", flush=True)
            print(f"  login:  {DEMO_USER} / {DEMO_PASSWORD}")
            print(f"  camera: {entity_id} (virtual camera 'porch', colour {camera['color']})")
            print(f"  still through /api/camera_proxy: {still}")
            if args.check:
                if status != HTTPStatus.OK or not body.startswith(b"\xff\xd8"):
                    return 1
                out = args.dir.resolve() / "check.jpg"
                out.write_bytes(body)
                print(f"CHECK OK {entity_id} {out}", flush=True)
                return 0
            on_running()
            print("Press Ctrl-C to stop.", flush=True)
            try:
                await watched(asyncio.Event().wait(), children)
            except ChildExitedError as err:
                print(f"{err.what} exited with code {err.code}; the demo stops.", file=sys.stderr)
                return err.exit_status
            return 0  # not reached: only a signal or a child's exit ends the wait
    finally:
        # End only the processes this script started, by their PIDs.
        for proc in reversed(procs):
            await stop_process(proc)


async def bring_up(
    session: aiohttp.ClientSession,
    base: str,
    camera: dict[str, Any],
    stale: Sequence[str],
    hass_pid: int,
    port: int,
) -> tuple[str, int, bytes]:
    """Wait for HA, check where it listens, log in, add the camera; return one still.

    Returns the camera's entity id and the still's HTTP status and body.
    """

    async def up() -> bool:
        # HA serves once frontend (which depends on onboarding) is set
        # up; a 404 then means onboarded (a later run on the same --dir).
        async with session.get(f"{base}/api/onboarding") as resp:
            return resp.status in {HTTPStatus.OK, HTTPStatus.NOT_FOUND}

    await wait_for(up, 180, "Home Assistant to start")
    check_listeners(tcp_listeners(hass_pid), port)
    access = await token(session, base)
    check_http_config(await http_config(session, base, access), port)
    headers = {"Authorization": f"Bearer {access}"}
    entity_id = await ensure_camera(session, base, headers, camera, stale)
    async with session.get(f"{base}/api/camera_proxy/{entity_id}", headers=headers) as resp:
        return entity_id, resp.status, await resp.read()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
