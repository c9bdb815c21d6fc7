"""Drive a real Home Assistant in headless Chromium; run only inside a test's network namespace.

``python -m tests.e2e_support --dir D --out S`` is started by tests/test_browser.py under
``ip netns exec``. It starts two virtual cameras and ``hass`` (with scripts/demo.py's helpers),
onboards Home Assistant and adds both cameras through the config flow's HTTP API, saves a
dashboard with one picture-entity card per camera, then opens it in Debian's Chromium over
the DevTools protocol, screenshots it, opens a camera's more-info dialog and screenshots it
once the stream plays. It prints one ``RESULT {json}`` line describing what it saw; the test
checks the pixels. Everything listens on the namespace's own loopback.
"""

import argparse
import asyncio
import base64
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
import contextlib
import importlib.util
import json
import os
from pathlib import Path
import signal
import socket
import sys
import time
from types import ModuleType
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
NETNS_DIR = "/run/netns"
VIEWPORT = (1280, 900)
DASHBOARD = "localcam-e2e"
VIEW_PATH = "cameras"


def load_demo() -> ModuleType:
    """scripts/demo.py as a module: its HA configuration, onboarding and flow helpers."""
    spec = importlib.util.spec_from_file_location("localcam_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = load_demo()


def in_private_netns() -> bool:
    """Whether this process sits in a namespace made by `ip netns add` holding only `lo`."""
    try:
        own = os.stat("/proc/self/ns/net")
        named = [entry.stat() for entry in os.scandir(NETNS_DIR)]
    except OSError:
        return False
    mine = any((s.st_dev, s.st_ino) == (own.st_dev, own.st_ino) for s in named)
    # Only loopback: then no packet of hass or Chromium can reach any real network.
    return mine and {name for _, name in socket.if_nameindex()} == {"lo"}


def free_port() -> int:
    """A free TCP port on this namespace's loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stop(proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    """End one process this module started, by its PID: SIGTERM, then SIGKILL (the demo's way)."""
    await demo.stop_process(proc, grace)


async def start_cameras(count: int) -> tuple[asyncio.subprocess.Process, list[dict[str, Any]]]:
    """Start `count` virtual cameras (one process, one colour each) and describe them."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "virtualcam",
        "--count",
        str(count),
        "--name",
        "cam",
        "--username",
        demo.CAMERA_USER,
        "--password",
        demo.CAMERA_PASSWORD,
        # A keyframe every second keeps HLS segments short, so the stream starts fast.
        "--gop",
        "1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    cameras: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while (line := (await proc.stdout.readline()).decode().strip()) != "READY":
                if not line:
                    raise RuntimeError("the virtual cameras exited before they were ready")
                if line.startswith("{"):
                    cameras.append(json.loads(line))
    except BaseException:
        await stop(proc)
        raise
    return proc, cameras


async def add_camera(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], camera: dict[str, Any]
) -> str:
    """Add one camera through the config flow HTTP API, as the frontend does; its entry id."""
    async with session.post(
        f"{base}/api/config/config_entries/flow",
        json={"handler": "localcam", "show_advanced_options": False},
        headers=headers,
    ) as resp:
        resp.raise_for_status()
        flow = await resp.json()
    url = f"{base}/api/config/config_entries/flow/{flow['flow_id']}"
    async with session.post(url, json={"next_step_id": "url"}, headers=headers) as resp:
        resp.raise_for_status()
    async with session.post(
        url,
        json={
            "stream_url": camera["rtsp_url"],
            "snapshot_url": camera["snapshot_url"],
            "username": demo.CAMERA_USER,
            "password": demo.CAMERA_PASSWORD,
            "verify_ssl": True,
        },
        headers=headers,
    ) as resp:
        result = await resp.json()
    if result.get("type") != "create_entry":
        raise RuntimeError(f"adding {camera['name']} failed: {result.get('errors')}")
    return str(result["result"]["entry_id"])


async def browser_tokens(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """Log in through the auth API with the frontend's client id; the tokens it would keep."""
    client_id = f"{base}/"
    code = await demo.login_code(session, base, client_id)
    tokens = await demo.exchange_code(session, base, code, client_id)
    # The shape home-assistant-js-websocket stores in localStorage["hassTokens"].
    return tokens | {"hassUrl": base, "clientId": client_id}


class HassWebSocket:
    """A minimal client of Home Assistant's websocket API."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap an authenticated connection."""
        self._ws = ws
        self._id = 0

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, base: str, access_token: str
    ) -> HassWebSocket:
        """Connect and authenticate."""
        ws = await session.ws_connect(f"{base.replace('http', 'ws', 1)}/api/websocket")
        async with asyncio.timeout(15):
            assert (await ws.receive_json())["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": access_token})
            if (reply := await ws.receive_json())["type"] != "auth_ok":
                raise RuntimeError(f"websocket auth failed: {reply}")
        return cls(ws)

    async def call(self, message: dict[str, Any], timeout: float = 30) -> Any:
        """Send one command and return its result (events in between are skipped)."""
        self._id += 1
        await self._ws.send_json({"id": self._id, **message})
        async with asyncio.timeout(timeout):
            while True:
                reply = await self._ws.receive_json()
                if reply.get("id") == self._id and reply.get("type") == "result":
                    if not reply["success"]:
                        raise RuntimeError(f"{message['type']} failed: {reply['error']}")
                    return reply["result"]

    async def close(self) -> None:
        """Close the connection."""
        await self._ws.close()


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap the page's websocket; start reading it."""
        self._ws = ws
        self._id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        # The page's last console lines and exceptions, for a failure report.
        self.console: deque[str] = deque(maxlen=40)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        """Route replies to their callers; keep console output and media logs."""
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if (future := self._pending.pop(data.get("id", -1), None)) is not None:
                if not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
                self.console.append(f"console.{data['params']['type']}: {text[:300]}")
            elif data.get("method") == "Media.playerMessagesLogged":
                for message in data["params"].get("messages", []):
                    self.console.append(f"media {message.get('level')}: {message.get('message')}")
            elif data.get("method") == "Media.playerErrorsRaised":
                for error in data["params"].get("errors", []):
                    self.console.append(f"media error: {json.dumps(error)[:600]}")
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description", details.get("text"))
                self.console.append(f"exception: {str(text)[:300]}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools connection closed"))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command; return its result (bounded to 30 s)."""
        self._id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._id] = future
        await self._ws.send_json({"id": self._id, "method": method, "params": params or {}})
        async with asyncio.timeout(30):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (with the DEEP helpers); return its value."""
        result = await self.call(
            "Runtime.evaluate",
            {
                # A function scope per call: the helpers are declared afresh each time.
                "expression": f"(() => {{\n{DEEP}\nreturn ({expression});\n}})()",
                "returnByValue": True,
                "awaitPromise": True,
            },
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport."""
        data = (await self.call("Page.captureScreenshot", {"format": "png"}))["data"]
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data))

    async def close(self) -> None:
        """Close the connection and its reader."""
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


# HA's frontend is web components: everything worth finding lives in nested shadow roots.
DEEP = """
const deepAll = (selector, root = document, out = []) => {
  for (const el of root.querySelectorAll("*")) {
    if (el.matches(selector)) out.push(el);
    if (el.shadowRoot) deepAll(selector, el.shadowRoot, out);
  }
  return out;
};
const deepText = (root) => {
  let text = root.textContent || "";
  for (const el of root.querySelectorAll("*")) {
    if (el.shadowRoot) text += " " + deepText(el.shadowRoot);
  }
  return text;
};
const box = (el) => {
  const r = el.getBoundingClientRect();
  return [Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)];
};
"""

CARD_IMAGES = """
deepAll("hui-picture-entity-card").map((card) => {
  const img = deepAll("img", card.shadowRoot || card)[0];
  const src = img ? img.getAttribute("src") || "" : "";
  const match = src.match(/camera_proxy\\/([a-z0-9_]+\\.[a-z0-9_]+)/);
  return {
    entity_id: match ? match[1] : null,
    loaded: !!img && img.complete && img.naturalWidth > 0,
    natural: img ? [img.naturalWidth, img.naturalHeight] : null,
    card: box(card),
    image: img ? box(img) : null,
  };
})
"""

VIDEOS = """
deepAll("video").map((v) => ({
  ready_state: v.readyState,
  current_time: v.currentTime,
  paused: v.paused,
  size: [v.videoWidth, v.videoHeight],
  error: v.error ? v.error.code : null,
  rect: box(v),
  player: v.getRootNode().host ? v.getRootNode().host.localName : null,
}))
"""


async def poll[T](
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.5
) -> T:
    """Call ``probe`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await probe():
            return result
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


async def start_chromium(
    profile: Path, extra_args: Sequence[str] = ()
) -> tuple[asyncio.subprocess.Process, str]:
    """Start headless Chromium; return it and its DevTools browser websocket URL's port."""
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    log = (profile.parent / "chromium.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--mute-audio",
        "--hide-scrollbars",
        # Muted autoplay is allowed anyway; this keeps a headless policy change from
        # leaving the more-info video paused.
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        *extra_args,
        "about:blank",
        stdout=log,
        stderr=log,
    )
    log.close()  # Chromium holds its own copy of the descriptor
    active = profile / "DevToolsActivePort"

    async def port() -> str | None:
        if proc.returncode is not None:
            raise RuntimeError(f"Chromium exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError):
            return active.read_text().splitlines()[0] or None
        return None

    try:
        return proc, await poll(port, 30, "Chromium's DevTools port", 0.2)
    except BaseException:
        await stop(proc)
        raise


async def open_page(session: aiohttp.ClientSession, port: str) -> DevTools:
    """Attach to Chromium's first page target."""

    async def page() -> str | None:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)

    url = await poll(page, 20, "a page target")
    # Screenshots travel base64 in one message; the default 4 MiB cap is too small.
    ws = await session.ws_connect(url, max_msg_size=64 * 1024 * 1024)
    devtools = DevTools(ws)
    await devtools.call("Page.enable")
    await devtools.call("Runtime.enable")
    await devtools.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
    )
    return devtools


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, drive the browser, return what was seen."""
    out: Path = args.out
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started, 1)
        print(f"[{timings[step]:6.1f} s] {step}", file=sys.stderr, flush=True)

    procs: list[asyncio.subprocess.Process] = []
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        cam_proc, cameras = await start_cameras(2)
        procs.append(cam_proc)
        mark("cameras ready")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs.append(await demo.start_hass(args.dir / "config", port))
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def up() -> bool:
                async with session.get(f"{base}/api/onboarding") as resp:
                    return resp.status == 200

            await demo.wait_for(up, 120, "Home Assistant to start")
            mark("hass up")
            access = await demo.token(session, base)
            headers = {"Authorization": f"Bearer {access}"}
            entries = [await add_camera(session, base, headers, camera) for camera in cameras]
            hass_ws = await HassWebSocket.connect(session, base, access)

            async def entities() -> list[str] | None:
                registry = await hass_ws.call({"type": "config/entity_registry/list"})
                found = {e["config_entry_id"]: e["entity_id"] for e in registry}
                if not all(entry in found for entry in entries):
                    return None
                ids = [found[entry] for entry in entries]
                states = await hass_ws.call({"type": "get_states"})
                ready = {s["entity_id"] for s in states if s["state"] not in {"unavailable"}}
                return ids if set(ids) <= ready else None

            entity_ids = await demo.wait_for(entities, 30, "both camera entities")
            states = {s["entity_id"]: s for s in await hass_ws.call({"type": "get_states"})}
            for camera, entity_id in zip(cameras, entity_ids, strict=True):
                camera["entity_id"] = entity_id
                camera["title"] = states[entity_id]["attributes"].get("friendly_name", entity_id)
            mark("cameras added through the config flow")
            cards = [
                {"type": "picture-entity", "entity": entity_id, "camera_view": "auto"}
                for entity_id in entity_ids
            ]
            # HA 2026.10 moves YAML http settings into a trial that a user must confirm,
            # else a modal covers every page and HA reverts them (and restarts) in 5 min.
            with contextlib.suppress(RuntimeError):  # nothing pending: already stable
                await hass_ws.call({"type": "http/config/promote"})
            # A dashboard of its own: the default one is the auto-generated overview.
            await hass_ws.call(
                {
                    "type": "lovelace/dashboards/create",
                    "url_path": DASHBOARD,
                    "title": "LocalCam",
                    "icon": "mdi:cctv",
                    "show_in_sidebar": True,
                }
            )
            await hass_ws.call(
                {
                    "type": "lovelace/config/save",
                    "url_path": DASHBOARD,
                    "config": {
                        "title": "LocalCam",
                        "views": [{"title": "Cameras", "path": VIEW_PATH, "cards": cards}],
                    },
                }
            )
            await hass_ws.close()
            tokens = await browser_tokens(session, base)

            chromium, devtools_port = await start_chromium(args.dir / "chromium" / "profile")
            procs.append(chromium)
            mark("chromium up")
            devtools = await open_page(session, devtools_port)
            try:
                result = await browse(devtools, base, tokens, cameras, out, mark)
            except BaseException:
                with contextlib.suppress(Exception):
                    await devtools.screenshot(out / "failure.png")
                print("\n".join(devtools.console), file=sys.stderr, flush=True)
                raise
            finally:
                await devtools.close()
        result |= {"cameras": cameras, "timings": timings, "console": list(devtools.console)}
        return result
    finally:
        # End only the processes started here, by PID, newest first.
        for proc in reversed(procs):
            await stop(proc)


async def browse(
    devtools: DevTools,
    base: str,
    tokens: dict[str, Any],
    cameras: list[dict[str, Any]],
    out: Path,
    mark: Callable[[str], None],
) -> dict[str, Any]:
    """Log in, screenshot the dashboard, then each camera's more-info dialog playing."""
    # How the frontend keeps a login: hassTokens in localStorage, with an absolute expiry.
    # Set before any page script runs, so the frontend starts logged in.
    login = (
        f"if (location.origin === {json.dumps(base)}"
        ' && !localStorage.getItem("hassTokens")) {'
        f" const t = {json.dumps(tokens)};"
        " t.expires = Date.now() + t.expires_in * 1000;"
        ' localStorage.setItem("hassTokens", JSON.stringify(t)); }'
    )
    await devtools.call("Page.addScriptToEvaluateOnNewDocument", {"source": login})
    dashboard_url = f"{base}/{DASHBOARD}/{VIEW_PATH}"
    expected = {camera["entity_id"] for camera in cameras}

    async def open_dashboard() -> list[dict[str, Any]]:
        await devtools.call("Page.navigate", {"url": dashboard_url})
        previous: list[Any] = []

        async def cards_loaded() -> list[dict[str, Any]] | None:
            nonlocal previous
            found = await devtools.evaluate(CARD_IMAGES) or []
            done = {c["entity_id"] for c in found if c["loaded"] and c["image"][2] > 0}
            # Two equal readings in a row: the layout has settled.
            stable = found == previous
            previous = found
            return found if done == expected and stable else None

        return await poll(cards_loaded, 60, "both camera cards' images", 0.5)

    await open_dashboard()
    mark("dashboard images loaded")
    await devtools.screenshot(out / "dashboard.png")
    cards = await devtools.evaluate(CARD_IMAGES)
    mark("dashboard screenshot")
    result: dict[str, Any] = {
        "base": base,
        "dashboard": {
            "path": str(out / "dashboard.png"),
            "url": await devtools.evaluate("location.href"),
            "cards": cards,
        },
        "more_info": [],
    }

    for index, camera in enumerate(cameras):
        if index:
            # A fresh page, so no video of the previous dialog can be mistaken for this one.
            await open_dashboard()
        entity_id = camera["entity_id"]
        # What a click on the card does: the frontend's own event for the more-info dialog.
        await devtools.evaluate(
            'document.querySelector("home-assistant").dispatchEvent(new CustomEvent('
            f'"hass-more-info", {{detail: {{entityId: {json.dumps(entity_id)}}},'
            " bubbles: true, composed: true}))"
        )

        last: list[float] = []

        async def playing() -> list[dict[str, Any]] | None:
            nonlocal last
            videos = await devtools.evaluate(VIDEOS) or []
            times = [v["current_time"] for v in videos]
            # Live HLS starts at the playlist's edge, so currentTime > 0 alone proves
            # nothing: it has to advance between two readings while frames decode.
            live = [
                v
                for v, before in zip(videos, last, strict=False)
                if v["ready_state"] >= 2
                and not v["paused"]
                and v["size"][0] > 0
                and v["current_time"] > before + 0.2
            ]
            last = times
            return live or None

        await poll(playing, 60, f"{entity_id}'s more-info video to play", 0.5)
        mark(f"more-info video of {camera['name']} playing")
        # A moment more, so the dialog's open animation is over.
        await asyncio.sleep(1.0)
        path = out / f"more-info-{camera['name']}.png"
        await devtools.screenshot(path)
        result["more_info"].append(
            {
                "path": str(path),
                "entity_id": entity_id,
                "dialog": await devtools.evaluate(
                    'deepAll("ha-more-info-dialog").some((d) => deepText(d.shadowRoot || d)'
                    f".includes({json.dumps(camera['title'])}))"
                ),
                "videos": await devtools.evaluate(VIDEOS),
            }
        )
        mark(f"more-info screenshot of {camera['name']}")
    return result


def main() -> int:
    """Parse the options, refuse to run outside a private namespace, run within a budget."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="HA config and Chromium state")
    parser.add_argument("--out", type=Path, required=True, help="where screenshots go")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for everything")
    args = parser.parse_args()
    args.dir = args.dir.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if not in_private_netns():
        print("refusing to run: not inside an `ip netns` namespace holding only lo", flush=True)
        return 2

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM from the test: unwind through the finally blocks, ending every child.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(args.budget):
            return await run(args)

    result = asyncio.run(bounded())
    # Beside the screenshots, for a person: where each card and video sits, and timings.
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"RESULT {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
