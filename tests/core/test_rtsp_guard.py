"""core.rtsp_guard: FFmpeg reaches the checked address and nothing else.

The filter is tested on byte streams; the relay against the virtual camera
and tiny scripted servers, all on 127.0.0.1.
"""

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
import contextlib
from contextlib import asynccontextmanager
import gc
import ipaddress
import logging
import os
from pathlib import Path
import random
import resource
import socket
import time
from typing import Any

import aiohttp
import pytest
import pytest_socket
import yarl

from custom_components.localcam.core import rtsp, rtsp_guard
from custom_components.localcam.core.errors import (
    CannotConnectError,
    CertificateError,
    InvalidAuthError,
    LocalCamError,
    RedirectedError,
)
from custom_components.localcam.core.models import CameraSource, RtspTransport
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.rtsp import async_grab_keyframe, client_ssl_context
from custom_components.localcam.core.rtsp_guard import ReplyFilter, RtspGuard, _rewrite_transport
from custom_components.localcam.core.snapshot import CameraClient
from tests.conftest import camera_config, camera_shown
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for
from virtualcam.tls import self_signed

USER, PASSWORD = "cam", "pw-guard-3"
ADDRESS = "192.168.1.20"


def _frame(channel: int, payload: bytes) -> bytes:
    return b"$" + bytes([channel]) + len(payload).to_bytes(2) + payload


def _feed_in_pieces(data: bytes, seed: int) -> bytes:
    """Feed ``data`` to a fresh filter in random pieces (1 to 300 bytes); return the output."""
    rng = random.Random(seed)
    check = ReplyFilter(ADDRESS)
    out = bytearray()
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 300)
        out += check.feed(data[pos : pos + step])
        pos += step
    return bytes(out)


def test_the_filter_passes_replies_and_interleaved_frames_byte_for_byte() -> None:
    """Frames whose payloads look like RTSP, a reply with a body, split anywhere: all unchanged."""
    sdp = b"v=0\r\n\r\nm=video 0 RTP/AVP 96\r\n"
    stream = (
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: "
        + str(len(sdp)).encode()
        + b"\r\n\r\n"
        + sdp
        # Payloads that would be refused if read as messages: only lengths count.
        + _frame(0, b"RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n")
        + _frame(1, b"\x00" * 1400)
        + b"RTSP/1.0 200 OK\r\nCSeq: 5\r\nSession: 1\r\n\r\n"
        + _frame(0, bytes(range(256)) * 200)
    )
    for seed in range(20):
        assert _feed_in_pieces(stream, seed) == stream


@pytest.mark.parametrize("status", [301, 302, 303, 305, 307, 308, 399])
def test_the_filter_refuses_a_redirect_reply(status: int) -> None:
    """Any 3xx (what FFmpeg follows) ends the session; the status is kept for the error."""
    check = ReplyFilter(ADDRESS)
    with pytest.raises(rtsp_guard._RefusedError) as caught:
        check.feed(
            f"RTSP/1.0 {status} Moved\r\nCSeq: 2\r\nLocation: rtsp://10.1.1.1/\r\n\r\n".encode()
        )
    assert caught.value.redirect == status


def test_the_filter_refuses_a_server_redirect_request_and_passes_other_requests() -> None:
    """RTSP's server-to-client REDIRECT is refused; a server's GET_PARAMETER is not."""
    check = ReplyFilter(ADDRESS)
    request = b"GET_PARAMETER rtsp://cam/ RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    assert check.feed(request) == request
    with pytest.raises(rtsp_guard._RefusedError) as caught:
        check.feed(b"REDIRECT rtsp://cam/ RTSP/1.0\r\nCSeq: 2\r\nLocation: rtsp://x/\r\n\r\n")
    assert caught.value.redirect == 302


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b" 302 Found", 302),
        (b"\t+302", 302),
        (b"-5", -5),
        (b"302x", 302),
        (b"x302", 0),
        (b"", 0),
        (b"4294967598", 302),  # wraps in a 32-bit int
        (b"99999999999999999999999", -1),  # strtol clamps to LONG_MAX, whose low 32 bits are -1
    ],
)
def test_numbers_are_read_as_c_reads_them(text: bytes, value: int) -> None:
    """Status and lengths: (int)strtol(text, NULL, 10), as FFmpeg reads them."""
    assert rtsp_guard._c_int(text) == value


@pytest.mark.parametrize(
    "stream",
    [
        # FFmpeg skips spaces before the first word, drops every "\r" and takes atoi()
        # of the status, overflow included (4294967598 wraps to 302 in its int).
        b" RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n",
        b"RTSP/1.0 3\r02 Found\r\nLocation: rtsp://x/\r\n\r\n",
        b"RTSP/1.0\t302x\nLocation: rtsp://x/\n\n",
        b"RTSP/1.0 4294967598 Found\r\nLocation: rtsp://x/\r\n\r\n",
        # FFmpeg reads no length from " Content-Length:" (not at the line's start):
        # the 302 after it is a message, not a body to pass unread.
        b"RTSP/1.0 200 OK\r\n Content-Length: 40\r\n\r\n"
        b"RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n",
        # "\r" before "$" still starts a frame for FFmpeg: the payload (which looks
        # like a head with a length) is skipped, and the 302 after it is read.
        b"\r"
        + _frame(0, b"RTSP/1.0 200 OK\r\nContent-Length: 50\r\n\r\n")
        + b"RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n",
        # A "$" starting a later line of a head is a frame to FFmpeg too (CRs dropped):
        # "\r\n\r" is then its header, and its length hides a decoy with a body
        # that would cover the 302 (found by review, reproduced against FFmpeg).
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n$\r\n\r\n"
        + b"RTSP/1.0 200 OK\r\nContent-Length: 2573\r\n\r\n"
        + b"x" * 2500
        + b"\r\nRTSP/1.0 302 Found\r\nCSeq: 2\r\nLocation: rtsp://x/\r\n\r\n",
        # Lengths wrap in FFmpeg's int as well: no body, then a body of 5 bytes.
        b"RTSP/1.0 200 OK\r\nContent-Length: 4294967296000\r\n\r\n"
        b"RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 4294967301\r\n\r\nabcde"
        b"RTSP/1.0 302 Found\r\nLocation: rtsp://x/\r\n\r\n",
    ],
    ids=[
        "leading-space",
        "cr-in-status",
        "bare-lf",
        "int-overflow",
        "spaced-length",
        "cr-frame",
        "dollar-line",
        "length-wraps-to-0",
        "length-wraps-to-5",
    ],
)
def test_the_filter_reads_messages_as_ffmpeg_does(stream: bytes) -> None:
    """Every way FFmpeg's own parser would see a redirect is refused here too, split anywhere."""
    for seed in range(10):
        with pytest.raises(rtsp_guard._RefusedError):
            _feed_in_pieces(stream, seed)


def test_a_frame_header_split_across_reads_is_passed_whole() -> None:
    """A "$" frame whose 4-byte header arrives in pieces is framed once it is complete."""
    check = ReplyFilter(ADDRESS)
    frame = _frame(0, b"RTSP/1.0 302 Found\r\n\r\n")
    assert check.feed(frame[:2]) == b""
    assert check.feed(frame[2:]) == frame


def test_crs_before_a_message_are_passed_on_at_once() -> None:
    """CRs at a message's start (dropped by FFmpeg) pass as they come; what follows is read."""
    check = ReplyFilter(ADDRESS)
    assert check.feed(b"\r\r") == b"\r\r"
    with pytest.raises(rtsp_guard._RefusedError):
        check.feed(b"RTSP/1.0 302 Found\r\n\r\n")


def test_a_nul_that_would_hide_the_checked_source_from_ffmpeg_is_refused() -> None:
    """FFmpeg's C strings end at a NUL: a source= added after one would never be read."""
    with pytest.raises(rtsp_guard._RefusedError):
        ReplyFilter(ADDRESS).feed(
            b"RTSP/1.0 200 OK\r\nTransport: RTP/AVP;unicast;server_port=47311-47312\x00\r\n\r\n"
        )


def test_the_filter_passes_a_camera_that_ends_lines_with_lf_only() -> None:
    """Bare "\n" line ends are RTSP to FFmpeg, so a camera sending them keeps working."""
    stream = (
        b"RTSP/1.0 200 OK\nCSeq: 2\nContent-Length: 5\n\nv=0\n\n"
        + _frame(0, b"\x80" * 20)
        + b"RTSP/1.0 200 OK\nCSeq: 3\n\n"
    )
    for seed in range(10):
        assert _feed_in_pieces(stream, seed) == stream


def test_the_filter_points_udp_packets_at_the_checked_address() -> None:
    """Every spec's source= becomes the checked address (FFmpeg ignores it for TCP)."""
    check = ReplyFilter(ADDRESS)
    out = check.feed(
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n"
        b"transport: RTP/AVP;unicast;client_port=5000-5001;source=203.0.113.9;"
        b"server_port=6970-6971,RTP/AVP;unicast;client_port=5002-5003\r\n\r\n"
    )
    assert out == (
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n"
        b"Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971;"
        b"source=192.168.1.20,RTP/AVP;unicast;client_port=5002-5003;source=192.168.1.20\r\n\r\n"
    )
    # FFmpeg skips a "/" before a parameter name: "/source" is a source to it.
    out = check.feed(b"RTSP/1.0 200 OK\r\nTransport: RTP/AVP;/source=203.0.113.9;ssrc=1\r\n\r\n")
    assert out == b"RTSP/1.0 200 OK\r\nTransport: RTP/AVP;ssrc=1;source=192.168.1.20\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"RTSP/1.0 200 OK\r\n" + b"X: " + b"a" * rtsp_guard.MAX_HEAD,
        b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nX: " + b"a" * 5000 + b"\r\n\r\n",
        b"RTSP/1.0 200 OK\r\n" + b"X: y\r\n" * 20000,
        b"\r" * 5000,
    ],
    ids=["endless-head", "huge-body", "long-line", "many-lines", "endless-cr"],
)
def test_the_filter_refuses_what_is_not_rtsp(data: bytes) -> None:
    """An endless head, an oversized body, a line FFmpeg would cut short, too many lines, CRs."""
    with pytest.raises(rtsp_guard._RefusedError):
        ReplyFilter(ADDRESS).feed(data)


@asynccontextmanager
async def _pair(
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[tuple[VirtualCamera, VirtualCamera]]:
    """Camera 0 (rtsps with ``tls``), whose players may be sent to camera 5 (no credentials)."""
    other = VirtualCamera(
        CameraConfig(
            name="c5",
            color=color_for(5),
            width=320,
            height=180,
            http_snapshot=False,
        )
    )
    await other.start()
    cam = VirtualCamera(
        camera_config(
            "c0",
            0,
            username=USER,
            password=PASSWORD,
            http_snapshot=False,
            redirect_location=other.rtsp_url,
            tls_cert=str(tls[0]) if tls else None,
            tls_key=str(tls[1]) if tls else None,
        )
    )
    await cam.start()
    try:
        yield cam, other
    finally:
        await cam.stop()
        await other.stop()


@pytest.fixture
async def two_cams(socket_enabled: None) -> AsyncIterator[tuple[VirtualCamera, VirtualCamera]]:
    """Camera 0, whose players may be sent to camera 5 (which asks for no credentials)."""
    async with _pair() as cams:
        yield cams


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Self-signed camera certificates: one naming 127.0.0.1, one naming cam.lan."""
    return {
        "127.0.0.1": self_signed(tmp_path_factory.mktemp("tls-ip"), "127.0.0.1"),
        "cam.lan": self_signed(tmp_path_factory.mktemp("tls-name"), "cam.lan"),
    }


@pytest.fixture
async def tls_cams(
    socket_enabled: None, quiet_tls_rejects: None, certs: dict[str, tuple[Path, Path]]
) -> AsyncIterator[tuple[VirtualCamera, VirtualCamera]]:
    """The same pair, camera 0 serving rtsps:// with a certificate for 127.0.0.1."""
    async with _pair(certs["127.0.0.1"]) as cams:
        yield cams


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make a certificate the only CA that verifying TLS clients built after this trust."""

    def trust(cert: Path) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("SSL_CERT_DIR", str(cert.parent))
        client_ssl_context.cache_clear()

    yield trust
    client_ssl_context.cache_clear()


@asynccontextmanager
async def _client(
    cam: VirtualCamera,
    transport: RtspTransport = RtspTransport.TCP,
    *,
    verify_ssl: bool = True,
    host: str | None = None,
    password: str = PASSWORD,
) -> AsyncIterator[CameraClient]:
    """LocalCam's client for an RTSP-only camera (stills are grabbed by FFmpeg).

    With ``host``, the camera is configured by that name, which the policy
    resolves to the camera's loopback address.
    """
    url = cam.rtsp_url
    policy = NetPolicy()
    if host is not None:
        url = str(yarl.URL(url).with_host(host))

        async def resolve(_host: str, _port: int) -> list[str]:
            return [cam.config.host]

        policy = NetPolicy(resolver=resolve)
    source = CameraSource(
        camera_id="cam_main",
        stream_url=url,
        username=USER,
        password=password,
        verify_ssl=verify_ssl,
        rtsp_transport=transport,
    )
    async with aiohttp.ClientSession() as session:
        client = CameraClient(session, policy, source)
        try:
            yield client
        finally:
            await client.close()


async def test_a_live_start_waits_for_its_camera_to_answer(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """wait_until_serving: a camera back from a reboot is waited for; a refusal is not.

    Up: it returns. Down, then up again a second later: it returns once the
    camera answers, before its timeout. Down for good: the camera's own
    error when the timeout ends. Wrong credentials: the 401 at once.
    """
    cam, _ = two_cams
    loop = asyncio.get_running_loop()
    async with _client(cam) as client:
        await client.wait_until_serving(5)
        await cam.stop()
        back = loop.create_task(asyncio.sleep(1.0))
        back.add_done_callback(lambda _: loop.create_task(cam.start()))
        asked = cam.stats.describe_requests
        async with asyncio.timeout(8):
            await client.wait_until_serving(10)
        assert back.done()
        assert cam.stats.describe_requests > asked
        await cam.stop()
        with pytest.raises(CannotConnectError):
            await client.wait_until_serving(1.2)
        await cam.start()
    async with _client(cam, password="wrong") as client:
        async with asyncio.timeout(3):  # one try, not a retry every 0.5 s for 10 s
            with pytest.raises(InvalidAuthError):
                await client.wait_until_serving(10)


@pytest.mark.parametrize("transport", list(RtspTransport))
async def test_stills_are_grabbed_through_the_relay_over_tcp_and_udp(
    two_cams: tuple[VirtualCamera, VirtualCamera], transport: RtspTransport
) -> None:
    """FFmpeg is handed a loopback relay URL, not the camera's, and gets the camera's frames."""
    cam, _ = two_cams
    async with _client(cam, transport) as client:
        url = yarl.URL(await client.stream_url())
        camera = yarl.URL(cam.rtsp_url)
        assert (url.host, url.path) == ("127.0.0.1", camera.path)
        assert url.port != camera.port
        assert (url.user, url.password) == (USER, PASSWORD)
        snapshot = await client.fetch_snapshot(timeout=8)
        assert camera_shown(snapshot.jpeg) == 0
        assert cam.stats.rtsp_connections >= 1
        assert (cam.stats.udp_setups > 0) == (transport is RtspTransport.UDP)


async def test_a_camera_that_sends_ffmpeg_elsewhere_gets_an_error_not_that_frame(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """Camera 0 passes checks but redirects FFmpeg to camera 5: no still, a RedirectedError.

    Without the relay FFmpeg follows the redirect and camera 5's frame is
    served as camera 0's (shown first, on the pinned URL itself).
    """
    cam, other = two_cams
    cam.fault = Fault.REDIRECT_PLAYERS
    direct = (await NetPolicy().check(cam.rtsp_url)).pinned_url(USER, PASSWORD)
    followed = await async_grab_keyframe(direct, timeout=5)
    assert camera_shown(followed.jpeg) == 5  # what FFmpeg does on its own
    before = other.stats.rtsp_connections
    async with _client(cam) as client:
        with pytest.raises(RedirectedError):
            await client.fetch_snapshot(timeout=5)
        with pytest.raises(RedirectedError):
            await client.probe(5)
        assert client.guard.refusals == 2
    assert other.stats.rtsp_connections == before
    cam.fault = None
    async with _client(cam) as client:
        assert camera_shown((await client.fetch_snapshot(timeout=8)).jpeg) == 0


@pytest.mark.parametrize("transport", list(RtspTransport))
async def test_an_rtsps_camera_is_relayed_with_the_relay_as_its_tls_client(
    tls_cams: tuple[VirtualCamera, VirtualCamera], transport: RtspTransport
) -> None:
    """FFmpeg gets plain RTSP on loopback, over TCP whatever is configured; TLS is the relay's.

    With "Verify SSL certificate" off, a self-signed camera's stills now come
    through: FFmpeg 9, as LocalCam's grabs ran it, checks every rtsps
    certificate unless told not to, so it refused such a camera.
    """
    cam, _ = tls_cams
    assert cam.rtsp_url.startswith("rtsps://")
    direct = (await NetPolicy().check(cam.rtsp_url)).pinned_url(USER, PASSWORD)
    with pytest.raises(LocalCamError):
        await async_grab_keyframe(direct, timeout=5)  # what FFmpeg does on its own
    async with _client(cam, transport, verify_ssl=False) as client:
        url = yarl.URL(await client.stream_url())
        assert (url.scheme, url.host, url.path) == ("rtsp", "127.0.0.1", "/stream")
        assert url.port != cam.rtsp_port
        # Only interleaved RTP travels inside the relay's TLS connection.
        assert client.source.ffmpeg_transport is RtspTransport.TCP
        snapshot = await client.fetch_snapshot(timeout=8)
        assert camera_shown(snapshot.jpeg) == 0
        assert cam.stats.rtsp_connections >= 1
        await client.probe(8)
        assert cam.stats.udp_setups == 0  # the video stayed inside the TLS connection


async def test_the_relay_checks_an_rtsps_certificate_when_the_source_asks(
    tls_cams: tuple[VirtualCamera, VirtualCamera],
    certs: dict[str, tuple[Path, Path]],
    trusted: Callable[[Path], None],
) -> None:
    """Verify on: a trusted certificate for the camera's host passes, any other ends the session.

    The relay checks it as LocalCam's own DESCRIBE does, against the host the
    URL names (an address or a name), so "Verify SSL certificate" means the
    same for stills and the live stream alike.
    """
    cam, _ = tls_cams
    async with _client(cam, verify_ssl=True) as client:
        before = cam.stats.rtsp_connections
        with pytest.raises(CertificateError) as err:
            await client.fetch_snapshot(timeout=4)
        assert err.value.placeholders == {"reason": "self-signed certificate"}
        with pytest.raises(CertificateError):  # the test before configure says the same
            await client.probe(4)
        assert cam.stats.rtsp_connections == before  # no RTSP request got through
    async with _pair(certs["cam.lan"]) as (named, _):
        trusted(certs["cam.lan"][0])  # a trusted certificate, for another host name
        async with _client(named, verify_ssl=True) as client:
            with pytest.raises(CertificateError) as err:
                await client.fetch_snapshot(timeout=4)
            assert "mismatch" in err.value.placeholders["reason"]
        assert named.stats.rtsp_connections == 0
        # Configured by the name its certificate carries: accepted.
        async with _client(named, verify_ssl=True, host="cam.lan") as client:
            assert yarl.URL(await client.stream_url()).host == "127.0.0.1"
            assert camera_shown((await client.fetch_snapshot(timeout=8)).jpeg) == 0
            assert client.guard.as_dict()["certificates_refused"] == 0
    async with _client(cam, verify_ssl=False) as client:
        assert camera_shown((await client.fetch_snapshot(timeout=8)).jpeg) == 0
    trusted(certs["127.0.0.1"][0])
    async with _client(cam, verify_ssl=True) as client:
        assert camera_shown((await client.fetch_snapshot(timeout=8)).jpeg) == 0


async def test_a_refusal_is_told_only_to_sessions_of_its_own_relay(
    tls_cams: tuple[VirtualCamera, VirtualCamera], caplog: pytest.LogCaptureFixture
) -> None:
    """A refused certificate on one address is not the reason another address's session failed.

    FFmpeg retries (HA's stream, with backoff): the refusal warns once per
    address, later ones are logged at debug level.
    """
    cam, other = tls_cams
    guard = RtspGuard()
    try:
        started = time.monotonic()
        refusing = guard.url(await NetPolicy().check(cam.rtsp_url), None, None)
        elsewhere = guard.url(await NetPolicy().check(other.rtsp_url), None, None)
        port = yarl.URL(refusing).port
        assert port is not None
        caplog.set_level(logging.DEBUG, logger=rtsp_guard.__name__)
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # the handshake failed: FFmpeg sees the end
            writer.close()
        refused = guard.refused_since(refusing, started)
        assert isinstance(refused, CertificateError)
        assert guard.refused_since(refusing, time.monotonic() + 1) is None  # not since then
        assert guard.refused_since(elsewhere, started) is None
        assert guard.as_dict()["certificates_refused"] == 2
        assert guard.as_dict()["sessions_refused"] == 2
        told = [r.levelno for r in caplog.records if "does not accept" in r.getMessage()]
        assert told == [logging.WARNING, logging.DEBUG]
    finally:
        await guard.close()


async def test_an_rtsps_camera_that_sends_ffmpeg_elsewhere_gets_an_error_not_that_frame(
    tls_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """The redirect a TLS camera sends FFmpeg is refused by the relay, as for plain RTSP."""
    cam, other = tls_cams
    cam.fault = Fault.REDIRECT_PLAYERS
    before = other.stats.rtsp_connections
    async with _client(cam, verify_ssl=False) as client:
        with pytest.raises(RedirectedError):
            await client.fetch_snapshot(timeout=5)
        assert client.guard.refusals == 1
    assert other.stats.rtsp_connections == before


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A scripted camera that answers every request 200 until the client goes."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")


async def _rtsp_options(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Connect to a relay port and ask OPTIONS; return the stream and the reply head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"OPTIONS rtsp://127.0.0.1/stream RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def test_a_camera_that_cannot_be_reached_is_answered_503(socket_enabled: None) -> None:
    """The camera is off: FFmpeg gets a 503 answering its request, not a silent close.

    The close made HA's log say "Invalid data found when processing input"
    at the relay's loopback address, on every retry of the stream.
    """
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now
    guard = RtspGuard()
    try:
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{port}/stream")
        relay = yarl.URL(guard.url(target, None, None)).port
        assert relay is not None
        reader, writer, head = await _rtsp_options(relay)
        assert head == b"RTSP/1.0 503 Camera unreachable\r\nCSeq: 1\r\n\r\n"
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # and the connection ends
        writer.close()
    finally:
        await guard.close()


async def test_close_ends_relayed_sessions_and_stops_listening(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """Unload: a session in progress ends at once and the port takes no new one."""
    cam, _ = two_cams
    guard = RtspGuard()
    target = await NetPolicy().check(cam.rtsp_url)
    port = yarl.URL(guard.url(target, None, None)).port
    assert port is not None
    reader, writer, head = await _rtsp_options(port)
    assert head.startswith(b"RTSP/1.0 200")
    await guard.close()
    # Neither direction of the session outlives it (left running, they would
    # fail later with nobody to read their error).
    running = {task.get_coro().__name__ for task in asyncio.all_tasks()}  # type: ignore[union-attr]
    assert not running & {"_copy", "_filter", "_relay", "_accept"}
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # A fetch still running during the unload gets an error, not a new listener.
    with pytest.raises(CannotConnectError):
        guard.url(target, None, None)
    assert guard.as_dict()["relays"] == 0


async def test_a_connection_accepted_as_the_relay_closes_is_not_relayed(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """Whatever the moment of a connection before close(), no session outlives close().

    asyncio hands an accepted socket to the relay a few loop turns later; one
    arriving after close() cancelled the sessions it knew of is turned away.
    """
    cam, _ = two_cams
    target = await NetPolicy().check(cam.rtsp_url)
    for turns in range(8):
        guard = RtspGuard()
        port = yarl.URL(guard.url(target, None, None)).port
        await asyncio.sleep(0.05)  # listening
        assert port is not None
        with socket.socket() as client:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))  # no loop turn spent connecting
            for _ in range(turns):
                await asyncio.sleep(0)
            await guard.close()
            await asyncio.sleep(0.1)
            running = {t.get_coro().__name__ for t in asyncio.all_tasks()}  # type: ignore[union-attr]
            assert not running & {"_copy", "_filter", "_relay", "_accept"}, turns


async def test_listeners_and_sessions_are_bounded(socket_enabled: None) -> None:
    """At most MAX_LISTENERS addresses per camera and MAX_CONNECTIONS sessions per address."""

    server = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
    cam_port = server.sockets[0].getsockname()[1]
    guard = RtspGuard()
    try:
        # Six addresses (ports stand in for them: only the last is ever connected to).
        targets = [
            await NetPolicy().check(f"rtsp://127.0.0.1:{port}/s")
            for port in (1001, 1002, 1003, 1004, 1005, cam_port)
        ]
        ports = [yarl.URL(guard.url(t, None, None)).port for t in targets]
        assert len(set(ports)) == 6
        # Asked again, the newest addresses keep their port; the two oldest were closed.
        assert yarl.URL(guard.url(targets[-1], None, None)).port == ports[-1]
        await asyncio.sleep(0.1)
        for port in ports[:2]:
            assert port is not None
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
        port = ports[-1]
        assert port is not None
        sessions = [await _rtsp_options(port) for _ in range(rtsp_guard.MAX_CONNECTIONS)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # one more is turned away
        writer.close()
        for _, session_writer, _ in sessions:
            session_writer.close()
    finally:
        await guard.close()
        server.close()


async def test_silent_connections_cannot_keep_the_session_places(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends nothing within FIRST_REQUEST_WAIT is closed; one that spoke stays.

    Without the deadline, MAX_CONNECTIONS idle connections from any local
    process kept HA's stream from the camera for as long as they stayed open.
    """
    monkeypatch.setattr(rtsp_guard, "FIRST_REQUEST_WAIT", 0.3)

    server = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
    guard = RtspGuard()
    try:
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/s")
        port = yarl.URL(guard.url(target, None, None)).port
        assert port is not None
        talker = await _rtsp_options(port)
        silent = [
            await asyncio.open_connection("127.0.0.1", port)
            for _ in range(rtsp_guard.MAX_CONNECTIONS - 1)
        ]
        async with asyncio.timeout(3):
            for reader, _ in silent:
                assert await reader.read() == b""  # closed by the relay, unasked
        # The places are free again: a new client is relayed.
        _, writer, head = await _rtsp_options(port)
        assert head.startswith(b"RTSP/1.0 200")
        writer.close()
        # The client that spoke first is still relayed, well past the wait.
        talker[1].write(b"OPTIONS rtsp://127.0.0.1/stream RTSP/1.0\r\nCSeq: 2\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await talker[0].readuntil(b"\r\n\r\n")).startswith(b"RTSP/1.0 200")
        talker[1].close()
        for _, writer in silent:
            writer.close()
    finally:
        await guard.close()
        server.close()


async def test_a_retired_relay_ends_its_sessions_and_a_kept_one_stays(
    socket_enabled: None,
) -> None:
    """retire() closes the old address's relay and its open session; never the kept URL's."""

    old_camera = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
    new_camera = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
    guard = RtspGuard()
    try:
        urls = []
        for server in (old_camera, new_camera):
            target = await NetPolicy().check(
                f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/s"
            )
            urls.append(guard.url(target, None, None))
        old, new = urls
        old_port, new_port = yarl.URL(old).port, yarl.URL(new).port
        assert old_port is not None
        assert new_port is not None
        reader, writer, _ = await _rtsp_options(old_port)  # a player still on the old address
        # The same relay under another path is kept (only the path changed).
        assert not guard.retire(old, keep=old.replace("/s", "/other"))
        assert not guard.retire("rtsp://127.0.0.1:1/s", keep=new)  # no relay there
        assert guard.retire(old, keep=new)
        async with asyncio.timeout(2):
            assert await reader.read() == b""  # its session ended
        writer.close()
        assert guard.relayed_to(old) is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", old_port)
        assert guard.relayed_to(new) is not None
        _, kept_writer, head = await _rtsp_options(new_port)  # the kept relay still relays
        assert head.startswith(b"RTSP/1.0 200")
        kept_writer.close()
    finally:
        await guard.close()
        old_camera.close()
        new_camera.close()


async def test_urls_name_the_relay_and_keep_what_the_camera_needs(socket_enabled: None) -> None:
    """Credentials, path and query kept; rtsps relayed by its own TLS setting; others refused."""
    guard = RtspGuard()
    try:
        target = await NetPolicy().check("rtsp://127.0.0.1:5540/live?channel=1")
        url = yarl.URL(guard.url(target, "viewer", None))
        # A blank password stays "viewer:" (FFmpeg answers no challenge without the colon).
        assert (url.user, url.password, url.host) == ("viewer", "", "127.0.0.1")
        assert (url.path, url.query_string) == ("/live", "channel=1")
        relayed = guard.relayed_to(str(url))
        assert relayed is not None
        assert (str(relayed[0]), relayed[1]) == ("127.0.0.1", 5540)
        tls = await NetPolicy().check("rtsps://127.0.0.1:3322/live")
        verified = yarl.URL(guard.url(tls, None, None))
        assert (verified.scheme, verified.host, verified.path) == ("rtsp", "127.0.0.1", "/live")
        relayed = guard.relayed_to(str(verified))
        assert relayed is not None
        assert (str(relayed[0]), relayed[1]) == ("127.0.0.1", 3322)
        # Another TLS setting is another relay: a verifying one is never reused unverified.
        unverified = yarl.URL(guard.url(tls, None, None, verify_ssl=False))
        assert unverified.port != verified.port
        assert yarl.URL(guard.url(tls, None, None)).port == verified.port
        # verify_ssl means nothing to plain RTSP: one relay for the address.
        assert yarl.URL(guard.url(target, None, None, verify_ssl=False)).port == url.port
        with pytest.raises(ValueError, match="not an RTSP URL"):
            guard.url(await NetPolicy().check("http://127.0.0.1:8080/live"), None, None)
        assert guard.relayed_to("rtsp://127.0.0.1:1/live") is None  # no relay on that port
        assert guard.relayed_to("rtsp://192.168.1.9:5540/live") is None  # not the relay
        assert guard.relayed_to("rtsp://[::1") is None  # not a URL
    finally:
        await guard.close()


async def test_a_relay_port_is_never_handed_out_twice(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old relay URL never reaches another camera's relay that got the same port.

    The kernel is made to offer a port a closed relay used (as it may, under
    churn): the guard binds another, and the old URL reaches nothing.
    """
    first = RtspGuard()
    target = await NetPolicy().check("rtsp://127.0.0.1:5540/a")
    old_port = yarl.URL(first.url(target, None, None)).port
    await first.close()
    offered = iter([old_port])
    real_socket = socket.socket

    class OfferingOldPortFirst(real_socket):
        def bind(self, address: Any) -> None:
            port = next(offered, 0) if address == ("127.0.0.1", 0) else address[1]
            super().bind((address[0], port))

    monkeypatch.setattr(rtsp_guard.socket, "socket", OfferingOldPortFirst)
    second = RtspGuard()
    try:
        other = await NetPolicy().check("rtsp://127.0.0.1:5541/b")
        new_port = yarl.URL(second.url(other, None, None)).port
        assert new_port != old_port
        assert next(offered, None) is None  # the old port was offered, and passed over
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", old_port)
    finally:
        await second.close()


class _FailingSocket(socket.socket):
    """A socket whose bind or listen fails (no loopback port left, say)."""

    fail: str = "bind"

    def bind(self, address: Any) -> None:
        if self.fail == "bind":
            raise OSError(98, "Address already in use")
        super().bind(address)

    def listen(self, backlog: int = 0) -> None:
        if self.fail == "listen":
            raise OSError(22, "Invalid argument")
        super().listen(backlog)


@pytest.mark.parametrize("fail", ["bind", "listen"])
async def test_no_relay_port_is_a_connection_error(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    """A relay that cannot listen fails the session as an unreachable camera would."""
    monkeypatch.setattr(_FailingSocket, "fail", fail)
    monkeypatch.setattr(rtsp_guard.socket, "socket", _FailingSocket)
    guard = RtspGuard()
    target = await NetPolicy().check("rtsp://127.0.0.1:5540/a")
    with pytest.raises(CannotConnectError):
        guard.url(target, None, None)
    await guard.close()


async def test_remembered_ports_are_bounded_and_a_kernel_that_offers_only_them_fails(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory of used ports keeps the newest; offered only used ports, url() gives up."""
    monkeypatch.setattr(rtsp_guard, "_USED_PORTS", OrderedDict())
    monkeypatch.setattr(rtsp_guard, "_REMEMBERED_PORTS", 2)
    guard = RtspGuard()
    try:
        ports = [
            yarl.URL(guard.url(await NetPolicy().check(f"rtsp://127.0.0.1:{n}/a"), None, None)).port
            for n in (5001, 5002, 5003)
        ]
        assert list(rtsp_guard._USED_PORTS) == ports[1:]
        monkeypatch.setattr(rtsp_guard, "_BIND_ATTEMPTS", 1)
        used = ports[1]
        real_socket = socket.socket

        class OfferingAUsedPort(real_socket):
            def bind(self, address: Any) -> None:
                # The used port's listener still holds it: take the same number
                # on another loopback address, as the kernel would hand it out.
                super().bind(("127.0.0.2", used))

        monkeypatch.setattr(rtsp_guard.socket, "socket", OfferingAUsedPort)
        with pytest.raises(CannotConnectError):
            guard.url(await NetPolicy().check("rtsp://127.0.0.1:5004/a"), None, None)
    finally:
        await guard.close()


type _CameraHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _relayed(
    camera: _CameraHandler, guard: RtspGuard | None = None
) -> AsyncIterator[tuple[RtspGuard, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A scripted camera on loopback, a guard's relay to it, and a client of that relay."""
    server = await asyncio.start_server(camera, "127.0.0.1", 0)
    guard = RtspGuard() if guard is None else guard
    try:
        port = server.sockets[0].getsockname()[1]
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{port}/s")
        relay = yarl.URL(guard.url(target, None, None)).port
        reader, writer = await asyncio.open_connection("127.0.0.1", relay)
        try:
            yield guard, reader, writer
        finally:
            writer.close()
    finally:
        await guard.close()
        server.close()


async def _refused(camera: _CameraHandler, request: bytes) -> tuple[RtspGuard, bytes, list[str]]:
    """Relay one request to a scripted camera that gets refused; read until the relay closes.

    Return the guard, all the client received, and the statuses on_refused heard.
    """
    heard: list[RedirectedError] = []
    async with _relayed(camera, RtspGuard(on_refused=heard.append)) as (guard, reader, writer):
        writer.write(request)
        async with asyncio.timeout(5):
            received = await reader.read(-1)
    return guard, received, [err.placeholders["status"] for err in heard]


async def test_an_unexpected_relay_failure_is_logged_and_ends_the_session(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the filter ends only that session, closed and logged, never silently."""

    def broken(_self: ReplyFilter, _data: bytes) -> bytes:
        raise RuntimeError("filter bug")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")
            await reader.read()

    monkeypatch.setattr(ReplyFilter, "feed", broken)
    async with _relayed(answer) as (_guard, reader, writer):
        # An interleaved RTCP report first (FFmpeg sends them over TCP), then a request.
        writer.write(_frame(1, b"\x81\xc9\x00\x01" + b"\x00" * 4))
        writer.write(b"OPTIONS rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    assert "Relay to 127.0.0.1" in caplog.text
    assert "filter bug" in caplog.text


async def test_a_camera_that_is_not_there_ends_the_session(socket_enabled: None) -> None:
    """Nothing listens at the checked address: FFmpeg's connection is closed, nothing hangs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    guard = RtspGuard()
    try:
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{free}/s")
        port = yarl.URL(guard.url(target, None, None)).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(rtsp_guard.CONNECT_TIMEOUT + 1):
            assert await reader.read() == b""
        writer.close()
    finally:
        await guard.close()


@pytest.mark.parametrize(
    ("reply", "reported"),
    [
        (b"RTSP/1.0 301 Moved\r\nCSeq: 7\r\nLocation: rtsp://10.0.0.9/\r\n\r\n", ["301"]),
        # Refused too, but not a redirect: the session ends, no RedirectedError is reported.
        (b"RTSP/1.0 200 OK\r\nCSeq: 7\r\nX: \x00\r\n\r\n", []),
    ],
    ids=["redirect", "nul"],
)
async def test_a_refused_reply_answers_ffmpeg_with_502_and_only_redirects_are_reported(
    socket_enabled: None, reply: bytes, reported: list[str]
) -> None:
    """FFmpeg gets LocalCam's 502 with its own CSeq; on_refused hears redirects only."""

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    guard, answer, heard = await _refused(
        redirect, b"DESCRIBE rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 7\r\n\r\n"
    )
    what = b"Redirect" if reported else b"Reply"
    assert answer == b"RTSP/1.0 502 " + what + b" refused by LocalCam\r\nCSeq: 7\r\n\r\n"
    assert heard == reported
    assert guard.refusals == 1


_PLAY = b"PLAY rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 1\r\n\r\n"
_PLAY_OK = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nSession: 1\r\n\r\n"
_MOVED = b"RTSP/1.0 301 Moved\r\nCSeq: 2\r\nLocation: rtsp://10.0.0.9/\r\n\r\n"
_REFUSED_PLAY = b"RTSP/1.0 502 Redirect refused by LocalCam\r\nCSeq: 1\r\n\r\n"


@pytest.mark.parametrize(
    "with_redirect",
    [True, False],
    ids=["rest-of-frame-and-redirect-in-one-read", "redirect-in-a-later-read"],
)
async def test_a_refusal_after_a_split_frame_finishes_the_frame_then_answers_502(
    socket_enabled: None, with_redirect: bool
) -> None:
    """A redirect that comes while FFmpeg is mid-frame: the frame ends whole, then the 502.

    The frame's start is passed alone; the redirect comes with the frame's
    rest, or after it. Either way FFmpeg reads the whole frame, then the 502
    where a message starts (never as the frame's bytes, video data), and
    the refusal is reported as any other. A short frame in the refused read
    is counted as every other dropped one.
    """
    frame = _frame(0, b"\x80" + bytes(99))
    rest = [frame[20:] + _frame(0, b"") + _MOVED] if with_redirect else [frame[20:], _MOVED]

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for index, part in enumerate([_PLAY_OK + frame[:20], *rest]):
            if index:
                await asyncio.sleep(0.05)  # the relay reads each part alone
            writer.write(part)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    guard, received, heard = await _refused(camera, _PLAY)
    assert received == _PLAY_OK + frame + _REFUSED_PLAY
    assert heard == ["301"]
    assert guard.refusals == 1
    assert guard.short_packets_dropped == (1 if with_redirect else 0)


async def test_a_refusal_is_reported_even_when_the_client_resets_during_the_502(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's connection breaks while the 502 goes out: the refusal still counts."""
    written: dict[int, bytes] = {}
    real_write, real_drain = asyncio.StreamWriter.write, asyncio.StreamWriter.drain

    def write(self: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
        written[id(self)] = bytes(data)
        real_write(self, data)

    async def drain(self: asyncio.StreamWriter) -> None:
        if b"refused by LocalCam" in written.get(id(self), b""):
            raise ConnectionResetError  # FFmpeg reset the connection
        await real_drain(self)

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_PLAY_OK + _MOVED)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain)
    guard, _, heard = await _refused(camera, _PLAY)
    assert heard == ["301"]
    assert guard.refusals == 1


async def test_the_relay_counts_the_short_frames_it_drops(socket_enabled: None) -> None:
    """A camera's interleaved frames under 8 bytes never reach FFmpeg; diagnostics count them."""
    frame = _frame(0, b"\x80" + bytes(11))

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_PLAY_OK)
        # Two reads, each with a short frame: each is counted once.
        writer.write(_frame(0, b"") + frame)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(_frame(1, bytes(7)) + frame)
        with contextlib.suppress(ConnectionError):
            await reader.read()

    async with _relayed(camera) as (guard, reader, writer):
        writer.write(b"PLAY rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\n")
            assert await reader.readexactly(2 * len(frame)) == 2 * frame
        assert guard.short_packets_dropped == 2
        assert guard.as_dict()["short_packets_dropped"] == 2


# -- a camera set to UDP: its datagrams reach FFmpeg inside the relayed connection ------------


async def _rtsp_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str
) -> tuple[int, dict[str, str], bytes]:
    """Send one request as FFmpeg does (CRLF) and read its reply, skipping interleaved frames."""
    writer.write(request.encode())
    await writer.drain()
    async with asyncio.timeout(5):
        while True:
            first = await reader.readexactly(1)
            if first == b"$":
                header = await reader.readexactly(3)
                await reader.readexactly(int.from_bytes(header[1:3]))
                continue
            head = (first + await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            return int(lines[0].split()[1]), headers, body


async def _frames(reader: asyncio.StreamReader, seconds: float) -> list[tuple[int, bytes]]:
    """The interleaved frames that arrive within ``seconds`` (channel, payload)."""
    frames: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + seconds):
            while time.monotonic() < deadline and len(frames) < 10_000:
                first = await reader.readexactly(1)
                assert first == b"$", f"not a frame: {first!r}"
                header = await reader.readexactly(3)
                frames.append((header[0], await reader.readexactly(int.from_bytes(header[1:3]))))
    return frames


async def test_a_udp_camera_streams_to_the_relay_and_only_its_own_datagrams_pass(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set to UDP, the camera sends RTP to the relay's ports; FFmpeg gets it interleaved.

    A client asking the relay for interleaved RTP gets exactly that, while
    the camera is asked for UDP. Datagrams sent to the relay's port from
    another address (127.0.0.2: another device, or a camera still streaming
    to a port an old session had) are dropped and counted; the camera's own
    keep coming. Left to itself, FFmpeg takes UDP packets from any sender.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.2"])
    # The relay's own reports (after PLAY, then with the first media) and no more.
    monkeypatch.setattr(rtsp_guard, "RTCP_INTERVAL", 3600.0)
    cam = VirtualCamera(camera_config("u", 3, username=None, password=None, http_snapshot=False))
    await cam.start()
    guard = RtspGuard()
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    writer: asyncio.StreamWriter | None = None
    try:
        target = await NetPolicy().check(cam.rtsp_url)
        url = yarl.URL(guard.url(target, None, None, udp=True))
        reader, writer = await asyncio.open_connection(url.host, url.port)
        status, _, sdp = await _rtsp_exchange(
            reader, writer, f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        )
        assert status == 200
        assert b"m=video" in sdp
        status, headers, _ = await _rtsp_exchange(
            reader,
            writer,
            f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
        )
        assert status == 200
        assert headers["transport"].startswith("RTP/AVP/TCP;unicast;interleaved=0-1")
        assert cam.stats.udp_setups == 1  # the camera was asked for UDP
        session = headers["session"].split(";")[0]
        status, _, _ = await _rtsp_exchange(
            reader, writer, f"PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session}\r\n\r\n"
        )
        assert status == 200
        spoofer.bind(("127.0.0.2", 0))
        marker = b"\x80\x60\x00\x01" + b"\x00" * 8 + b"SPOOFED-RTP" * 10
        for _ in range(20):
            spoofer.sendto(marker, ("127.0.0.1", cam.stats.udp_client_port))
        frames = await _frames(reader, 1.5)
        rtp = [payload for channel, payload in frames if channel == 0]
        assert len(rtp) >= 5  # the camera's own RTP (10 fps), framed on channel 0
        assert all(payload[0] >> 6 == 2 for payload in rtp)  # RTP version 2
        assert not any(b"SPOOFED-RTP" in payload for _, payload in frames)
        assert guard.datagrams_refused == 20
        assert guard.as_dict()["datagrams_refused"] == 20
        # The client's RTCP report (interleaved, channel 1) goes to the camera's RTCP port.
        before = cam.stats.udp_datagrams_received
        report = b"\x81\xc9\x00\x01" + b"\x00" * 4
        writer.write(b"$\x01" + len(report).to_bytes(2) + report)
        await writer.drain()
        for _ in range(250):  # at most 5 s: the camera counts it on its own loop callback
            if cam.stats.udp_datagrams_received > before:
                break
            await asyncio.sleep(0.02)
        assert cam.stats.udp_datagrams_received > before
        # The session over, the relay's UDP ports are closed (free to bind again).
        writer.close()
        freed = False
        for _ in range(100):  # at most 5 s
            await asyncio.sleep(0.05)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", cam.stats.udp_client_port))
                except OSError:
                    continue
                freed = True
                break
        assert freed
    finally:
        spoofer.close()
        if writer is not None:
            writer.close()
        await guard.close()
        await cam.stop()


async def test_a_udp_camera_s_stills_and_ffmpeg_s_transport(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """A camera set to UDP: FFmpeg is told TCP (to the relay), the camera is asked for UDP."""
    cam, _ = two_cams
    async with _client(cam, RtspTransport.UDP) as client:
        assert client.source.ffmpeg_transport is RtspTransport.TCP
        assert client.source.relay_udp
        snapshot = await client.fetch_snapshot(timeout=8)
        assert camera_shown(snapshot.jpeg) == 0
        assert cam.stats.udp_setups >= 1
        assert client.guard.datagrams_refused == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("RTP/AVP/TCP;unicast;interleaved=0-1", (0, 1)),
        ("rtp/avp/tcp;interleaved=4", (4, 5)),
        ("RTP/AVP/TCP;unicast;interleaved=2-3,RTP/AVP;unicast;client_port=5000-5001", (2, 3)),
        ("RTP/AVP;unicast;client_port=5000-5001", None),  # UDP asked: not bridged
        ("RTP/AVP/TCP;unicast", None),
        ("RTP/AVP/TCP;interleaved=255", None),  # 256 is no channel
        ("RTP/AVP/TCP;interleaved=x-1", None),
        ("RTP/AVP/TCP;interleaved=²-3", None),
    ],
)
def test_which_setups_the_relay_bridges(value: str, expected: tuple[int, int] | None) -> None:
    """Only a request for interleaved RTP on valid channels is asked anew as UDP."""
    assert rtsp_guard._interleaved(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "RTP/AVP;unicast;client_port=5000-5001;server_port=6970-6971;ssrc=1A2B3C4D",
            ((6970, 6971), "1A2B3C4D"),
        ),
        ("RTP/AVP/UDP;unicast;server_port=6970", ((6970, 6971), None)),
        ("RTP/AVP;unicast;server_port=6970-6971;ssrc=1A2B3C4D5E", ((6970, 6971), None)),
        ("RTP/AVP;unicast;server_port=6970-6971;ssrc=zz", ((6970, 6971), None)),
        ("RTP/AVP/TCP;unicast;interleaved=0-1", None),  # the camera chose TCP
        ("RTP/AVP;unicast;client_port=5000-5001", (None, None)),  # no server port: no RTCP
        ("RTP/AVP;unicast;server_port=0-1", (None, None)),
        ("RTP/AVP;unicast;server_port=65535", (None, None)),
        ("RTP/AVP;multicast;port=5000-5001", None),
        ("RAW/RAW/UDP;unicast", None),
    ],
)
def test_which_setup_answers_the_relay_takes_as_udp(
    value: str, expected: tuple[tuple[int, int] | None, str | None] | None
) -> None:
    """The camera's ports (and SSRC) are read from a unicast UDP answer; others are not one."""
    assert rtsp_guard._udp_answer(value) == expected


async def test_without_udp_ports_the_relay_asks_the_camera_for_tcp(
    two_cams: tuple[VirtualCamera, VirtualCamera], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No UDP port pair to be had: the SETUP passes as FFmpeg sent it (interleaved), stills work."""

    def no_ports(_host: str) -> tuple[socket.socket, socket.socket]:
        raise OSError("no ports")

    monkeypatch.setattr(rtsp_guard, "_bind_udp_pair", no_ports)
    cam, _ = two_cams
    async with _client(cam, RtspTransport.UDP) as client:
        assert camera_shown((await client.fetch_snapshot(timeout=8)).jpeg) == 0
    assert cam.stats.udp_setups == 0


def test_udp_port_pairs_are_even_and_consecutive(socket_enabled: None) -> None:
    """RTP on an even port, RTCP on the next (RFC 3550), bound where the camera is reached."""
    rtp, rtcp = rtsp_guard._bind_udp_pair("127.0.0.1")
    try:
        port = rtp.getsockname()[1]
        assert port % 2 == 0
        assert rtcp.getsockname() == ("127.0.0.1", port + 1)
    finally:
        rtp.close()
        rtcp.close()


class _Transport:
    """The client connection's transport, as the bridge sees it."""

    def __init__(self) -> None:
        self.backlog = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.backlog


class _Client:
    """FFmpeg's side of the relayed connection: what the bridge writes to it."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None


@asynccontextmanager
async def _udp_listener() -> AsyncIterator[Any]:
    """A listener of a relay for a camera set to UDP (nothing connects to it here)."""
    guard = RtspGuard()
    try:
        guard.url(await NetPolicy().check("rtsp://127.0.0.1:8554/x"), None, None, udp=True)
        yield next(iter(guard._listeners.values()))
    finally:
        await guard.close()


class _Listener:
    """The listener a bridge reports foreign datagrams to."""

    def __init__(self) -> None:
        self.address = ipaddress.ip_address("127.0.0.1")
        self.guard = RtspGuard()
        self.logged: list[str] = []

    def log_once(self, kind: str, message: str, reason: str) -> None:
        self.logged.append(reason)


def _bridge() -> tuple[Any, _Client, _Listener]:
    listener, client = _Listener(), _Client()
    return rtsp_guard._UdpBridge(listener, "127.0.0.1", client), client, listener  # type: ignore[arg-type]


RTP_A, RTP_B = b"\x80\x60" + bytes(10) + b"a", b"\x80\x60" + bytes(10) + b"b"


def _playing(bridge: Any) -> None:
    """Take the bridge through a PLAY and its successful reply, written."""
    assert bridge.request("PLAY", None) is None
    assert bridge.reply(200, None) is None
    bridge.client_written(True)


async def test_the_bridge_holds_media_until_the_reply_to_play_has_passed() -> None:
    """FFmpeg drops data that comes before the PLAY reply: datagrams wait for it, in order."""
    bridge, client, _ = _bridge()
    assert bridge.request("OPTIONS", None) is None
    assert bridge.request("PLAY", None) is None
    bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
    bridge.from_camera(0, [(RTP_B, "127.0.0.1")])
    assert bridge.reply(200, None) is None  # OPTIONS' reply: no media yet
    bridge.client_written(True)
    assert client.written == []
    assert bridge.reply(200, None) is None  # PLAY's
    assert client.written == []  # the reply itself is not written yet
    bridge.client_written(False)  # written, but only part of a message so far
    assert client.written == []
    bridge.client_written(True)
    assert client.written == [_frame(0, RTP_A) + _frame(0, RTP_B)]
    bridge.from_camera(1, [(RTP_A, "127.0.0.1")])
    assert client.written[-1] == _frame(1, RTP_A)
    bridge.client_written(False)  # a reply (a keep-alive's) is half written: wait for its end
    bridge.from_camera(0, [(RTP_B, "127.0.0.1")])
    assert client.written[-1] == _frame(1, RTP_A)
    bridge.client_written(True)
    assert client.written[-1] == _frame(0, RTP_B)


async def test_the_bridge_passes_no_media_after_a_failed_play() -> None:
    """A PLAY the camera refused lets nothing through."""
    bridge, client, _ = _bridge()
    bridge.request("PLAY", None)
    bridge.reply(454, None)
    bridge.client_written(True)
    bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
    assert client.written == []
    assert bridge.reply(200, None) is None  # an answer to nothing asked opens nothing either
    bridge.client_written(True)
    bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
    assert client.written == []


async def test_the_bridge_drops_what_it_cannot_hold_or_frame() -> None:
    """Bounded: held bytes past the cap, a client not reading, one that is gone, tiny datagrams."""
    bridge, client, _ = _bridge()
    big = b"\x80" + bytes(60_000)
    for _ in range(100):  # 6 MB sent before PLAY
        bridge.from_camera(0, [(big, "127.0.0.1")])
    _playing(bridge)
    assert len(client.written) == 1
    assert len(client.written[0]) <= rtsp_guard.MAX_HELD_BYTES
    assert client.written[0] == _frame(0, big) * (len(client.written[0]) // len(_frame(0, big)))
    # A keep-alive datagram (4 bytes): FFmpeg would read a frame that short as RTSP text.
    bridge.from_camera(0, [(b"\xfe\xed\xfa\xce", "127.0.0.1")])
    assert len(client.written) == 1
    client.transport.backlog = rtsp_guard.MAX_CLIENT_BACKLOG + 1
    bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
    client.transport.backlog = 0
    client.transport.closing = True
    bridge.from_camera(0, [(RTP_B, "127.0.0.1")])
    assert len(client.written) == 1


@pytest.mark.parametrize("sender", ["127.0.0.2", "::ffff:127.0.0.2", "not an address", "::1"])
async def test_the_bridge_drops_datagrams_from_any_other_sender(sender: str) -> None:
    """Another address (IPv4-mapped spellings included) is counted and dropped, never passed."""
    bridge, client, listener = _bridge()
    _playing(bridge)
    bridge.from_camera(0, [(RTP_A, sender)])
    assert client.written == []
    assert listener.guard.datagrams_refused == 1
    assert listener.logged == [sender]
    bridge.from_camera(0, [(RTP_A, "::ffff:127.0.0.1")])  # the camera, IPv4-mapped
    assert client.written == [_frame(0, RTP_A)]
    # A burst read at once: the camera's datagrams in one write, the other sender's dropped.
    bridge.from_camera(0, [(RTP_A, "127.0.0.1"), (RTP_B, sender), (RTP_B, "127.0.0.1")])
    assert client.written[-1] == _frame(0, RTP_A) + _frame(0, RTP_B)
    assert listener.guard.datagrams_refused == 2


def _receive(sock: socket.socket) -> list[bytes]:
    """What waits on a test socket (non-blocking)."""
    got = []
    with contextlib.suppress(BlockingIOError):
        while len(got) < 100:
            got.append(sock.recv(2048))
    return got


async def test_the_bridge_s_setups(socket_enabled: None) -> None:
    """Which SETUP answers become interleaved RTP; punches and reports go to the camera's ports."""
    camera_rtp, camera_rtcp = rtsp_guard._bind_udp_pair("127.0.0.1")  # the camera's ports
    server = camera_rtp.getsockname()[1]
    bridge, client, _ = _bridge()
    try:
        # A 401 first (FFmpeg then sends the SETUP again, with credentials).
        asked = bridge.request("SETUP", "RTP/AVP/TCP;unicast;interleaved=0-1")
        assert asked is not None
        assert bridge.reply(401, "RTP/AVP;unicast;server_port=6970-6971") is None
        asked = bridge.request("SETUP", "RTP/AVP/TCP;unicast;interleaved=0-1")
        assert asked is not None
        rtp, rtcp = (int(port) for port in asked.rpartition("=")[2].split("-"))
        assert (rtp % 2, rtcp) == (0, rtp + 1)
        track = bridge._tracks[-1]
        assert track.rtp.getsockname() == ("127.0.0.1", rtp)  # where the camera is reached
        answer = f"RTP/AVP;unicast;client_port={rtp}-{rtcp};server_port={server}-{server + 1}"
        assert bridge.reply(200, f"{answer};ssrc=00C0FFEE") == (
            "RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00C0FFEE"
        )
        await asyncio.sleep(0.05)
        # FFmpeg's punches, from the relay's ports to the camera's: the path is open.
        assert _receive(camera_rtp) == [rtsp_guard._RTP_PUNCH]
        assert _receive(camera_rtcp) == [rtsp_guard._RTCP_REPORT]
        # An interleaved RTCP packet from the client goes to the camera's RTCP port only.
        bridge.from_client(1, b"\x81\xc9\x00\x01report")
        bridge.from_client(0, b"\x80\x60\x00\x01not-rtcp")
        await asyncio.sleep(0.05)
        assert _receive(camera_rtcp) == [b"\x81\xc9\x00\x01report"]
        assert _receive(camera_rtp) == []
        # PLAY opens the path again; media then brings a report every RTCP_INTERVAL.
        bridge.request("PLAY", None)
        bridge.reply(200, None)
        bridge.client_written(True)
        bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
        bridge.from_camera(0, [(RTP_B, "127.0.0.1")])
        await asyncio.sleep(0.05)
        assert _receive(camera_rtp) == [rtsp_guard._RTP_PUNCH]
        assert _receive(camera_rtcp) == [rtsp_guard._RTCP_REPORT] * 2  # PLAY's, then the first
        assert client.written == [_frame(0, RTP_A), _frame(0, RTP_B)]
        # The camera chose interleaved after all: what FFmpeg asked for, passed as it is.
        bridge.request("SETUP", "RTP/AVP/TCP;unicast;interleaved=2-3")
        assert bridge.reply(200, "RTP/AVP/TCP;unicast;interleaved=2-3") is None
        # No server_port: bridged, with nothing to send RTCP to (as FFmpeg would do).
        bridge.request("SETUP", "RTP/AVP/TCP;unicast;interleaved=4-5")
        assert bridge.reply(200, "RTP/AVP;unicast;client_port=1-2") == (
            "RTP/AVP/TCP;unicast;interleaved=4-5"
        )
        # Multicast, or another profile: refused, never a transport FFmpeg did not ask for.
        for other in ("RTP/AVP;multicast;port=5000-5001", "RAW/RAW/UDP;unicast"):
            bridge.request("SETUP", "RTP/AVP/TCP;unicast;interleaved=6-7")
            with pytest.raises(rtsp_guard._RefusedError):
                bridge.reply(200, other)
        # Asking for UDP itself, a request is passed as it is.
        assert bridge.request("SETUP", "RTP/AVP;client_port=5000-5001") is None
        # Up to MAX_UDP_TRACKS SETUPs are bridged; beyond, the camera is asked for TCP.
        while len(bridge._tracks) < rtsp_guard.MAX_UDP_TRACKS - 1:
            assert bridge.request("SETUP", "RTP/AVP/TCP;interleaved=8-9") is not None
        assert bridge.request("SETUP", "RTP/AVP/TCP;interleaved=8-9") is not None  # the last
        assert bridge.request("SETUP", "RTP/AVP/TCP;interleaved=8-9") is None
        sockets = [sock for each in bridge._tracks for sock in (each.rtp, each.rtcp)]
        numbers = [sock.fileno() for sock in sockets]
        bridge.close()
        # Closed, and no longer watched by the event loop (a closed socket left
        # registered would confuse the next socket given its number).
        assert all(sock.fileno() == -1 for sock in sockets)
        assert not any(asyncio.get_running_loop().remove_reader(fd) for fd in numbers)
    finally:
        bridge.close()
        camera_rtp.close()
        camera_rtcp.close()


def test_udp_ports_are_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port an earlier bridge had is skipped while remembered, odd ports too (RTP is even)."""
    offered = iter([40000, 40003, 40002, 40004])  # what the kernel hands out for port 0

    class Sock:
        """A UDP socket whose port-0 binds get the next offered port."""

        def __init__(self, *_args: Any) -> None:
            self.port = 0

        def bind(self, address: tuple[str, int]) -> None:
            self.port = address[1] or next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def setsockopt(self, *_args: Any) -> None:
            return None

        def setblocking(self, _flag: bool) -> None:
            return None

        def close(self) -> None:
            return None

    monkeypatch.setattr(rtsp_guard, "_USED_UDP_PORTS", OrderedDict({40000: None, 40001: None}))
    monkeypatch.setattr(rtsp_guard.socket, "socket", Sock)
    rtp, rtcp = rtsp_guard._bind_udp_pair("127.0.0.1")
    # 40000 was used before, 40003 is odd: the pair is 40002-40003.
    assert (rtp.getsockname()[1], rtcp.getsockname()[1]) == (40002, 40003)
    assert list(rtsp_guard._USED_UDP_PORTS) == [40000, 40001, 40002, 40003]


@pytest.mark.parametrize("length", [0, 4, 7])
def test_an_interleaved_frame_ffmpeg_reads_two_ways_is_dropped_whole(length: int) -> None:
    """Under 8 bytes FFmpeg skips the payload awaiting a reply, but reads it as text streaming.

    No RTP or RTCP packet is that short (a keep-alive is): the relay drops
    it, header and payload, even split across reads, and passes what follows.
    """
    check = ReplyFilter(ADDRESS)
    frame = b"$\x00\x00\x08" + bytes(8)
    short = b"$\x00" + length.to_bytes(2) + b"RTSP/1.0 302 Found\r\n"[:length]
    assert check.feed(frame + short[:3]) == frame
    assert check.feed(short[3:5]) == b""
    assert check.feed(short[5:] + frame) == frame
    assert check.frames_dropped == 1
    assert check.between_messages


def test_the_filter_says_whether_it_stopped_between_messages() -> None:
    """A body or frame passed only in part leaves FFmpeg in the middle of a message."""
    check = ReplyFilter(ADDRESS)
    check.feed(b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nContent-Length: 10\r\n\r\nhello")
    assert not check.between_messages
    check.feed(b"world")
    assert check.between_messages
    check.feed(b"$\x00\x00\x0c" + bytes(5))
    assert not check.between_messages
    check.feed(bytes(7) + b"RTSP/1.0 200")  # a head in part is held back, not passed
    assert check.between_messages


async def test_the_relay_writes_datagrams_only_between_the_camera_s_messages(
    socket_enabled: None,
) -> None:
    """A reply arriving in two parts: a datagram in between waits until the reply is whole."""
    async with _udp_listener() as listener:
        client = _Client()
        bridge = rtsp_guard._UdpBridge(listener, "127.0.0.1", client)  # type: ignore[arg-type]
        camera = asyncio.StreamReader()
        relaying: asyncio.Task[None] = asyncio.create_task(
            listener._filter(camera, client, bytearray(), bridge)  # type: ignore[arg-type]
        )
        try:
            await _two_part_reply(bridge, camera, client)
        finally:
            relaying.cancel()  # ends at EOF; cancelled only if an assertion failed first
            await asyncio.gather(relaying, return_exceptions=True)
            bridge.close()


async def _two_part_reply(bridge: Any, camera: asyncio.StreamReader, client: _Client) -> None:
    """PLAY, media, then a keep-alive's reply in two parts with a datagram in between."""
    bridge.request("PLAY", None)
    camera.feed_data(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: 1\r\n\r\n")
    await asyncio.sleep(0.01)
    bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
    assert client.written[-1] == _frame(0, RTP_A)
    bridge.request("GET_PARAMETER", None)  # a keep-alive; its reply comes in two parts
    camera.feed_data(b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nContent-Length: 10\r\n\r\nhello")
    await asyncio.sleep(0.01)
    bridge.from_camera(0, [(RTP_B, "127.0.0.1")])
    assert client.written[-1].endswith(b"hello")
    camera.feed_data(b"world")
    await asyncio.sleep(0.01)
    assert client.written[-2:] == [b"world", _frame(0, RTP_B)]
    camera.feed_eof()


async def test_ffmpeg_s_answers_to_the_camera_are_no_requests(socket_enabled: None) -> None:
    """FFmpeg answers a camera's own OPTIONS; that answer must not shift reply matching.

    Replies are matched to FFmpeg's requests in order: an answer counted as
    a request would give the SETUP's reply to the wrong request, and PLAY's
    reply would never open the media.
    """

    async with _udp_listener() as listener:
        to_camera, to_ffmpeg = _Client(), _Client()
        bridge = rtsp_guard._UdpBridge(listener, "127.0.0.1", to_ffmpeg)  # type: ignore[arg-type]
        ffmpeg = asyncio.StreamReader()
        ffmpeg.feed_data(
            b"SETUP rtsp://127.0.0.1:8554/x/trackID=0 RTSP/1.0\r\nCSeq: 2\r\n"
            b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
            b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n\r\n"  # FFmpeg answering the camera's OPTIONS
            b"$\x01\x00\x08"
            + bytes(8)  # and an interleaved RTCP packet of its own
            + b"PLAY rtsp://127.0.0.1:8554/x RTSP/1.0\r\nCSeq: 3\r\nSession: 1\r\n\r\n"
        )
        ffmpeg.feed_eof()
        await listener._copy_requests(ffmpeg, to_camera, bytearray(), bridge, to_ffmpeg)  # type: ignore[arg-type]
        sent = b"".join(to_camera.written)
        assert b"Transport: RTP/AVP;unicast;client_port=" in sent
        assert b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n\r\n" in sent  # passed on, unchanged
        answer = "RTP/AVP;unicast;server_port=6970-6971"
        assert bridge.reply(200, answer) == "RTP/AVP/TCP;unicast;interleaved=0-1"
        assert bridge.reply(200, None) is None  # PLAY's reply
        bridge.client_written(True)
        bridge.from_camera(0, [(RTP_A, "127.0.0.1")])
        assert to_ffmpeg.written == [_frame(0, RTP_A)]
        bridge.close()


@pytest.mark.parametrize(("size", "passed"), [(7, False), (8, True)])
async def test_datagrams_under_8_bytes_are_not_framed(size: int, passed: bool) -> None:
    """FFmpeg would read a frame under 8 bytes as RTSP text: such a datagram is dropped."""
    bridge, client, listener = _bridge()
    _playing(bridge)
    bridge.from_camera(0, [(bytes(size), "127.0.0.1")])
    assert client.written == ([_frame(0, bytes(size))] if passed else [])
    assert listener.guard.datagrams_refused == 0  # the camera's own: not counted as foreign
    assert listener.guard.short_packets_dropped == (0 if passed else 1)


async def test_a_relay_session_cancelled_during_its_link_check_closes_the_camera_connection(
    socket_enabled: None,
) -> None:
    """Unload (or retire) while a session's link check runs.

    The relay's connection to the camera closes with the session, not when
    the camera times it out (a slot held on a camera allowing 2-4 sessions).
    """
    entered = asyncio.Event()
    camera_eof = asyncio.Event()

    async def link_check(_address: object, _port: int) -> None:
        entered.set()
        await asyncio.sleep(30)  # the executor hop to /proc/net/arp, slow under load

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()
        camera_eof.set()
        writer.close()

    server = await asyncio.start_server(camera, "127.0.0.1", 0)
    guard = RtspGuard(link_check=link_check)
    try:
        port = server.sockets[0].getsockname()[1]
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{port}/s")
        relay = yarl.URL(guard.url(target, None, None)).port
        _reader, writer = await asyncio.open_connection("127.0.0.1", relay)
        async with asyncio.timeout(5):
            await entered.wait()
        await guard.close()
        writer.close()
        async with asyncio.timeout(3):
            await camera_eof.wait()
    finally:
        server.close()


async def test_a_session_winding_down_as_the_relay_closes_closes_the_camera_connection(
    socket_enabled: None,
) -> None:
    """FFmpeg hangs up (HA stopped its stream), then the relay closes (the unload).

    Whatever the loop turns between the two, the connection to the camera
    ends with the session. The close's cancel could land on the session
    while it awaited its two directions, skipping the abort: the connection
    stayed open with nobody behind it (a slot held on a camera allowing 2-4
    sessions) until the garbage collector happened on it, or the camera.
    """
    ended: list[asyncio.Event] = []

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        eof = asyncio.Event()
        ended.append(eof)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n")
        eof.set()
        writer.close()

    server = await asyncio.start_server(camera, "127.0.0.1", 0)
    gc.disable()  # what is checked is what the relay closes, not what a collection does
    try:
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/s")
        left: list[int] = []
        for turns in range(12):
            guard = RtspGuard()
            port = yarl.URL(guard.url(target, None, None)).port
            assert port is not None
            _reader, writer, head = await _rtsp_options(port)
            assert head.startswith(b"RTSP/1.0 200")
            writer.close()
            for _ in range(turns):
                await asyncio.sleep(0)
            await guard.close()
            try:
                async with asyncio.timeout(2):
                    await ended[-1].wait()
            except TimeoutError:
                left.append(turns)
        assert not left, f"camera connections left open when the relay closed {left} turns after"
    finally:
        gc.enable()
        server.close()


@pytest.mark.parametrize("auth", ["digest", "basic"])
async def test_a_camera_with_a_blank_password_is_relayed_with_its_username(
    socket_enabled: None, auth: str
) -> None:
    """``admin`` and a blank password (stored as None), common on cheap cameras.

    The health check's DESCRIBE authenticates with an empty password; FFmpeg,
    given the relay URL, must too (it answers no challenge for a user part
    without a colon: 401s on the stream and stills).
    """

    cam = VirtualCamera(
        camera_config("t", 5, username="admin", password=None, auth=auth, http_snapshot=False)
    )
    await cam.start()
    guard = RtspGuard()
    try:
        target = await NetPolicy().check(cam.rtsp_url)
        await rtsp.describe(target, username="admin", password=None, timeout=3)  # passes
        url = guard.url(target, "admin", None)
        frame = await async_grab_keyframe(url, timeout=5, encode=False)
        assert frame.info.width == 320
    finally:
        await guard.close()
        await cam.stop()


async def test_the_relay_still_accepts_after_a_transient_accept_failure(
    socket_enabled: None,
) -> None:
    """Out of file descriptors for a moment (EMFILE): accept() fails, then works again.

    asyncio's own servers pause and retry; the relay's accept loop died for
    good, and every later FFmpeg connection waited unserved until a reload.
    """

    server = await asyncio.start_server(_answer_ok, "127.0.0.1", 0)
    guard = RtspGuard()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        port = server.sockets[0].getsockname()[1]
        target = await NetPolicy().check(f"rtsp://127.0.0.1:{port}/s")
        relay = yarl.URL(guard.url(target, None, None)).port
        await asyncio.sleep(0.05)  # the accept loop is waiting
        first = socket.socket()
        first.setblocking(False)
        # Every descriptor in use for a moment: the accept of ``first`` fails.
        hogs: list[socket.socket] = []
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))
        try:
            with contextlib.suppress(OSError):
                while True:
                    hogs.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            first.connect_ex(("127.0.0.1", relay))
            for _ in range(20):
                await asyncio.sleep(0.01)
        finally:
            for hog in hogs:
                hog.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        first.close()
        await asyncio.sleep(1.5)  # the pressure is over
        (listener,) = guard._listeners.values()
        assert not listener.serving.done(), listener.serving.exception()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay)
        writer.write(b"OPTIONS rtsp://127.0.0.1/s RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"RTSP/1.0 200")
        writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await guard.close()
        server.close()


async def _setup_through_relay(transport: str) -> tuple[int, dict[str, str], list[bytes]]:
    """One SETUP with ``transport`` through the relay to a camera that takes any.

    Returns the relay's status and headers, and the request lines the camera got.
    """
    seen: list[bytes] = []

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer every request 200, echoing its CSeq and Transport."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                seen.append(lines[0])
                cseq = next((ln for ln in lines if ln.lower().startswith(b"cseq:")), b"CSeq: 0")
                echoed = next((ln for ln in lines if ln.lower().startswith(b"transport:")), None)
                writer.write(
                    b"RTSP/1.0 200 OK\r\n"
                    + cseq
                    + b"\r\n"
                    + (echoed + b"\r\nSession: 1\r\n" if echoed else b"")
                    + b"\r\n"
                )
                await writer.drain()
        except asyncio.IncompleteReadError, ConnectionError:
            pass
        finally:
            writer.close()

    async with _relayed(camera) as (_guard, reader, writer):
        status, headers, _ = await _rtsp_exchange(
            reader,
            writer,
            "SETUP rtsp://127.0.0.1/s/track1 RTSP/1.0\r\n"
            f"CSeq: 3\r\nTransport: {transport}\r\n\r\n",
        )
    return status, headers, seen


@pytest.mark.parametrize(
    "transport",
    [
        # FFmpeg's own TCP SETUP for an SDP whose media protocol is "udp"
        # (MPEG-TS over RTSP, rt->transport == RTSP_TRANSPORT_RAW):
        # trans_pref "RAW/RAW" + "/TCP;unicast;interleaved=0-1".
        "RAW/RAW/TCP;unicast;interleaved=0-1",
        # Secure RTP profile, still interleaved in the RTSP connection.
        "RTP/SAVP/TCP;unicast;interleaved=0-1",
    ],
)
async def test_an_interleaved_setup_of_another_profile_reaches_the_camera(
    socket_enabled: None, transport: str
) -> None:
    """Media interleaved in the relayed connection is what the relay wants: no 461.

    FFmpeg retries only the first SETUP's 461, with the next lower transport:
    for a RAW (MPEG-TS) stream its TCP SETUP answered 461 leaves it only
    multicast, then EPROTONOSUPPORT: the camera never plays, through HA's
    stream (which always asks TCP) or any other consumer.
    """
    status, headers, seen = await _setup_through_relay(transport)
    assert status == 200
    assert headers["cseq"] == "3"
    assert any(line.startswith(b"SETUP ") for line in seen)


@pytest.mark.parametrize(
    "transport",
    [
        "RTP/AVP;unicast;client_port=5000-5001",
        "RTP/AVP/UDP;unicast;client_port=5000-5001",
        "RAW/RAW/UDP;unicast;client_port=5000",
        "RTP/AVP/UDP;multicast",
        "RTP/AVP/TCP;unicast;interleaved=0-1,RTP/AVP;unicast;client_port=5000-5001",
    ],
)
async def test_a_setup_for_media_outside_the_connection_is_still_461(
    socket_enabled: None, transport: str
) -> None:
    """What the fix must keep: anything that could send media over UDP is answered 461."""
    status, headers, seen = await _setup_through_relay(transport)
    assert status == 461
    assert headers["cseq"] == "3"
    assert not any(line.startswith(b"SETUP ") for line in seen)


# -- the relay's own 461 and FFmpeg's reading of replies ---------------------------------

_TINY_SDP = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
_DESCRIBED = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: "
    + str(len(_TINY_SDP)).encode()
    + b"\r\n\r\n"
    + _TINY_SDP
)
_RELAY_461 = b"RTSP/1.0 461 Unsupported Transport\r\nCSeq: 3\r\n\r\n"


def _as_ffmpeg_reads(data: bytes) -> list[tuple[int, bytes | None]]:
    """The replies FFmpeg's ff_rtsp_read_reply reads from ``data``: status and Transport."""
    replies = []
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] == b"\r":  # FFmpeg drops CRs
            pos += 1
            continue
        if data[pos : pos + 1] == b"$":  # a frame: skipped by its declared length
            if len(data) - pos < 4:
                break
            pos += 4 + int.from_bytes(data[pos + 2 : pos + 4])
            continue
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        lines = data[pos:end].split(b"\r\n")
        length, transport = 0, None
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line[15:])
            if line.lower().startswith(b"transport:"):
                transport = line[10:].strip()
        if lines[0].startswith(b"RTSP/"):  # a reply (else a request of the camera's)
            replies.append((int(lines[0].split()[1]), transport))
        pos = end + 4 + length
    return replies


async def _ffmpeg_opens_over_udp(
    camera: _CameraHandler, after_setup: Callable[[], None] | None = None
) -> list[tuple[int, bytes | None]]:
    """FFmpeg's opening through the relay: DESCRIBE, then its default SETUP, over UDP.

    ``after_setup`` runs once the relay has answered the SETUP. Return the
    replies FFmpeg reads from everything the relay sent, until it is quiet.
    """
    async with _relayed(camera) as (_guard, reader, writer):
        url = f"rtsp://127.0.0.1:{writer.get_extra_info('peername')[1]}/s"
        writer.write(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 2\r\n\r\n".encode())
        async with asyncio.timeout(5):
            received = bytearray(await reader.readuntil(b"\r\n\r\n"))
            received += await reader.readexactly(len(_TINY_SDP))
        writer.write(
            f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\n"
            "Transport: RTP/AVP;unicast;client_port=5000-5001\r\n\r\n".encode()
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if after_setup is not None:
            await asyncio.sleep(0.3)  # the relay has answered the SETUP by now
            after_setup()
        for _ in range(20):  # until the relay is quiet or closes (bounded)
            try:
                async with asyncio.timeout(0.3):
                    chunk = await reader.read(65536)
            except TimeoutError, ConnectionError:
                break
            if not chunk:
                break
            received += chunk
    return _as_ffmpeg_reads(bytes(received))


@pytest.mark.parametrize("inside", ["frame", "body"])
async def test_the_relay_s_own_461_never_lands_inside_a_camera_message(
    socket_enabled: None, inside: str
) -> None:
    """The relay's 461 is written where a message of the camera's ends, never inside one.

    Written at once, it landed inside a frame (or a request body) the camera
    was half-way through: FFmpeg, skipping that frame by its declared length,
    stopped 47 bytes short, and read the frame's last 47 bytes, passed on as
    payload, as the reply to its SETUP. The camera could go on after the
    frame with a "Transport: ...;source=<any host>" line, which the relay
    read as a new message's first line: FFmpeg took RTP over UDP from any
    sender, the very thing the 461 is there to prevent (seen with PyAV).
    """
    go = asyncio.Event()
    # What FFmpeg would read in place of the 461 (exactly as long), and after it.
    forged = b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: "
    forged += b"1" * (len(_RELAY_461) - len(forged) - 2) + b"\r\n"
    after = b"Transport: RTP/AVP;unicast;server_port=5000-5001;source=6.6.6.6\r\n\r\n"
    payload = b"\x80" * 400 + forged
    if inside == "frame":
        opening = b"$\x00" + len(payload).to_bytes(2)
    else:  # a request of the camera's: FFmpeg answers it, then reads on
        opening = b"GET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: %d\r\n\r\n" % len(
            payload
        )
    done = asyncio.Event()

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")  # DESCRIBE
            writer.write(_DESCRIBED + opening + payload[:200])
            await writer.drain()
            await go.wait()  # the rest of the frame once the SETUP is answered
            writer.write(payload[200:] + after)
            await writer.drain()
            await done.wait()
        finally:
            writer.close()

    try:
        replies = await _ffmpeg_opens_over_udp(camera, go.set)
    finally:
        done.set()
    assert replies == [(200, None), (461, None)]


async def test_a_reply_to_no_request_never_answers_ffmpeg_s_next_one(
    socket_enabled: None,
) -> None:
    """A camera's reply that answers no request ends the session; it answers nothing of FFmpeg's.

    FFmpeg takes the next reply for the answer to the request it waits on (a
    wrong CSeq is only a warning). A 200 offering UDP, sent unasked right
    after the DESCRIBE reply, answered FFmpeg's UDP SETUP, which the relay
    had kept from the camera: FFmpeg then streamed over UDP, taking datagrams
    from any sender on the LAN (seen with PyAV).
    """
    unasked = (
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: 1\r\n"
        b"Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001\r\n\r\n"
    )
    done = asyncio.Event()

    async def camera(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")  # DESCRIBE
            writer.write(_DESCRIBED + unasked)
            await writer.drain()
            await done.wait()
        finally:
            writer.close()

    try:
        replies = await _ffmpeg_opens_over_udp(camera)
    finally:
        done.set()
    assert len(replies) >= 2
    assert replies[1][0] != 200
    assert replies[1][1] is None


@pytest.mark.parametrize(
    "param", ["SOURCE=203.0.113.9", "Source=203.0.113.9", " source=203.0.113.9"]
)
def test_a_source_parameter_in_any_case_is_replaced_by_the_checked_address(param: str) -> None:
    """The camera's own source (any case, any leading space) never reaches FFmpeg."""
    value = f"RTP/AVP;unicast;client_port=5000-5001;{param};server_port=6000-6001"
    rewritten = _rewrite_transport(value, "192.168.1.20")
    assert "203.0.113.9" not in rewritten
    assert rewritten.lower().count("source=") == 1
    assert rewritten.endswith(";source=192.168.1.20")


async def _listener(guard: RtspGuard) -> Any:
    guard.url(await NetPolicy().check("rtsp://127.0.0.1:8554/x"), None, None)
    return next(iter(guard._listeners.values()))


async def test_ffmpeg_s_answer_to_the_camera_lets_no_unasked_reply_through(
    socket_enabled: None,
) -> None:
    """FFmpeg answering the camera's own request is no request: it opens no reply slot.

    Counted as one, the camera could then send a reply to no request (a 200
    offering UDP) that FFmpeg takes as the answer to its next request.
    """
    guard = RtspGuard()
    try:
        listener = await _listener(guard)
        check = ReplyFilter("127.0.0.1", outstanding=0)
        ffmpeg = asyncio.StreamReader()
        ffmpeg.feed_data(b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n\r\n")  # answering the camera
        ffmpeg.feed_eof()
        to_camera, to_ffmpeg = _Client(), _Client()
        await listener._copy_requests(ffmpeg, to_camera, bytearray(), None, to_ffmpeg, check)
        assert b"".join(to_camera.written) == b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n\r\n"
        with pytest.raises(rtsp_guard._RefusedError):
            check.feed(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n\r\n")
    finally:
        await guard.close()


async def test_a_request_body_beyond_the_cap_ends_the_session_unrelayed(
    socket_enabled: None,
) -> None:
    """A client's request announcing a body beyond MAX_BODY is never passed to the camera."""
    guard = RtspGuard()
    try:
        listener = await _listener(guard)
        size = rtsp_guard.MAX_BODY + 1
        ffmpeg = asyncio.StreamReader()
        ffmpeg.feed_data(
            b"ANNOUNCE rtsp://127.0.0.1:8554/x RTSP/1.0\r\nCSeq: 2\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + b"x" * size
        )
        ffmpeg.feed_eof()
        to_camera, to_ffmpeg = _Client(), _Client()
        await listener._copy_requests(ffmpeg, to_camera, bytearray(), None, to_ffmpeg)
        assert to_camera.written == []
    finally:
        await guard.close()


def test_the_relay_s_session_bounds_stay_small() -> None:
    """The bounds that keep a camera's sessions for HA's stream (pinned values).

    The tests of these bounds shrink or count with the constants; these keep
    the values themselves: a silent client holds a place at most ~10 s, and a
    camera (most allow 4-10 RTSP sessions) gets at most 8 through one relay.
    """
    assert 0 < rtsp_guard.FIRST_REQUEST_WAIT <= 15
    assert 4 <= rtsp_guard.MAX_CONNECTIONS <= 8
