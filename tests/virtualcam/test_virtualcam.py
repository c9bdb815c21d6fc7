"""Tests of the virtual camera emulator: real RTSP/RTP decoded by PyAV, real HTTP via aiohttp."""

import asyncio
import base64
from collections.abc import AsyncIterator
import contextlib
import gc
import io
import itertools
import json
import math
import os
from pathlib import Path
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any
import warnings

import aiohttp
import av
import av.error
import numpy as np
from PIL import Image
import pytest

from virtualcam import (
    CameraConfig,
    CameraFarm,
    Fault,
    VirtualCamera,
    color_for,
    nearest_camera,
    palette,
)
from virtualcam.media import Renderer, packetize, split_annexb

pytestmark = pytest.mark.usefixtures("socket_enabled")

REPO = Path(__file__).resolve().parents[2]
#: Max per-channel error accepted between a decoded centre pixel and the camera's colour.
TOLERANCE = 12
#: Client options: TCP timeouts in µs; fpsprobesize=0 skips FFmpeg's ~2-3 s frame-rate probe.
FAST = {"fpsprobesize": "0"}


def _centre(frame: av.VideoFrame) -> tuple[int, int, int]:
    """Centre pixel of a decoded frame as RGB ints."""
    rgb = frame.to_ndarray(format="rgb24")
    r, g, b = rgb[frame.height // 2, frame.width // 2]
    return int(r), int(g), int(b)


def _decode(
    url: str,
    *,
    transport: str = "tcp",
    frames: int = 3,
    timeout: float = 5.0,
    extra: dict[str, str] | None = None,
) -> list[tuple[bool, tuple[int, int, int], float]]:
    """Open an RTSP URL with PyAV and decode some frames: (keyframe, centre RGB, seconds)."""
    start = time.monotonic()
    options = {"rtsp_transport": transport, "timeout": str(int(timeout * 1e6)), **(extra or {})}
    container = av.open(url, options=options, timeout=(timeout, timeout))
    out: list[tuple[bool, tuple[int, int, int], float]] = []
    try:
        for frame in container.decode(video=0):
            out.append((bool(frame.key_frame), _centre(frame), time.monotonic() - start))
            if len(out) >= frames:
                break
    finally:
        container.close()
    return out


async def decode(url: str, **kwargs: Any) -> list[tuple[bool, tuple[int, int, int], float]]:
    """_decode in a worker thread (PyAV blocks)."""
    return await asyncio.to_thread(_decode, url, **kwargs)


def _with_credentials(url: str, user: str, password: str) -> str:
    """Put credentials into an rtsp:// URL."""
    return url.replace("rtsp://", f"rtsp://{user}:{password}@", 1)


def _close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Colours equal within TOLERANCE per channel."""
    return all(abs(x - y) <= TOLERANCE for x, y in zip(a, b, strict=True))


class RawRtsp:
    """A minimal RTSP client over TCP, to look at the bytes the camera sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Wrap an open connection."""
        self.reader = reader
        self.writer = writer
        self.cseq = 0
        self.session: str | None = None

    @classmethod
    async def connect(cls, port: int) -> RawRtsp:
        """Connect to 127.0.0.1:port."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(
        self, method: str, url: str, headers: dict[str, str] | None = None, timeout: float = 3
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request, skip interleaved data, return (status, lower-case headers, body)."""
        self.cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self.cseq}"]
        if self.session:
            lines.append(f"Session: {self.session}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(timeout):
            while True:
                first = await self.reader.readexactly(1)
                if first == b"$":
                    size = int.from_bytes((await self.reader.readexactly(3))[1:])
                    await self.reader.readexactly(size)
                    continue
                head = (first + await self.reader.readuntil(b"\r\n\r\n")).decode()
                status_line, *rest = head.split("\r\n")
                parsed = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in rest if ":" in line)
                }
                body = await self.reader.readexactly(int(parsed.get("content-length", 0)))
                if "session" in parsed:
                    self.session = parsed["session"].split(";")[0]
                return int(status_line.split()[1]), parsed, body

    async def play_tcp(self, url: str) -> dict[str, str]:
        """DESCRIBE, SETUP (interleaved) and PLAY; return the PLAY response headers."""
        status, _, _ = await self.request("DESCRIBE", url, {"Accept": "application/sdp"})
        assert status == 200
        status, _, _ = await self.request(
            "SETUP", f"{url}/trackID=0", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        )
        assert status == 200
        status, headers, _ = await self.request("PLAY", url)
        assert status == 200
        return headers

    async def read_rtp(self, timeout: float = 3) -> tuple[int, bytes]:
        """Next interleaved frame: (channel, RTP packet)."""
        async with asyncio.timeout(timeout):
            first = await self.reader.readexactly(1)
            assert first == b"$", f"expected interleaved data, got {first!r}"
            header = await self.reader.readexactly(3)
            return header[0], await self.reader.readexactly(int.from_bytes(header[1:]))

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[VirtualCamera]:
    """A started camera, stopped afterwards (even when the test fails)."""
    kwargs.setdefault("name", "test")
    kwargs.setdefault("color", color_for(0))
    cam = VirtualCamera(CameraConfig(**kwargs))
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


def encoder_threads() -> list[threading.Thread]:
    """Live encoder threads of any camera."""
    return [t for t in threading.enumerate() if t.name.startswith("virtualcam-enc-")]


async def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    """Poll a predicate (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def read_until_closed(raw: RawRtsp, limit: int = 1000) -> BaseException | None:
    """Read interleaved packets until the connection ends; return what ended it."""
    for _ in range(limit):  # buffered packets first, then EOF or reset
        try:
            await raw.read_rtp(timeout=2)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as err:
            return err
    return None


# -- pictures ---------------------------------------------------------------------------------


def test_palette_is_distinct_and_deterministic() -> None:
    """At least 64 colours, pairwise > 60 apart, same every time, nearest_camera inverts it."""
    colors = [color_for(i) for i in range(len(palette()))]
    assert len(set(colors)) == len(colors) >= 64
    assert min(math.dist(a, b) for a, b in itertools.combinations(colors, 2)) > 60
    assert colors == [color_for(i) for i in range(len(colors))]
    assert color_for(0) == (255, 0, 0)
    assert all(max(c) - min(c) == 255 for c in colors[:24])  # the first ones fully saturated
    rng = np.random.default_rng(1)
    for i, c in enumerate(colors):
        noisy = np.clip(np.array(c) + rng.integers(-25, 26, 3), 0, 255)
        assert nearest_camera(noisy, colors) == i


def test_picture_is_pure_colour_with_clock_box() -> None:
    """Centre 50% is pure colour; the corner box shows changing text."""
    renderer = Renderer("cam-07", color_for(7), 640, 360)
    first = renderer.render(1_700_000_000.0)
    second = renderer.render(1_700_000_000.1)
    centre = first[90:270, 160:480]
    assert (centre == np.array(color_for(7), dtype=np.uint8)).all()
    assert (first[0:4, 0:4] == 0).all()  # black box in the top-left corner
    assert not np.array_equal(first, second)  # the clock changes every tenth of a second
    assert renderer.text(1_700_000_000.25).endswith(".2")
    small = Renderer("a-very-long-camera-name", color_for(1), 160, 90).render()
    assert (small[23:67, 40:120] == np.array(color_for(1), dtype=np.uint8)).all()


def test_packetize_fu_a_roundtrip() -> None:
    """Big NAL units become FU-A fragments that reassemble exactly; small ones stay single."""
    big = bytes([0x65]) + os.urandom(5000)
    small = bytes([0x41]) + os.urandom(100)
    stream = b"\x00\x00\x00\x01" + big + b"\x00\x00\x01" + small
    assert split_annexb(stream) == [big, small]
    payloads = packetize([big, small])
    assert all(len(p) + 12 <= 1400 for p in payloads)
    frags, single = payloads[:-1], payloads[-1]
    assert single == small
    assert all(p[0] & 0x1F == 28 for p in frags)
    assert frags[0][1] & 0x80
    assert frags[-1][1] & 0x40
    assert not any(p[1] & 0xC0 for p in frags[1:-1])
    rebuilt = bytes([(frags[0][0] & 0xE0) | (frags[0][1] & 0x1F)]) + b"".join(p[2:] for p in frags)
    assert rebuilt == big


# -- RTSP -------------------------------------------------------------------------------------


async def test_rtsp_tcp_and_udp_share_one_encoder() -> None:
    """TCP and UDP clients decode the camera's colour; one encoder serves both."""
    async with running(color=color_for(3), fps=25) as cam:
        assert not cam.encoder_running
        tcp, udp = await asyncio.gather(
            decode(cam.rtsp_url, transport="tcp", extra=FAST),
            decode(cam.rtsp_url, transport="udp", extra=FAST),
        )
        for frames in (tcp, udp):
            assert len(frames) == 3
            assert frames[0][0], "first decoded frame must be a keyframe"
            assert all(_close(rgb, color_for(3)) for _, rgb, _ in frames)
        assert cam.stats.describe_requests == 2
        assert cam.stats.play_sessions == 2
        assert cam.media.encoder_starts <= 2
        assert await wait_for(lambda: cam.stats.active_play_sessions == 0)
        assert await wait_for(lambda: not cam.encoder_running)


async def test_rtsp_default_client_options() -> None:
    """PyAV with no tuning (as Home Assistant opens streams) plays the default camera."""
    async with running(color=color_for(5)) as cam:
        frames = await decode(cam.rtsp_url, frames=2)
        assert frames[0][0]
        assert _close(frames[1][1], color_for(5))


async def test_two_cameras_at_once() -> None:
    """Two cameras stream simultaneously, each its own colour."""
    async with CameraFarm(2, base_name="pair", fps=25) as farm:
        results = await asyncio.gather(*(decode(c.rtsp_url, extra=FAST) for c in farm.cameras))
        for index, frames in enumerate(results):
            for _, rgb, _ in frames:
                assert nearest_camera(rgb, farm.colors) == index
                assert _close(rgb, farm.cameras[index].color)
        assert [c.name for c in farm.cameras] == ["pair-00", "pair-01"]


@pytest.mark.parametrize("scheme", ["digest", "basic"])
async def test_rtsp_authentication(scheme: str) -> None:
    """401 without or with wrong credentials; frames with the right ones."""
    async with running(username="admin", password="s3cret", auth=scheme, fps=25) as cam:
        with pytest.raises(av.error.HTTPUnauthorizedError):
            await decode(cam.rtsp_url, timeout=3)
        with pytest.raises(av.error.HTTPUnauthorizedError):
            await decode(_with_credentials(cam.rtsp_url, "admin", "wrong"), timeout=3)
        frames = await decode(_with_credentials(cam.rtsp_url, "admin", "s3cret"), extra=FAST)
        assert _close(frames[0][1], cam.color)
        assert cam.stats.unauthorized_responses >= 2

        raw = await RawRtsp.connect(cam.rtsp_port)
        try:
            status, _, _ = await raw.request("OPTIONS", cam.rtsp_url)
            assert status == 200  # OPTIONS needs no credentials
            status, headers, _ = await raw.request("DESCRIBE", cam.rtsp_url)
            assert status == 401
            challenge = headers["www-authenticate"]
            if scheme == "digest":
                assert challenge.startswith("Digest ")
                assert "realm=" in challenge
                assert "nonce=" in challenge
                # Basic is not accepted by a digest camera.
                basic = base64.b64encode(b"admin:s3cret").decode()
                status, _, _ = await raw.request(
                    "DESCRIBE", cam.rtsp_url, {"Authorization": f"Basic {basic}"}
                )
                assert status == 401
            else:
                assert challenge.startswith("Basic ")
        finally:
            await raw.close()


async def test_rtsp_protocol_details() -> None:
    """SDP, Session timeout, RTP-Info, and RTP headers/packetization on the wire."""
    async with running(width=1280, height=720, fps=25) as cam:
        raw = await RawRtsp.connect(cam.rtsp_port)
        try:
            status, headers, body = await raw.request("DESCRIBE", cam.rtsp_url)
            assert status == 200
            assert headers["content-type"] == "application/sdp"
            assert headers["content-base"] == cam.rtsp_url + "/"
            sdp = body.decode()
            assert "a=rtpmap:96 H264/90000" in sdp
            assert "a=control:trackID=0" in sdp
            assert "a=framerate:25" in sdp
            fmtp = next(line for line in sdp.splitlines() if line.startswith("a=fmtp:96 "))
            assert "packetization-mode=1" in fmtp
            assert "profile-level-id=" in fmtp
            sps_b64, pps_b64 = fmtp.split("sprop-parameter-sets=")[1].split(";")[0].split(",")
            assert base64.b64decode(sps_b64)[0] & 0x1F == 7
            assert base64.b64decode(pps_b64)[0] & 0x1F == 8
            status, headers, _ = await raw.request(
                "SETUP",
                f"{cam.rtsp_url}/trackID=0",
                {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
            )
            assert status == 200
            assert headers["session"].endswith(";timeout=60")
            assert "interleaved=0-1" in headers["transport"]
            status, headers, _ = await raw.request("PLAY", cam.rtsp_url)
            assert status == 200
            info = dict(p.split("=", 1) for p in headers["rtp-info"].split(";"))
            assert info["url"] == f"{cam.rtsp_url}/trackID=0"
            packets = [await raw.read_rtp() for _ in range(60)]
            status, _, _ = await raw.request("GET_PARAMETER", cam.rtsp_url)
            assert status == 200
            status, _, _ = await raw.request("SET_PARAMETER", cam.rtsp_url)
            assert status == 200
            status, _, _ = await raw.request("TEARDOWN", cam.rtsp_url)
            assert status == 200
        finally:
            await raw.close()
    assert {ch for ch, _ in packets} == {0}
    rtp = [(struct.unpack("!BBHII", p[:12]), p[12:]) for _, p in packets]
    assert rtp[0][0][2] == int(info["seq"])
    assert all(h[0] == 0x80 and h[1] & 0x7F == 96 for h, _ in rtp)
    seqs = [h[2] for h, _ in rtp]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert rtp[0][1][0] & 0x1F == 7  # a joining client starts at SPS, PPS, IDR
    assert any(p[0] & 0x1F == 28 for _, p in rtp), "a 720p IDR needs FU-A fragments"
    stamps = []
    for (h, _), (nxt, _) in itertools.pairwise(rtp):
        if h[1] & 0x80:  # marker: last packet of an access unit; the next starts a new one
            assert nxt[3] != h[3]
            stamps.append(h[3])
        else:
            assert nxt[3] == h[3]
    deltas = {(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps)}
    assert deltas  # 90 kHz / 25 fps = 3600 per frame; an overloaded encoder skips ticks
    assert all(d > 0 and d % 3600 == 0 for d in deltas)


async def test_gop_joining_client_waits_for_keyframe() -> None:
    """gop 2 s: a second client's first packet (and decoded frame) is a keyframe."""
    async with running(gop_seconds=2.0, fps=25) as cam:
        first = await RawRtsp.connect(cam.rtsp_port)
        try:
            await first.play_tcp(cam.rtsp_url)
            await first.read_rtp()
            await asyncio.sleep(0.3)  # past the initial IDR
            second = await RawRtsp.connect(cam.rtsp_port)
            try:
                await second.play_tcp(cam.rtsp_url)
                started = time.monotonic()
                _, packet = await second.read_rtp(timeout=3)
                waited = time.monotonic() - started
                assert packet[12] & 0x1F == 7
                assert 0.1 < waited < 2.2  # held back until the next IDR
            finally:
                await second.close()
            frames = await decode(cam.rtsp_url, frames=1, extra=FAST)
            assert frames[0][0]
            assert cam.media.encoder_starts == 1
        finally:
            await first.close()


async def test_keyframe_on_connect() -> None:
    """keyframe_on_connect: a joining client gets an IDR at once, not at the next GOP."""
    async with running(gop_seconds=5.0, fps=25, keyframe_on_connect=True) as cam:
        first = await RawRtsp.connect(cam.rtsp_port)
        try:
            await first.play_tcp(cam.rtsp_url)
            await first.read_rtp()
            await asyncio.sleep(0.3)
            frames = await decode(cam.rtsp_url, frames=1, extra=FAST)
            assert frames[0][0]
            assert frames[0][2] < 2.5  # the next scheduled IDR is up to 5 s away
        finally:
            await first.close()


async def test_idle_camera_runs_no_encoder() -> None:
    """No encoder thread until someone plays; it stops when the last client leaves."""
    before = set(encoder_threads())
    async with running(fps=25) as cam:
        await asyncio.sleep(0.2)
        assert set(encoder_threads()) == before
        assert not cam.encoder_running
        raw = await RawRtsp.connect(cam.rtsp_port)
        try:
            await raw.play_tcp(cam.rtsp_url)
            await raw.read_rtp()
            assert cam.encoder_running
            assert len(set(encoder_threads()) - before) == 1
            assert cam.stats.active_play_sessions == 1
        finally:
            await raw.close()
        assert await wait_for(lambda: not cam.encoder_running)
        assert await wait_for(lambda: set(encoder_threads()) == before)
        assert cam.stats.active_play_sessions == 0


async def test_restart_drops_clients_and_keeps_ports() -> None:
    """restart() is a reboot: connections drop, ports stay, streaming works again."""
    async with running(fps=25) as cam:
        rtsp_port, http_port = cam.rtsp_port, cam.http_port
        raw = await RawRtsp.connect(rtsp_port)
        try:
            await raw.play_tcp(cam.rtsp_url)
            await raw.read_rtp()
            await cam.restart()
            ended = await read_until_closed(raw)
            assert isinstance(ended, (asyncio.IncompleteReadError, ConnectionError))
        finally:
            await raw.close()
        assert (cam.rtsp_port, cam.http_port) == (rtsp_port, http_port)
        assert cam.stats.active_play_sessions == 0
        frames = await decode(cam.rtsp_url, frames=1, extra=FAST)
        assert _close(frames[0][1], cam.color)
        async with aiohttp.ClientSession() as session, session.get(cam.snapshot_url) as resp:
            assert resp.status == 200


# -- HTTP -------------------------------------------------------------------------------------


async def test_snapshot_and_status() -> None:
    """JPEG of the camera's colour, cached for bursts; /status is JSON."""
    async with running(color=color_for(9)) as cam, aiohttp.ClientSession() as session:
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/jpeg"
            body = await resp.read()
        assert body[:2] == b"\xff\xd8"
        assert body[-2:] == b"\xff\xd9"
        image = Image.open(io.BytesIO(body)).convert("RGB")
        assert image.size == (640, 360)
        r, g, b = image.getpixel((320, 180))  # type: ignore[misc]
        assert _close((r, g, b), color_for(9))
        async with session.get(cam.snapshot_url) as resp:
            assert (await resp.read())[:2] == b"\xff\xd8"
        assert cam.media.render_jpeg() is cam.media.render_jpeg()  # 100 ms cache
        async with session.get(cam.snapshot_url.replace("snapshot.jpg", "status")) as resp:
            status = await resp.json()
        assert status["name"] == "test"
        assert status["snapshot_requests"] == 2
        assert not status["encoder_running"]
        async with session.get(cam.snapshot_url.replace("snapshot.jpg", "nope")) as resp:
            assert resp.status == 404


@pytest.mark.parametrize("scheme", ["digest", "basic"])
async def test_snapshot_authentication(scheme: str) -> None:
    """401 with the right challenge without/with wrong credentials; 200 with the right ones."""
    async with (
        running(username="admin", password="pw", auth=scheme) as cam,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].lower().startswith(scheme)
        wrong: dict[str, Any] = (
            {"middlewares": (aiohttp.DigestAuthMiddleware("admin", "nope"),)}
            if scheme == "digest"
            else {"headers": {"Authorization": aiohttp.encode_basic_auth("admin", "nope")}}
        )
        async with session.get(cam.snapshot_url, **wrong) as resp:
            assert resp.status == 401
        right: dict[str, Any] = (
            {"middlewares": (aiohttp.DigestAuthMiddleware("admin", "pw"),)}
            if scheme == "digest"
            else {"headers": {"Authorization": aiohttp.encode_basic_auth("admin", "pw")}}
        )
        async with session.get(cam.snapshot_url, **right) as resp:
            assert resp.status == 200
            assert (await resp.read())[-2:] == b"\xff\xd9"
        if scheme == "digest":  # a digest-only camera refuses Basic
            basic = {"Authorization": aiohttp.encode_basic_auth("admin", "pw")}
            async with session.get(cam.snapshot_url, headers=basic) as resp:
                assert resp.status == 401
        assert cam.stats.unauthorized_responses >= 2


# -- faults -----------------------------------------------------------------------------------


async def test_fault_refuse() -> None:
    """REFUSE: RTSP connections are reset at once, HTTP ones after the request head."""
    async with running(fps=25) as cam, aiohttp.ClientSession() as session:
        cam.fault = Fault.REFUSE
        # FFmpeg reports the reset as either, depending on whether it was reading yet.
        with pytest.raises((av.error.ConnectionResetError, av.error.InvalidDataError)):
            await decode(cam.rtsp_url, timeout=2)
        with pytest.raises(aiohttp.ClientError):
            async with session.get(cam.snapshot_url) as resp:
                await resp.read()
        control = cam.snapshot_url.replace("snapshot.jpg", "control")
        async with session.post(control, json={"fault": None}) as resp:
            assert resp.status == 200
        assert cam.fault is None
        frames = await decode(cam.rtsp_url, frames=1, extra=FAST)
        assert _close(frames[0][1], cam.color)
        assert cam.stats.refused_connections >= 2


async def test_fault_hang_times_out_and_leaves_nothing_behind() -> None:
    """HANG: clients with a 1 s timeout time out; stop() leaves no task behind."""
    tasks_before = asyncio.all_tasks()
    cam = VirtualCamera(CameraConfig("hang", color_for(2), fps=25))
    await cam.start()
    try:
        cam.fault = Fault.HANG
        raw = await RawRtsp.connect(cam.rtsp_port)
        started = time.monotonic()
        with pytest.raises(av.error.FFmpegError):
            await decode(cam.rtsp_url, timeout=1)
        assert time.monotonic() - started < 3
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(TimeoutError):
                async with session.get(cam.snapshot_url) as resp:
                    await resp.read()
        with pytest.raises(TimeoutError):
            await raw.request("OPTIONS", cam.rtsp_url, timeout=0.5)
    finally:
        await cam.stop()
    await raw.close()
    await asyncio.sleep(0)
    lingering = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    assert not lingering


async def test_fault_slow() -> None:
    """SLOW: answers come after slow_delay."""
    async with running(slow_delay=0.4) as cam, aiohttp.ClientSession() as session:
        cam.fault = Fault.SLOW
        started = time.monotonic()
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 200
            await resp.read()
        assert time.monotonic() - started >= 0.4
        raw = await RawRtsp.connect(cam.rtsp_port)
        try:
            started = time.monotonic()
            status, _, _ = await raw.request("OPTIONS", cam.rtsp_url)
            assert status == 200
            assert time.monotonic() - started >= 0.4
        finally:
            await raw.close()


async def test_fault_bad_snapshots() -> None:
    """TRUNCATED_JPEG, WRONG_CONTENT_TYPE and HTTP DROP."""
    async with running() as cam, aiohttp.ClientSession() as session:
        cam.fault = Fault.TRUNCATED_JPEG
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/jpeg"
            body = await resp.read()
            assert int(resp.headers["Content-Length"]) == len(body)
        assert body[:2] == b"\xff\xd8"
        assert b"\xff\xd9" not in body[-2:]
        cam.fault = Fault.WRONG_CONTENT_TYPE
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert "<html" in await resp.text()
        cam.fault = Fault.DROP
        async with session.get(cam.snapshot_url) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        cam.fault = None
        async with session.get(cam.snapshot_url) as resp:
            assert (await resp.read())[-2:] == b"\xff\xd9"


async def test_fault_unauthorized() -> None:
    """UNAUTHORIZED: 401 whatever the credentials, on both protocols."""
    async with (
        running(username="u", password="p", fps=25) as cam,
        aiohttp.ClientSession() as session,
    ):
        cam.set_fault("unauthorized")
        assert cam.fault is Fault.UNAUTHORIZED
        with pytest.raises(av.error.HTTPUnauthorizedError):
            await decode(_with_credentials(cam.rtsp_url, "u", "p"), timeout=3)
        mw = aiohttp.DigestAuthMiddleware("u", "p")
        async with session.get(cam.snapshot_url, middlewares=(mw,)) as resp:
            assert resp.status == 401


async def test_fault_drop_rtsp() -> None:
    """DROP: the stream ends about 1 s after PLAY (TCP and UDP)."""
    async with running(fps=25) as cam:
        cam.fault = Fault.DROP
        for transport in ("tcp", "udp"):
            started = time.monotonic()
            with contextlib.suppress(av.error.FFmpegError):
                frames = await decode(cam.rtsp_url, transport=transport, frames=1000, timeout=2)
                assert 0 < len(frames) < 100
            assert time.monotonic() - started < 5
        assert cam.stats.dropped_sessions == 2
        assert await wait_for(lambda: not cam.encoder_running)


async def test_control_endpoint() -> None:
    """POST /control switches faults by name; bad names get 400."""
    async with running() as cam, aiohttp.ClientSession() as session:
        control = cam.snapshot_url.replace("snapshot.jpg", "control")
        async with session.post(control, json={"fault": "truncated_jpeg"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["fault"] == "truncated_jpeg"
        assert cam.fault is Fault.TRUNCATED_JPEG
        async with session.post(control, json={"fault": "melt"}) as resp:
            assert resp.status == 400
        async with session.post(control, json={"fault": None}) as resp:
            assert resp.status == 200
        assert cam.fault is None


async def test_stop_is_idempotent_and_farm_rtsp_only() -> None:
    """stop() twice is fine; rtsp_only cameras have no HTTP."""
    farm = CameraFarm(3, base_name="f", rtsp_only=1, fps=25)
    await farm.start()
    try:
        assert [c.config.http_snapshot for c in farm.cameras] == [True, True, False]
        assert len({c.rtsp_port for c in farm.cameras}) == 3
        assert len(set(farm.colors)) == 3
    finally:
        await farm.stop()
        await farm.stop()
    with pytest.raises(ValueError, match="loopback"):
        VirtualCamera(CameraConfig("x", (1, 2, 3), host="0.0.0.0"))  # refused: not loopback


# -- CLI --------------------------------------------------------------------------------------


async def test_cli_prints_ready_and_stops_on_sigterm() -> None:
    """python -m virtualcam prints one JSON line per camera, READY, and exits on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "virtualcam",
        "--count",
        "2",
        "--rtsp-only",
        "1",
        "--fps",
        "25",
        "--size",
        "320x180",
        "--name",
        "cli",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines: list[str] = []
        async with asyncio.timeout(15):
            while (line := (await proc.stdout.readline()).decode().strip()) != "READY":  # type: ignore[union-attr]
                assert line, "virtualcam exited before READY"
                lines.append(line)
        cameras = [json.loads(line) for line in lines]
        assert [c["name"] for c in cameras] == ["cli-00", "cli-01"]
        assert cameras[0]["snapshot_url"]
        assert cameras[1]["snapshot_url"] is None
        assert tuple(cameras[1]["color"]) == color_for(1)
        frames = await decode(cameras[1]["rtsp_url"], frames=1, extra=FAST)
        assert _close(frames[0][1], color_for(1))
        async with (
            aiohttp.ClientSession() as session,
            session.get(cameras[0]["snapshot_url"]) as resp,
        ):
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await proc.wait()


def test_noise_changes_a_bottom_band_and_keeps_the_centre_pure() -> None:
    """--noise: successive pictures differ in a bottom band; the centre keeps the colour."""
    colour = color_for(3)
    renderer = Renderer("n", colour, 320, 180, noise=True)
    first, second = renderer.render(0.0), renderer.render(0.0)
    band = 180 // 32
    assert not np.array_equal(first[-band:], second[-band:])
    assert np.array_equal(first[: 180 - band, 100:], second[: 180 - band, 100:])
    assert tuple(first[90, 160]) == colour
    plain = Renderer("n", colour, 320, 180)
    assert np.array_equal(plain.render(0.0), plain.render(0.0))


async def test_a_camera_stopping_as_clients_connect_logs_no_loop_error() -> None:
    """Connections that arrive as a camera stops are dropped: no loop error, no socket left open.

    asyncio.Server logs an AssertionError when it closes while a connection it
    accepted is still being wrapped (CPython #109564), which fails any Home
    Assistant test that was rebooting a camera at that moment. A connection
    the kernel handed over just before the stop must be closed, not left to
    the garbage collector (ResourceWarning). Both while the camera has just
    started and after it has sat idle, waiting for clients.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            cam = VirtualCamera(CameraConfig(name="busy", color=color_for(3)))
            for turns in range(8):
                await cam.start()
                if turns % 2:
                    await asyncio.sleep(0.01)  # idle, waiting for a client
                clients = []
                for port in (cam.rtsp_port, cam.http_port) * 4:
                    client = socket.socket()
                    client.setblocking(False)
                    client.connect_ex(("127.0.0.1", port))
                    clients.append(client)
                for _ in range(turns % 3):
                    await asyncio.sleep(0)
                await cam.stop()
                for client in clients:
                    client.close()
                await asyncio.sleep(0.01)
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert errors == []
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
