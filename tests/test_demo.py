"""The README's run command, for real: a separate `hass` process serves the demo."""

import asyncio
import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path
import re
import signal
import socket
import sys

from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from PIL import Image
import pytest
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from virtualcam import color_for, nearest_camera

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("localcam_demo_t", ROOT / "scripts" / "demo.py")
assert _SPEC is not None
assert _SPEC.loader is not None
demo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_args(tmp_path: Path, port: int | None = None) -> list[str]:
    """scripts/demo.py --check on free loopback ports, its state in tmp_path."""
    return [
        str(ROOT / "scripts" / "demo.py"),
        "--check",
        "--dir",
        str(tmp_path),
        "--port",
        str(port or _free_port()),
        "--camera-rtsp-port",
        str(_free_port()),
        "--camera-http-port",
        str(_free_port()),
    ]


def _children(pid: int) -> list[int]:
    """The PIDs of a process's children (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


def _hass_child(pid: int) -> int | None:
    """The PID of the `hass` process a demo started, if it has started it."""
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"/hass\0" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


async def _start_demo(args: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _finish(proc: asyncio.subprocess.Process, timeout: float) -> str:
    """Wait (bounded) for a demo to exit; its output."""
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            # SIGTERM first: the demo then ends its own children.
            os.kill(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
    return output.decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_config_made_by_a_moved_checkout_is_relinked(tmp_path: Path) -> None:
    """A --dir made before the checkout moved: its dangling links are replaced, not a crash."""
    custom = tmp_path / "config" / "custom_components"
    custom.mkdir(parents=True)
    (custom / "localcam").symlink_to(tmp_path / "old-checkout" / "custom_components" / "localcam")
    (custom / "brands").symlink_to(tmp_path / "old-checkout" / "scripts" / "demo_brands")
    demo.prepare_config(tmp_path / "config", 28125)
    demo.link_local_brands(tmp_path / "config")
    assert (custom / "localcam").resolve() == (ROOT / "custom_components" / "localcam").resolve()
    assert (custom / "brands").resolve() == (ROOT / "scripts" / "demo_brands").resolve()
    demo.prepare_config(tmp_path / "config", 28125)  # and again: left as it is
    assert (custom / "localcam").is_dir()


@pytest.mark.hass_process
async def test_demo_stops_its_children_on_sigterm_during_startup(
    socket_enabled: None, tmp_path: Path
) -> None:
    """SIGTERM before the demo is up (in --check mode) still stops hass and the camera."""
    proc = await _start_demo(_demo_args(tmp_path))
    children: list[int] = []
    left: list[int] = []
    try:
        async with asyncio.timeout(60):
            # Both children started (the camera is ready once hass is spawned).
            while len(children := _children(proc.pid)) < 2:  # noqa: ASYNC110 - /proc has no event
                await asyncio.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        async with asyncio.timeout(60):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Should the demo have left them behind, end them here (by PID), not in the next test.
        left = [pid for pid in children if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    text = output.decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "CHECK OK" not in text
    assert left == []


@pytest.mark.hass_process
async def test_demo_serves_the_virtual_camera_through_hass(
    socket_enabled: None, tmp_path: Path
) -> None:
    """scripts/demo.py --check: onboarded HA, camera added by flow, JPEG via camera_proxy."""
    proc = await _start_demo(_demo_args(tmp_path))
    text = await _finish(proc, 240)
    assert proc.returncode == 0, text[-3000:]
    assert "CHECK OK camera." in text
    still = (tmp_path / "check.jpg").read_bytes()
    image = Image.open(io.BytesIO(still)).convert("RGB")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    palette = [color_for(i) for i in range(64)]
    assert nearest_camera((pixel[0], pixel[1], pixel[2]), palette) == 0
    # The demo logged in: no password from the camera appears in HA's log.
    log = (tmp_path / "config" / "home-assistant.log").read_text()
    assert "camera-demo" not in log


def test_every_prepare_config_stores_its_own_port(tmp_path: Path) -> None:
    """HA 2026.10 reads http: from YAML once: the port lives in .storage/http, rewritten."""
    for port in (18123, 18124):
        demo.prepare_config(tmp_path, port)
        stored = json.loads((tmp_path / ".storage" / "http").read_text())
        assert stored["data"]["stable"]["server_host"] == ["127.0.0.1"]
        assert stored["data"]["stable"]["server_port"] == port
        assert stored["data"]["pending"] is None
        assert stored["data"]["yaml_migration_done"] is True
    assert "\nhttp:" not in (tmp_path / "configuration.yaml").read_text()


def test_stale_camera_entries_are_those_on_other_urls(tmp_path: Path) -> None:
    """An earlier run's LocalCam entry on other camera ports is found (to be re-added)."""
    camera = {"rtsp_url": "rtsp://127.0.0.1:2/stream", "snapshot_url": "http://127.0.0.1:3/s.jpg"}
    (tmp_path / ".storage").mkdir()
    entries = [
        {
            "entry_id": "old",
            "domain": "localcam",
            "data": {
                "stream_url": "rtsp://127.0.0.1:1/stream",
                "snapshot_url": camera["snapshot_url"],
            },
        },
        {
            "entry_id": "same",
            "domain": "localcam",
            "data": {"stream_url": camera["rtsp_url"], "snapshot_url": camera["snapshot_url"]},
        },
        {"entry_id": "other", "domain": "sun", "data": {}},
    ]
    (tmp_path / ".storage" / "core.config_entries").write_text(
        json.dumps({"data": {"entries": entries}})
    )
    assert demo.stale_camera_entries(tmp_path, camera) == ["old"]
    assert demo.stale_camera_entries(tmp_path / "missing", camera) == []


@pytest.mark.hass_process
async def test_demo_second_run_takes_its_new_ports(socket_enabled: None, tmp_path: Path) -> None:
    """A second --check on the same --dir with other ports serves on those ports."""
    for _ in range(2):
        port = _free_port()
        proc = await _start_demo(_demo_args(tmp_path, port))
        text = await _finish(proc, 120)
        assert proc.returncode == 0, text[-3000:]
        assert f"LocalCam demo is running: http://127.0.0.1:{port}" in text
        assert "CHECK OK camera." in text


async def test_demo_refuses_a_port_something_already_listens_on(
    socket_enabled: None, tmp_path: Path
) -> None:
    """Another server on --port (the user's real HA, say) is refused, never onboarded."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = await _start_demo(_demo_args(tmp_path, port))
        text = await _finish(proc, 30)
    assert proc.returncode == 1, text[-3000:]
    assert f"Something already listens on 127.0.0.1:{port} (--port)" in text
    assert not (tmp_path / "config").exists()


@pytest.mark.hass_process
async def test_demo_ends_when_hass_dies_during_startup(
    socket_enabled: None, tmp_path: Path
) -> None:
    """hass killed while the demo waits for it: the demo exits at once, with hass's status."""
    proc = await _start_demo(_demo_args(tmp_path))
    try:
        async with asyncio.timeout(60):
            while (hass := _hass_child(proc.pid)) is None:  # noqa: ASYNC110 - /proc has no event
                await asyncio.sleep(0.05)
        os.kill(hass, signal.SIGKILL)  # the demo's child, started by this test's demo
    finally:
        text = await _finish(proc, 40)
    assert proc.returncode == 128 + signal.SIGKILL, text[-3000:]
    assert "Home Assistant (log: " in text
    assert "exited with code -9 during startup" in text


@pytest.mark.hass_process
async def test_demo_ends_when_hass_dies_while_running(socket_enabled: None, tmp_path: Path) -> None:
    """A running demo (no --check) whose hass dies exits non-zero and says so."""
    args = [arg for arg in _demo_args(tmp_path) if arg != "--check"]
    proc = await _start_demo(args)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(90):
            while b"Press Ctrl-C" not in (line := await proc.stdout.readline()):
                assert line, "the demo exited before it was running"
        hass = _hass_child(proc.pid)
        assert hass is not None
        os.kill(hass, signal.SIGKILL)
    finally:
        text = await _finish(proc, 40)
    assert proc.returncode == 128 + signal.SIGKILL, text[-3000:]
    assert "exited with code -9; the demo stops." in text


def _fake_proc(tmp_path: Path, tcp: list[str], tcp6: list[str], inodes: list[int]) -> Path:
    """A /proc with one process (PID 7): its socket fds and TCP tables."""
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid inode"
    (tmp_path / "7" / "net").mkdir(parents=True)
    (tmp_path / "7" / "fd").mkdir()
    for fd, inode in enumerate(inodes):
        (tmp_path / "7" / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")
    (tmp_path / "7" / "fd" / "99").symlink_to("/dev/null")
    (tmp_path / "7" / "net" / "tcp").write_text("\n".join([header, *tcp]) + "\n")
    (tmp_path / "7" / "net" / "tcp6").write_text("\n".join([header, *tcp6]) + "\n")
    return tmp_path


def _row(address: str, state: str, inode: int) -> str:
    return (
        f"0: {address} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000 0 0 {inode} 1"
    )


@pytest.mark.skipif(sys.byteorder != "little", reason="sample rows are little-endian /proc text")
def test_tcp_listeners_reads_only_the_process_own_listening_sockets(tmp_path: Path) -> None:
    """127.0.0.1:8123 and [::]:8123 of the process are found; others' and non-LISTEN are not."""
    proc = _fake_proc(
        tmp_path,
        tcp=[
            _row("0100007F:1FBB", "0A", 11),  # 127.0.0.1:8123, ours
            _row("00000000:1FBB", "0A", 12),  # 0.0.0.0:8123, someone else's: outside
            _row("0100007F:D431", "01", 13),  # an established connection of ours
        ],
        tcp6=[_row("00000000000000000000000000000000:1FBB", "0A", 14)],  # [::]:8123, ours
        inodes=[11, 13, 14],
    )
    assert demo.tcp_listeners(7, proc) == {("127.0.0.1", 8123), ("::", 8123)}


def test_check_listeners_accepts_only_the_demo_address() -> None:
    """hass must listen on 127.0.0.1:port and nowhere else (not all interfaces, not absent)."""
    demo.check_listeners({("127.0.0.1", 8124)}, 8124)
    for listeners in (
        {("0.0.0.0", 8123)},  # HA's default config, all interfaces: refused
        {("127.0.0.1", 8124), ("::", 8124)},
        {("127.0.0.1", 8123)},  # another port
        set(),  # the answering server is not hass
    ):
        with pytest.raises(demo.NotLoopbackError):
            demo.check_listeners(listeners, 8124)


def test_check_http_config_accepts_only_the_stored_loopback_config() -> None:
    """HA's http/config reply must show the demo's stable 127.0.0.1:port config active."""
    good = {
        "active_config_type": "stable",
        "stable": {"server_host": ["127.0.0.1"], "server_port": 8124},
        "pending": None,
    }
    demo.check_http_config(good, 8124)
    for bad in (
        good | {"active_config_type": "default"},
        good | {"active_config_type": "pending"},
        good | {"pending": {"server_port": 8124}},
        good | {"stable": {"server_port": 8124}},  # no server_host: all interfaces
        good | {"stable": {"server_host": ["0.0.0.0"], "server_port": 8124}},  # refused
        good | {"stable": {"server_host": ["127.0.0.1"], "server_port": 8123}},
    ):
        with pytest.raises(demo.NotLoopbackError):
            demo.check_http_config(bad, 8124)


async def test_demo_brands_serve_local_images_and_never_fetch(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    hass_client_no_auth: ClientSessionGenerator,
    aioclient_mock: AiohttpClientMocker,
    tmp_path: Path,
) -> None:
    """The demo's `brands` stand-in: LocalCam's own icon, a 404 for others, no CDN request."""
    hass.config.config_dir = str(tmp_path)  # its disk cache: empty, and nobody else's
    spec = importlib.util.spec_from_file_location(
        "demo_brands", ROOT / "scripts" / "demo_brands" / "__init__.py"
    )
    assert spec is not None
    assert spec.loader is not None
    brands = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(brands)
    assert await async_setup_component(hass, "http", {})
    assert await async_setup_component(hass, "websocket_api", {})
    assert await brands.async_setup(hass, {})
    aioclient_mock.get(re.compile(r"https://brands\.home-assistant\.io/.*"), content=b"\x89PNG cdn")
    client = await hass_client()
    for path in (
        "/api/brands/integration/sun/icon.png",
        "/api/brands/integration/sun/logo.png?placeholder=no",
        "/api/brands/hardware/boards/green.png",
    ):
        resp = await client.get(path)
        assert resp.status == 404, path
    resp = await client.get("/api/brands/integration/localcam/icon.png")
    assert resp.status == 200
    assert (await resp.read()).startswith(b"\x89PNG\r\n")
    assert aioclient_mock.call_count == 0
    # Without a token or auth, as the built-in: refused.
    anonymous = await hass_client_no_auth()
    assert (await anonymous.get("/api/brands/integration/sun/icon.png")).status == 403
