"""RTSP I/O in core.rtsp: the DESCRIBE health check and the keyframe grab.

Against the virtual camera where it can play the part, and against tiny
scripted RTSP servers on 127.0.0.1 for replies a well-behaved camera never
sends (no video in the SDP, garbage, endless headers).
"""

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
import hashlib
import io
from pathlib import Path
import re
import ssl
import struct
import threading
import time
from typing import Any

import numpy as np
from PIL import Image
import pytest

from custom_components.localcam.core import rtsp
from custom_components.localcam.core.errors import (
    CameraTimeoutError,
    CannotConnectError,
    CertificateError,
    InvalidAuthError,
    InvalidImageError,
    NoVideoError,
    RedirectedError,
)
from custom_components.localcam.core.netpolicy import NetPolicy, Target
from custom_components.localcam.core.rtsp import (
    RtspAuthMemory,
    WarmGrabber,
    _decode,
    async_grab_keyframe,
    describe,
)
from tests.conftest import camera_config
from tests.core.test_http import TlsFiles, tls_files  # noqa: F401 - shared fixture
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for, nearest_camera
from virtualcam.media import packetize

USER, PASSWORD = "cam", "pw-rtsp-9"

type Responder = Callable[[str, dict[str, str]], bytes | None]


async def _target(url: str) -> Target:
    return await NetPolicy().check(url)


async def _session_url(vcam: VirtualCamera) -> str:
    """The URL a WarmGrabber is given: the camera's pinned URL with credentials."""
    return (await _target(vcam.rtsp_url)).pinned_url(USER, PASSWORD)


@pytest.fixture(params=["digest", "basic"])
async def vcam(
    request: pytest.FixtureRequest, socket_enabled: None
) -> AsyncIterator[VirtualCamera]:
    """A virtual camera with Digest or Basic auth."""
    cam = VirtualCamera(
        camera_config(
            "t", 5, username=USER, password=PASSWORD, auth=request.param, http_snapshot=False
        )
    )
    await cam.start()
    yield cam
    await cam.stop()


@pytest.fixture
async def scripted(
    socket_enabled: None,
) -> AsyncIterator[Callable[[Responder], asyncio.Future[str]]]:
    """Start an RTSP server that answers each request with ``responder``'s bytes."""
    servers: list[asyncio.Server] = []

    async def start(responder: Responder) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for _ in range(5):
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode().split("\r\n")
                    headers = {
                        k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines[1:] if line)
                    }
                    reply = responder(lines[0], headers)
                    if reply is None:
                        await asyncio.sleep(30)
                        return
                    writer.write(reply)
                    await writer.drain()
            except asyncio.IncompleteReadError, ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"rtsp://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream"

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


def _reply(status: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"RTSP/1.0 {status}\r\nCSeq: 1\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def test_describe_authenticates(vcam: VirtualCamera) -> None:
    """DESCRIBE passes with the right credentials, Digest or Basic."""
    await describe(await _target(vcam.rtsp_url), username=USER, password=PASSWORD)
    assert vcam.stats.describe_requests >= 1


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), (None, None)])
async def test_describe_rejects_bad_credentials(
    vcam: VirtualCamera, user: str | None, password: str | None
) -> None:
    """Wrong or missing credentials raise InvalidAuthError (reauth material)."""
    with pytest.raises(InvalidAuthError):
        await describe(await _target(vcam.rtsp_url), username=user, password=password)


async def test_describe_faults(vcam: VirtualCamera) -> None:
    """A refusing camera cannot be connected; a hanging one times out."""
    target = await _target(vcam.rtsp_url)
    vcam.fault = Fault.REFUSE
    with pytest.raises(CannotConnectError):
        await describe(target, username=USER, password=PASSWORD, timeout=2)
    vcam.fault = Fault.HANG
    with pytest.raises(CameraTimeoutError):
        await describe(target, username=USER, password=PASSWORD, timeout=0.5)


def _requests(cam: VirtualCamera) -> tuple[int, int]:
    """DESCRIBEs the camera got, and how many of them it answered 401."""
    return cam.stats.describe_requests, cam.stats.unauthorized_responses


async def test_health_checks_answer_the_remembered_challenge(vcam: VirtualCamera) -> None:
    """After the first challenge, each health check is one DESCRIBE (Digest or Basic)."""
    target = await _target(vcam.rtsp_url)
    memory = RtspAuthMemory()
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert _requests(vcam) == (2, 1)
    for _ in range(3):
        await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert _requests(vcam) == (5, 1)


async def test_a_refused_remembered_answer_is_not_wrong_credentials(vcam: VirtualCamera) -> None:
    """A nonce the camera no longer honours costs the one request it saved, never a reauth."""
    target = await _target(vcam.rtsp_url)
    memory = RtspAuthMemory(
        origin=(str(target.address), target.port),
        challenges=['Digest realm="LocalCam virtual camera", nonce="long-expired"'],
    )
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert _requests(vcam) == (2, 1)
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert _requests(vcam) == (3, 1)


async def test_wrong_password_with_a_remembered_challenge(vcam: VirtualCamera) -> None:
    """A changed password is still InvalidAuthError, in two requests; the challenge is dropped."""
    target = await _target(vcam.rtsp_url)
    memory = RtspAuthMemory()
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    with pytest.raises(InvalidAuthError):
        await describe(target, username=USER, password="changed", auth_memory=memory)
    assert _requests(vcam) == (4, 3)
    assert memory.origin is None


async def test_a_remembered_challenge_stays_with_its_address(vcam: VirtualCamera) -> None:
    """A challenge learnt at another address or port is not answered here."""
    target = await _target(vcam.rtsp_url)
    memory = RtspAuthMemory(origin=(str(target.address), target.port + 1), challenges=["Basic"])
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert _requests(vcam) == (2, 1)
    assert memory.origin == (str(target.address), target.port)


def _qop_auth_fields(auth: str, realm: str, nonce: str) -> dict[str, str] | None:
    """A camera's check of a qop=auth Digest answer: its fields if right, else None."""
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', auth))
    ha1 = hashlib.md5(f"{USER}:{realm}:{PASSWORD}".encode()).hexdigest()
    ha2 = hashlib.md5(f"DESCRIBE:{fields['uri']}".encode()).hexdigest()
    expected = hashlib.md5(
        f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}".encode()
    ).hexdigest()
    return fields if fields["response"] == expected else None


async def test_a_remembered_digest_counts_its_uses(
    scripted: Callable[[Responder], asyncio.Future[str]],
) -> None:
    """Answering a qop=auth nonce again sends the next nonce count (RFC 7616)."""
    realm, nonce = "cam", "n-1"
    counts: list[str] = []

    def responder(_request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization")
        challenge = f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}", qop="auth"\r\n'
        if auth is None:
            return _reply("401 Unauthorized", extra=challenge)
        fields = _qop_auth_fields(auth, realm, nonce)
        if fields is None or fields["nc"] in counts:
            return _reply("401 Unauthorized", extra=challenge)
        counts.append(fields["nc"])
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    memory = RtspAuthMemory()
    for _ in range(3):
        await describe(target, username=USER, password=PASSWORD, auth_memory=memory)
    assert counts == ["00000001", "00000002", "00000003"]


async def test_digest_with_qop_and_opaque(
    scripted: Callable[[Responder], asyncio.Future[str]],
) -> None:
    """A camera asking for qop=auth with an opaque gets an RFC 2617 answer."""
    realm, nonce, opaque = "cam", "abc123", "xyz"
    seen: list[str] = []

    def responder(request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization")
        if auth is None:
            return _reply(
                "401 Unauthorized",
                extra=f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}", '
                f'qop="auth", opaque="{opaque}"\r\n',
            )
        seen.append(auth)
        fields = _qop_auth_fields(auth, realm, nonce)
        if fields is None or fields["opaque"] != opaque:
            return _reply("401 Unauthorized")
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    url = await scripted(responder)
    await describe(await _target(url), username=USER, password=PASSWORD)
    assert seen
    assert PASSWORD not in seen[0]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Digest realm="Cam, Inc", nonce="n"',
            [("digest", {"realm": "Cam, Inc", "nonce": "n"})],
        ),
        (r'Digest realm="a\"b\\", nonce="n"', [("digest", {"realm": 'a"b\\', "nonce": "n"})]),
        (
            'Digest realm="r", nonce="n", qop="auth-int, auth"',
            [("digest", {"realm": "r", "nonce": "n", "qop": "auth-int, auth"})],
        ),
        (
            'Basic realm="x", Digest realm="r", nonce="n"',
            [("basic", {"realm": "x"}), ("digest", {"realm": "r", "nonce": "n"})],
        ),
        (
            "Negotiate abc/def==, digest REALM = r, nonce=ab/c+=",
            [("negotiate", {}), ("digest", {"realm": "r", "nonce": "ab/c+="})],
        ),
        ('Basic realm="x", realm="y", Bearer', [("basic", {"realm": "x"}), ("bearer", {})]),
        ('Digest nonce="n", realm="never closed', [("digest", {"nonce": "n"})]),
        ('/junk, Basic realm="x", @', [("basic", {"realm": "x"})]),
    ],
    ids=[
        "comma",
        "escapes",
        "qop-list",
        "two-challenges",
        "token68-bare",
        "first-wins",
        "unclosed",
        "junk-skipped",
    ],
)
def test_parse_challenge_header(header: str, expected: list[rtsp.Challenge]) -> None:
    """Quoted values keep commas and escaped quotes; one header may hold several challenges."""
    assert rtsp._parse_challenges([header]) == expected


def test_the_challenge_parser_is_bounded() -> None:
    """An over-long value is skipped whole; only the first challenges and parameters count."""
    cap = rtsp._MAX_CHALLENGE_CHARS
    fits = 'Digest realm="r", nonce="' + "n" * (cap - 26) + '"'
    assert len(fits) == cap
    assert rtsp._parse_challenges([fits + " ", 'Basic realm="x"']) == [("basic", {"realm": "x"})]
    assert rtsp._parse_challenges([fits])[0][1]["nonce"] == "n" * (cap - 26)
    many = ", ".join(f"S{i}" for i in range(rtsp._MAX_CHALLENGES + 5))
    assert len(rtsp._parse_challenges([many, many])) == rtsp._MAX_CHALLENGES
    params = ", ".join(f"p{i}=v" for i in range(rtsp._MAX_AUTH_PARAMS + 5))
    assert len(rtsp._parse_challenges([f"Digest {params}"])[0][1]) == rtsp._MAX_AUTH_PARAMS


@pytest.mark.parametrize(
    "challenges",
    [
        ['Basic realm="x", Digest realm="r", nonce="n"'],
        ['Basic realm="x"', 'Digest realm="r", nonce="n"'],
    ],
    ids=["one-header", "two-headers"],
)
def test_digest_is_chosen_over_basic(challenges: list[str]) -> None:
    """Digest offered anywhere beside Basic is what gets answered."""
    answer = rtsp._authorization(challenges, "DESCRIBE", "rtsp://cam/s", USER, PASSWORD)
    assert answer is not None
    assert answer.startswith('Digest username="cam", realm="r", nonce="n"')


def test_an_unanswerable_digest_is_not_downgraded_to_basic() -> None:
    """A Digest challenge without a nonce beside Basic: no answer, never the cleartext password."""
    challenges = ['Basic realm="x", Digest realm="r"']
    assert rtsp._authorization(challenges, "DESCRIBE", "rtsp://cam/s", USER, PASSWORD) is None


@pytest.mark.parametrize("realm", ["Cam, Inc", 'Cam "HQ"'], ids=["comma", "quotes"])
async def test_quoted_realm_and_qop_list_are_answered(
    scripted: Callable[[Responder], asyncio.Future[str]], realm: str
) -> None:
    """A realm with a comma or escaped quotes, and qop="auth-int, auth": a qop=auth answer."""
    nonce = "n-7"
    quoted = realm.replace('"', '\\"')
    seen: list[str] = []

    def responder(_request_line: str, headers: dict[str, str]) -> bytes:
        challenge = (
            f'WWW-Authenticate: Digest realm="{quoted}", nonce="{nonce}", qop="auth-int, auth"\r\n'
        )
        auth = headers.get("authorization")
        if auth is None:
            return _reply("401 Unauthorized", extra=challenge)
        seen.append(auth)
        if "qop=auth," not in auth or f'realm="{quoted}"' not in auth:
            return _reply("401 Unauthorized", extra=challenge)
        if _qop_auth_fields(auth, realm, nonce) is None:
            return _reply("401 Unauthorized", extra=challenge)
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    await describe(target, username=USER, password=PASSWORD, timeout=3)
    assert len(seen) == 1


async def test_a_camera_offering_basic_and_digest_in_one_header_gets_digest(
    scripted: Callable[[Responder], asyncio.Future[str]],
) -> None:
    """One header "Basic ..., Digest ...": the camera never receives a Basic answer."""
    realm, nonce = "cam", "n-2"
    challenge = (
        f'WWW-Authenticate: Basic realm="{realm}", Digest realm="{realm}", '
        f'nonce="{nonce}", qop="auth"\r\n'
    )
    seen: list[str] = []

    def responder(_request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization")
        if auth is None:
            return _reply("401 Unauthorized", extra=challenge)
        seen.append(auth)
        if not auth.startswith("Digest ") or _qop_auth_fields(auth, realm, nonce) is None:
            return _reply("401 Unauthorized", extra=challenge)
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    memory = RtspAuthMemory()
    for _ in range(2):  # the fresh challenge, then the remembered one
        await describe(target, username=USER, password=PASSWORD, auth_memory=memory, timeout=3)
    assert len(seen) == 2
    assert not any(auth.startswith("Basic") for auth in seen)


@pytest.mark.parametrize("beside", [False, True], ids=["alone", "beside-a-sane-challenge"])
async def test_an_oversized_challenge_is_not_parsed(
    scripted: Callable[[Responder], asyncio.Future[str]],
    monkeypatch: pytest.MonkeyPatch,
    beside: bool,
) -> None:
    """A 60 KiB "Digest aaaa..." challenge is never tokenized, so it cannot stall the loop.

    (60 KiB, not 64: asyncio's 64 KiB line limit turns a longer header line
    into CannotConnectError before any parsing.) Alone it is a camera fault,
    not wrong credentials; beside a sane challenge, the sane one is answered.
    """
    realm, nonce = "cam", "n-3"
    huge = "WWW-Authenticate: Digest " + "a" * (60 * 1024) + "\r\n"
    sane = f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}", qop="auth"\r\n'
    challenges = huge + (sane if beside else "")
    parsed: list[int] = []
    parse_header = rtsp._parse_header

    def spy(value: str) -> list[rtsp.Challenge]:
        parsed.append(len(value))
        return parse_header(value)

    monkeypatch.setattr(rtsp, "_parse_header", spy)

    def responder(_request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization")
        if auth is None or _qop_auth_fields(auth, realm, nonce) is None:
            return _reply("401 Unauthorized", extra=challenges)
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    memory = RtspAuthMemory()
    started = time.monotonic()
    if beside:
        await describe(target, username=USER, password=PASSWORD, auth_memory=memory, timeout=3)
        await describe(target, username=USER, password=PASSWORD, auth_memory=memory, timeout=3)
    else:
        with pytest.raises(CannotConnectError, match="oversized"):
            await describe(target, username=USER, password=PASSWORD, timeout=3)
    assert time.monotonic() - started < 1.0  # the old regex took ~25 s here
    assert all(length <= rtsp._MAX_CHALLENGE_CHARS for length in parsed)
    assert len(parsed) == (2 if beside else 0)  # the sane one, fresh and remembered


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (_reply("200 OK", b"v=0\r\nm=audio 0 RTP/AVP 0\r\n"), NoVideoError, "no video"),
        (_reply("404 Not Found"), CannotConnectError, "RTSP 404"),
        (
            _reply("302 Moved Temporarily", extra="Location: rtsp://203.0.113.9/x\r\n"),
            RedirectedError,
            r"redirects its stream elsewhere \(RTSP 302\)",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CannotConnectError, "not an RTSP"),
        (b"RTSP/1.0 200 OK\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", CannotConnectError, "headers"),
        (_reply("200 OK", extra="Content-Length: 999999\r\n"), CannotConnectError, "too large"),
        (
            _reply("401 Unauthorized", extra='WWW-Authenticate: Bearer realm="x"\r\n'),
            InvalidAuthError,
            "401",
        ),
    ],
    ids=[
        "audio-only",
        "not-found",
        "redirect",
        "http-server",
        "endless-headers",
        "huge-sdp",
        "bearer",
    ],
)
async def test_describe_bad_replies(
    scripted: Callable[[Responder], asyncio.Future[str]],
    reply: bytes,
    error: type[Exception],
    message: str,
) -> None:
    """Each odd reply gets a clear error, not a crash or a hang."""
    url = await scripted(lambda _line, _headers: reply)
    with pytest.raises(error, match=message):
        await describe(await _target(url), username=USER, password=PASSWORD, timeout=3)


async def test_grab_keyframe_decodes_the_camera(vcam: VirtualCamera) -> None:
    """A one-shot grab decodes a keyframe of this camera and encodes a JPEG."""
    target = await _target(vcam.rtsp_url)
    frame = await async_grab_keyframe(target.pinned_url(USER, PASSWORD), timeout=5)
    assert (frame.info.codec, frame.info.width, frame.info.height) == ("h264", 320, 180)
    image = Image.open(io.BytesIO(frame.jpeg)).convert("RGB")
    pixel = image.getpixel((160, 90))
    assert isinstance(pixel, tuple)
    assert nearest_camera((pixel[0], pixel[1], pixel[2]), [color_for(i) for i in range(64)]) == 5


async def test_grab_keyframe_errors(vcam: VirtualCamera) -> None:
    """401, refusal and a hang map to their errors, with no URL in them."""
    target = await _target(vcam.rtsp_url)
    with pytest.raises(InvalidAuthError) as auth_err:
        await async_grab_keyframe(target.pinned_url(USER, "wrong"), timeout=3)
    assert "wrong" not in str(auth_err.value)
    vcam.fault = Fault.REFUSE
    with pytest.raises(CannotConnectError) as conn_err:
        await async_grab_keyframe(target.pinned_url(USER, PASSWORD), timeout=3)
    assert PASSWORD not in str(conn_err.value)
    vcam.fault = Fault.HANG
    with pytest.raises(CameraTimeoutError):
        await async_grab_keyframe(target.pinned_url(USER, PASSWORD), timeout=1)


async def test_warm_session_serves_a_burst_with_one_handshake(vcam: VirtualCamera) -> None:
    """Grabs within the linger window share one RTSP session, then it closes itself."""
    url = await _session_url(vcam)

    grabber = WarmGrabber(linger=0.5)
    try:
        first = await grabber.grab(url, timeout=5)
        second = await grabber.grab(url, timeout=5)
        assert grabber.sessions_opened == 1
        assert vcam.stats.play_sessions == 1
        assert second.received_at > first.received_at  # the next keyframe, not a copy
        for _ in range(50):  # closes by itself after the linger window
            if not grabber.active:
                break
            await asyncio.sleep(0.1)
        assert not grabber.active
        await grabber.grab(url, timeout=5)
        assert grabber.sessions_opened == 2
    finally:
        await grabber.close()
    assert not grabber.active


async def test_warm_session_reports_how_long_it_took_to_start(vcam: VirtualCamera) -> None:
    """Each session's first keyframe reports its open and first-keyframe times; later ones don't."""
    url = await _session_url(vcam)

    grabber = WarmGrabber(linger=0.3)
    assert grabber.last_session is None
    try:
        asked = time.monotonic()
        await grabber.grab(url, timeout=5)
        waited = time.monotonic() - asked
        first = grabber.last_session
        assert first is not None
        assert 0 < first.opened_in <= first.first_keyframe_in <= waited
        await grabber.grab(url, timeout=5)  # the same session's next keyframe
        assert grabber.last_session is first
        for _ in range(50):
            if not grabber.active:
                break
            await asyncio.sleep(0.1)
        await grabber.grab(url, timeout=5)
        assert grabber.sessions_opened == 2
        assert grabber.last_session is not first
        assert grabber.last_session is not None
        assert grabber.last_session.as_dict() == {
            "opened_in_seconds": round(grabber.last_session.opened_in, 3),
            "first_keyframe_in_seconds": round(grabber.last_session.first_keyframe_in, 3),
        }
    finally:
        await grabber.close()


async def test_warm_session_reuses_only_a_young_keyframe(vcam: VirtualCamera) -> None:
    """A warm burst gets the session's latest keyframe at once while it is young enough.

    A keyframe older than ``fresh_within`` is never handed out: the next one is
    awaited instead. Without ``fresh_within`` every grab is the next keyframe.
    """
    url = await _session_url(vcam)

    grabber = WarmGrabber(linger=5)
    try:
        first = await grabber.grab(url, timeout=5)
        again = await grabber.grab(url, timeout=5, fresh_within=0.5)
        assert again is first  # no wait for the next keyframe, no new session
        nxt = await grabber.grab(url, timeout=5)
        assert nxt.received_at > first.received_at
        for _ in range(3):
            await asyncio.sleep(0.35)
            called = time.monotonic()
            frame = await grabber.grab(url, timeout=5, fresh_within=0.3)
            assert frame.received_at >= called - 0.3  # young at the call, or newer
        assert grabber.sessions_opened == 1
        assert vcam.stats.play_sessions == 1
    finally:
        await grabber.close()
    # A closed session's keyframe is never reused.
    reopened = await grabber.grab(url, timeout=5, fresh_within=60)
    assert reopened.received_at > nxt.received_at
    assert grabber.sessions_opened == 2
    await grabber.close()


async def test_warm_session_ending_as_a_request_joins_opens_a_new_one(
    vcam: VirtualCamera,
) -> None:
    """A session that ends (linger over) while a request waits on it: a new session answers."""
    url = await _session_url(vcam)

    grabber = WarmGrabber(linger=0.5)
    try:
        pending = asyncio.create_task(grabber.grab(url, timeout=5))
        for _ in range(100):
            if grabber.active:
                break
            await asyncio.sleep(0.01)
        # What the session thread reports when its linger ran out just as
        # this request arrived (before it saw the request's wish for a frame).
        grabber._ended(grabber._generation, None)
        frame = await pending
        assert frame.jpeg
        assert grabber.sessions_opened == 2
    finally:
        await grabber.close()


async def test_warm_session_errors_reach_every_waiter(vcam: VirtualCamera) -> None:
    """A refused session fails all its waiters at once, with a core error."""
    url = await _session_url(vcam)
    vcam.fault = Fault.REFUSE

    grabber = WarmGrabber(linger=0.5)
    results = await asyncio.gather(
        *(grabber.grab(url, timeout=3) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, CannotConnectError) for result in results)
    await grabber.close()


async def test_warm_session_hang_times_out(vcam: VirtualCamera) -> None:
    """A camera that hangs during the session open costs the bound, then an error."""
    url = await _session_url(vcam)
    vcam.fault = Fault.HANG

    grabber = WarmGrabber(linger=0.5)
    with pytest.raises(CameraTimeoutError):
        await grabber.grab(url, timeout=1)
    vcam.fault = None
    await grabber.close()


def _colour(frame: rtsp.GrabbedFrame) -> int:
    """Which virtual camera a grabbed keyframe shows, by the colour at its centre."""
    image = Image.open(io.BytesIO(frame.jpeg)).convert("RGB")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return nearest_camera((pixel[0], pixel[1], pixel[2]), [color_for(i) for i in range(64)])


async def _wait_until_true(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``condition`` holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 5 s")


@pytest.fixture
async def two_cams(socket_enabled: None) -> AsyncIterator[tuple[VirtualCamera, VirtualCamera]]:
    """Two devices a camera's host name may point at: colours 0 and 5."""
    cams = [
        VirtualCamera(
            camera_config(
                f"c{colour}", colour, username=USER, password=PASSWORD, http_snapshot=False
            )
        )
        for colour in (0, 5)
    ]
    for cam in cams:
        await cam.start()
    yield cams[0], cams[1]
    for cam in cams:
        await cam.stop()


async def test_warm_session_on_another_url_is_never_reused(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """A grab for another URL ends the warm session: never the old session's frame.

    The session was opened where the host name pointed before (a device whose
    frame the caller refused, or the camera's old address); the next grab is
    for the address checked now. However lenient ``fresh_within``, it gets a
    keyframe of a new session on its own URL, and the old session stops.
    """
    here, elsewhere = two_cams
    old_url, new_url = await _session_url(elsewhere), await _session_url(here)
    grabber = WarmGrabber(linger=30)
    try:
        old = await grabber.grab(old_url, timeout=5)
        assert _colour(old) == 5
        old_generation = grabber._generation
        frame = await grabber.grab(new_url, timeout=5, fresh_within=60)
        assert frame is not old
        assert _colour(frame) == 0
        assert grabber.sessions_opened == 2
        # The old session was told to stop, though its linger had 30 s to run.
        await _wait_until_true(lambda: elsewhere.stats.active_play_sessions == 0)
        # A keyframe the old session delivers late is not kept for anyone.
        grabber._deliver(old_generation, old)
        again = await grabber.grab(new_url, timeout=5, fresh_within=60)
        assert again is frame
        assert elsewhere.stats.play_sessions == 1
        assert here.stats.play_sessions == 1
    finally:
        await grabber.close()


async def test_a_grab_waiting_on_a_session_moved_elsewhere_gets_an_error(
    two_cams: tuple[VirtualCamera, VirtualCamera],
) -> None:
    """A grab still waiting when another URL takes the session over gets an error, not a frame."""
    here, elsewhere = two_cams
    old_url, new_url = await _session_url(elsewhere), await _session_url(here)
    grabber = WarmGrabber(linger=30)
    try:
        elsewhere.fault = Fault.HANG  # the old session opens, and no keyframe comes
        waiting = asyncio.create_task(grabber.grab(old_url, timeout=2))
        await _wait_until_true(lambda: grabber.active)
        frame = await grabber.grab(new_url, timeout=5)
        assert _colour(frame) == 0
        with pytest.raises(CannotConnectError, match="address changed"):
            await waiting
    finally:
        elsewhere.fault = None
        await grabber.close()


async def test_describe_over_rtsps(
    socket_enabled: None,
    quiet_tls_rejects: None,
    tls_files: TlsFiles,  # noqa: F811 - the fixture imported from test_http
) -> None:
    """rtsps:// is TLS to the pinned address; verify_ssl off accepts a self-signed camera.

    Verifying, the same camera is refused with the certificate's own reason.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(_reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n"))
            await writer.drain()
        except asyncio.IncompleteReadError, ConnectionError, ssl.SSLError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        target = await _target(f"rtsps://127.0.0.1:{port}/stream")
        await describe(target, verify_ssl=False, timeout=3)
        with pytest.raises(CertificateError) as err:
            await describe(target, verify_ssl=True, timeout=3)
        assert err.value.placeholders == {"reason": "self-signed certificate"}
    finally:
        server.close()
        await server.wait_closed()


async def test_rtsps_context_is_built_off_the_event_loop(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rtsps context reads the CA bundle in a worker thread, once per verify setting.

    HA's block_async_io skips this call in tests, so a spy checks the thread.
    """
    loop_thread = threading.get_ident()
    threads: list[bool] = []  # per CA bundle read: whether it ran in the loop thread
    original = ssl.SSLContext.load_default_certs

    def spy(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.get_ident() == loop_thread)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", spy)
    rtsp.client_ssl_context.cache_clear()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    target = await _target(f"rtsps://127.0.0.1:{server.sockets[0].getsockname()[1]}/stream")
    try:
        for verify in (True, False, True, False):
            with pytest.raises(CannotConnectError):
                await describe(target, verify_ssl=verify, timeout=2)
    finally:
        server.close()
        await server.wait_closed()
    assert threads == [False, False]  # built twice (verify on, off), never in the loop
    assert rtsp.client_ssl_context(True).verify_mode == ssl.CERT_REQUIRED
    unverified = rtsp.client_ssl_context(False)
    assert (unverified.verify_mode, unverified.check_hostname) == (ssl.CERT_NONE, False)


def _mux_silence(container: Any) -> None:
    """Add an audio track to an output container and mux 0.1 s of silence into it."""
    import av

    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame(format="s16", layout="mono", samples=800)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)


async def test_grab_without_video_track(tmp_path: Path) -> None:
    """A source with no video (here an audio-only file) is NoVideoError, not a hang."""
    import av

    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as container:
        _mux_silence(container)
    with pytest.raises(NoVideoError):
        await async_grab_keyframe(str(path), timeout=3)


async def test_grab_is_bounded_by_the_gop(socket_enabled: None) -> None:
    """Joining a running stream whose next keyframe is beyond the bound times out."""
    cam = VirtualCamera(
        CameraConfig(
            name="slowgop",
            color=color_for(7),
            width=320,
            height=180,
            gop_seconds=10.0,
            http_snapshot=False,
        )
    )
    await cam.start()
    grabber = WarmGrabber(linger=30)
    try:
        target = await _target(cam.rtsp_url)
        url = target.pinned_url()
        # The first client starts the encoder (which starts on a keyframe) ...
        await grabber.grab(url, timeout=5)
        # ... a second, separate client joins mid-GOP: nothing within 1.5 s.
        with pytest.raises(CameraTimeoutError):
            await async_grab_keyframe(target.pinned_url(), timeout=1.5)
    finally:
        await grabber.close()
        await cam.stop()


def _write_video(path: Path, *, frames: int, b_frames: int = 0, gop: int = 10) -> None:
    """Write an H.264 file (10 fps, 320x180), each frame a different grey."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": str(b_frames)}
        for index in range(frames):
            image = np.full((180, 320, 3), (index * 7) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_every_keyframe_decodes_with_a_reordering_decoder(tmp_path: Path) -> None:
    """A stream with B-frames holds each keyframe back: drained and reset, each one decodes.

    Without the reset, FFmpeg refuses the second keyframe after the first
    drain (EOF), and a warm session would die there.
    """
    import av

    path = tmp_path / "bframes.mp4"
    _write_video(path, frames=35, b_frames=2)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        codec.skip_frame = "NONKEY"
        codec.thread_count = 1
        keyframes = [p for p in container.demux(stream) if p.size and p.is_keyframe]
        assert len(keyframes) == 4
        assert codec.decode(keyframes[0]) == []  # held back for reordering
        codec.decode(None)
        codec.flush_buffers()
        decoded = [_decode(codec, packet, drain=True) for packet in keyframes[1:]]
    assert all(frame is not None and frame.width == 320 for frame in decoded)


async def test_grab_from_a_reordering_stream(tmp_path: Path) -> None:
    """The one-shot grab drains a decoder that holds the first keyframe back."""
    path = tmp_path / "bframes.mp4"
    _write_video(path, frames=12, b_frames=2)
    frame = await async_grab_keyframe(str(path), timeout=5)
    assert frame.info.width == 320
    assert Image.open(io.BytesIO(frame.jpeg)).size == (320, 180)


async def test_grab_from_a_camera_in_another_codec(socket_enabled: None) -> None:
    """An RTSP stream in a codec other than H.264 and H.265 is opened again, with the parser on.

    Unparsed, an MPEG-4 Part 2 stream's payloads would never make a unit.
    """
    import av

    codec = av.CodecContext.create("mpeg4", "w")
    codec.width, codec.height, codec.pix_fmt = 320, 176, "yuv420p"
    codec.time_base = Fraction(1, 10)
    image = av.VideoFrame.from_ndarray(np.full((176, 320, 3), 90, np.uint8), format="rgb24")
    frame = bytes(codec.encode(image.reformat(format="yuv420p"))[0])  # VOL header and I-VOP
    camera = ScriptedCamera(audio=False, video=[frame], mpeg4=True)
    url = await camera.start()
    try:
        grabbed = await async_grab_keyframe(url, timeout=5)
    finally:
        await camera.stop()
    assert grabbed.info.codec == "mpeg4"
    assert Image.open(io.BytesIO(grabbed.jpeg)).size == (320, 176)


async def test_grab_from_a_video_track_without_frames(tmp_path: Path) -> None:
    """A video track that ends before any frame (here: audio only) is NoVideoError, not a hang."""
    import av

    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        _mux_silence(container)
    with pytest.raises(NoVideoError, match="ended before a video frame"):
        await async_grab_keyframe(str(path), timeout=3)


async def test_grab_is_bounded_in_packets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demux loop stops at its packet bound, whatever the camera sends."""
    path = tmp_path / "late.mp4"
    _write_video(path, frames=5)
    monkeypatch.setattr(rtsp, "_MAX_PACKETS", 0)
    with pytest.raises(CameraTimeoutError, match="no keyframe in time"):
        await async_grab_keyframe(str(path), timeout=3)


async def test_warm_session_over_a_stream_that_ends(tmp_path: Path) -> None:
    """A session whose stream ends hands its keyframe out, then closes; the next grab reopens."""
    path = tmp_path / "short.mp4"
    _write_video(path, frames=25, b_frames=2)

    url = str(path)
    grabber = WarmGrabber(linger=5)
    try:
        first = await grabber.grab(url, timeout=5)
        assert first.info.width == 320
        for _ in range(100):  # the file ends at once: the session closes by itself
            if not grabber.active:
                break
            await asyncio.sleep(0.02)
        assert not grabber.active
        # Its keyframes went with it: a new session, however lenient the caller.
        again = await grabber.grab(url, timeout=5, fresh_within=60)
        assert again.received_at > first.received_at
        assert grabber.sessions_opened == 2
    finally:
        await grabber.close()


# -- a scripted camera that plays RTP: an SDP it chooses, then only audio -------------------


class _Bits:
    """An H.264 RBSP bit writer: just enough for a parameter set."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, size: int, value: int) -> None:
        self.bits += [(value >> shift) & 1 for shift in range(size - 1, -1, -1)]

    def ue(self, value: int) -> None:
        value += 1
        self.u(value.bit_length() - 1, 0)
        self.u(value.bit_length(), value)

    def nal(self, header: int) -> bytes:
        """The NAL unit: header byte, RBSP with its stop bit, emulation prevention."""
        self.u(1, 1)
        self.bits += [0] * (-len(self.bits) % 8)
        raw = bytes(
            int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8)
        )
        out, zeros = bytearray([header]), 0
        for byte in raw:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def _sprop(width: int, height: int) -> str:
    """sprop-parameter-sets of a Baseline H.264 stream declaring ``width``x``height``.

    Built bit by bit, so a test can declare any size without encoding a frame of it.
    """
    sps = _Bits()
    sps.u(8, 66)  # profile_idc: Baseline
    sps.u(8, 0)  # constraint flags
    sps.u(8, 40)  # level_idc
    for value in (0, 0, 2, 1):  # sps id, log2_max_frame_num-4, poc type 2, 1 ref frame
        sps.ue(value)
    sps.u(1, 0)  # no gaps in frame_num
    sps.ue(width // 16 - 1)
    sps.ue(height // 16 - 1)
    for flag in (1, 1, 0, 0):  # frame_mbs_only, direct_8x8, no cropping, no VUI
        sps.u(1, flag)
    pps = _Bits()
    for value in (0, 0):  # pps id, sps id
        pps.ue(value)
    pps.u(2, 0)  # CAVLC, no bottom_field_pic_order
    for value in (0, 0, 0):  # one slice group, one ref each list
        pps.ue(value)
    pps.u(3, 0)  # no weighted prediction
    for value in (0, 0, 0):  # qp, qs, chroma qp offset (se(0) is ue(0))
        pps.ue(value)
    pps.u(3, 0b100)  # deblocking control present; no constrained intra, no redundant pics
    return ",".join(base64.b64encode(nal).decode() for nal in (sps.nal(0x67), pps.nal(0x68)))


class ScriptedCamera:
    """An RTSP server (interleaved TCP) whose SDP offers video and audio.

    After PLAY it sends what ``audio`` says: PCMU audio RTP every 20 ms, never a
    video packet (a camera whose video encoder died, or one that never sends
    it), or nothing at all. ``connections`` counts the clients still connected.
    """

    def __init__(
        self,
        *,
        width: int = 320,
        height: int = 176,
        audio: bool = True,
        video: list[bytes] | None = None,
        interval: float = 0.1,
        mpeg4: bool = False,
    ) -> None:
        """Declare a video size (in the SDP's SPS), whether audio flows, and any video.

        ``video`` is one access unit's NAL units (FU-A fragments for those
        above an RTP payload), sent 0.3 s after PLAY (so FFmpeg's probing saw
        only audio), then again every ``interval`` seconds. ``mpeg4``: the
        video is MPEG-4 Part 2 (RFC 3016), ``video`` one whole frame per payload.
        """
        self.mpeg4 = mpeg4
        self.sprop = _sprop(width, height)
        self.audio = audio
        self.video = video
        self.interval = interval
        self.audio_packets = 0
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Serve on 127.0.0.1; return the stream URL."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"rtsp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/stream"

    async def stop(self) -> None:
        """Drop every client and stop serving."""
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _sdp(self, base: str) -> bytes:
        # The c= line is SDP's "any" connection address (as cameras send it over
        # interleaved TCP): no packet goes there, it is outside the policy's concern.
        return (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"  # outside
            "a=control:*\r\n"
            + (
                "m=video 0 RTP/AVP 96\r\na=rtpmap:96 MP4V-ES/90000\r\n"
                "a=fmtp:96 profile-level-id=1\r\n"
                if self.mpeg4
                else "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
                f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={self.sprop}\r\n"
            )
            + f"a=control:{base}trackID=0\r\n"
            "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=control:{base}trackID=1\r\n"
        ).encode()

    async def _send_audio(self, writer: asyncio.StreamWriter) -> None:
        seq = 0
        while not writer.is_closing():
            rtp = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234) + b"\xff" * 160
            writer.write(b"$\x02" + struct.pack("!H", len(rtp)) + rtp)
            seq += 1
            self.audio_packets += 1
            try:
                await writer.drain()
            except ConnectionError:  # the client reset the connection (as _send_video)
                return
            await asyncio.sleep(0.02)

    async def _send_video(self, writer: asyncio.StreamWriter, nals: list[bytes]) -> None:
        await asyncio.sleep(0.3)
        seq = unit = 0
        payloads = tuple(nals) if self.mpeg4 else packetize(nals)
        while not writer.is_closing():
            # One timestamp per access unit, marker on its last payload.
            for index, payload in enumerate(payloads):
                marker = 0x80 if index == len(payloads) - 1 else 0
                header = struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF, unit * 9000, 0x5678)
                writer.write(b"$\x00" + struct.pack("!H", len(header) + len(payload)))
                writer.write(header + payload)
                seq += 1
            unit += 1
            try:
                await writer.drain()
            except ConnectionError:  # the client left while a large unit was in flight
                return
            await asyncio.sleep(self.interval)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        port = writer.get_extra_info("sockname")[1]
        base = f"rtsp://127.0.0.1:{port}/stream/"
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":  # the client's interleaved RTCP
                    _channel, size = struct.unpack("!BH", await reader.readexactly(3))
                    await reader.readexactly(size)
                    continue
                head = (first + await reader.readuntil(b"\r\n\r\n")).decode()
                method = head.split(" ", 1)[0]
                cseq = re.search(r"(?im)^cseq:\s*(\S+)", head)
                extra, body = "", b""
                if method == "DESCRIBE":
                    body = self._sdp(base)
                    extra = f"Content-Base: {base}\r\nContent-Type: application/sdp\r\n"
                elif method == "SETUP":
                    channels = "2-3" if "trackID=1" in head.split("\r\n", 1)[0] else "0-1"
                    extra = f"Transport: RTP/AVP/TCP;unicast;interleaved={channels}\r\n"
                    extra += "Session: 42;timeout=60\r\n"
                elif method in ("PLAY", "GET_PARAMETER"):
                    extra = "Session: 42\r\n"
                writer.write(
                    f"RTSP/1.0 200 OK\r\nCSeq: {cseq.group(1) if cseq else 0}\r\n{extra}"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if method == "PLAY":
                    senders = [self._send_audio(writer)] if self.audio else []
                    if self.video:
                        senders.append(self._send_video(writer, self.video))
                    for sender in senders:
                        task = asyncio.get_running_loop().create_task(sender)
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
        except asyncio.IncompleteReadError, ConnectionError:
            pass
        finally:
            self.connections -= 1
            writer.close()


@pytest.fixture
async def audio_only_camera(socket_enabled: None) -> AsyncIterator[ScriptedCamera]:
    """A camera whose SDP offers video but whose RTP carries only audio."""
    camera = ScriptedCamera()
    yield camera
    await camera.stop()


async def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` for up to ``seconds``; whether it came true."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_grab_ends_at_its_timeout_while_only_audio_flows(
    audio_only_camera: ScriptedCamera,
) -> None:
    """Audio packets are read and counted too: no video in time is a timeout at the bound.

    Demuxing the video stream alone dropped the audio inside FFmpeg, where
    neither the deadline nor the packet bound ran: the grab never ended.
    """
    url = await audio_only_camera.start()
    start = time.monotonic()
    job = asyncio.get_running_loop().run_in_executor(
        None, lambda: rtsp.grab_keyframe(url, timeout=2)
    )
    done, _ = await asyncio.wait({job}, timeout=6)
    elapsed = time.monotonic() - start
    await audio_only_camera.stop()  # unblocks an unbounded grab (the old bug)
    with pytest.raises(CameraTimeoutError):
        await job
    assert done, f"grab_keyframe(timeout=2) still running after {elapsed:.1f} s"
    assert 2 <= elapsed < 2.5
    assert audio_only_camera.audio_packets > 50  # the camera did flood audio meanwhile


async def test_async_grab_stops_a_thread_that_outlives_it(
    audio_only_camera: ScriptedCamera, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The awaiting caller gets its timeout at its own deadline; the thread is told to stop.

    A negative grace puts the caller's deadline (0.5 s) well before the
    thread's own (2 s): the thread must still stop at once and close its
    container (the camera sees the connection go).
    """
    url = await audio_only_camera.start()
    monkeypatch.setattr(rtsp, "_GRAB_GRACE", -1.5)
    start = time.monotonic()
    with pytest.raises(CameraTimeoutError):
        await async_grab_keyframe(url, timeout=2)
    assert time.monotonic() - start < 1
    assert await _wait_until(lambda: audio_only_camera.connections == 0, 1)
    assert time.monotonic() - start < 1.5


async def test_async_grab_is_bounded_whatever_the_thread_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even a grab thread that ignores its own bound cannot hold its caller past the grace."""
    stopped = threading.Event()

    def stuck(_url: str, *, stop: threading.Event, **_kwargs: Any) -> rtsp.GrabbedFrame:
        if stop.wait(10):
            stopped.set()
        raise CameraTimeoutError("stopped")

    monkeypatch.setattr(rtsp, "grab_keyframe", stuck)
    start = time.monotonic()
    with pytest.raises(CameraTimeoutError, match="no keyframe in time"):
        await async_grab_keyframe("rtsp://127.0.0.1/x", timeout=0.5)
    assert time.monotonic() - start < 0.5 + rtsp._GRAB_GRACE + 0.3
    assert await asyncio.get_running_loop().run_in_executor(None, stopped.wait, 2)


async def test_warm_session_over_audio_only_closes_after_its_linger(
    audio_only_camera: ScriptedCamera,
) -> None:
    """A warm session that gets no video still closes after its linger, or at once on close()."""
    url = await audio_only_camera.start()
    grabber = WarmGrabber(linger=0.5)
    try:
        with pytest.raises(CameraTimeoutError):
            await grabber.grab(url, timeout=1)
        assert await _wait_until(lambda: not grabber.active, 2)
        assert await _wait_until(lambda: audio_only_camera.connections == 0, 1)
    finally:
        await grabber.close()

    lingering = WarmGrabber(linger=60)
    try:
        with pytest.raises(CameraTimeoutError):
            await lingering.grab(url, timeout=1)
        assert lingering.active
    finally:
        start = time.monotonic()
        await lingering.close()
    assert time.monotonic() - start < 1
    assert not lingering.active
    assert await _wait_until(lambda: audio_only_camera.connections == 0, 1)


def _idr_nal_units(width: int, height: int, *, noise: bool = False) -> list[bytes]:
    """SPS, PPS and IDR slice NAL units of one ``width``x``height`` H.264 frame.

    Black, or noise (an IDR too large for one RTP payload).
    """
    import av
    import numpy as np

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.options = {"bf": "0", "g": "1"}
    image = np.zeros((height, width, 3), np.uint8)
    if noise:
        image = np.random.default_rng(7).integers(0, 256, image.shape, np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    nals = [nal.lstrip(b"\x00") for nal in data.split(b"\x00\x00\x01")]
    return [nal for nal in nals if nal and nal[0] & 0x1F in (5, 7, 8)]


async def test_an_oversize_stream_is_refused_at_its_first_decode(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch, decodes: list[bool]
) -> None:
    """A stream above the size limit: one decode makes no frame of it, and the grab ends there.

    The limit is lowered to just below this camera's 320x180, the smallest
    honest stand-in for a camera streaming 16384x16384. FFmpeg's max_pixels
    allocates no such frame; the size the stream's SPS declared ends the
    one-shot grab and the warm session with bad_size, nothing converted.
    """
    cam = VirtualCamera(
        CameraConfig(name="big", color=color_for(2), width=320, height=180, http_snapshot=False)
    )
    await cam.start()
    monkeypatch.setattr(rtsp, "encode_bgr", lambda _array: pytest.fail("encoded"))
    monkeypatch.setattr(rtsp, "MAX_PIXELS", 320 * 180 - 1)
    target = await _target(cam.rtsp_url)
    url = target.pinned_url()
    grabber = WarmGrabber(linger=0.5)
    try:
        with pytest.raises(InvalidImageError, match="implausible size 320x180") as err:
            await async_grab_keyframe(target.pinned_url(), timeout=5)
        assert err.value.kind == "bad_size"
        with pytest.raises(InvalidImageError, match="implausible size 320x180"):
            await grabber.grab(url, timeout=5)
    finally:
        await grabber.close()
        await cam.stop()
    assert decodes == [False, False]


@pytest.mark.parametrize("limit", ["MAX_PIXELS", "MAX_DIMENSION"])
async def test_an_in_band_oversize_frame_is_refused_before_conversion(
    socket_enabled: None, monkeypatch: pytest.MonkeyPatch, limit: str, decodes: list[bool]
) -> None:
    """A size only the in-band SPS declares: refused by the decoder or after it, never encoded.

    Audio arrives first, so FFmpeg's probing knows no video size at open.
    Above MAX_PIXELS, FFmpeg's max_pixels refuses to allocate the frame;
    above MAX_DIMENSION (but within the pixel limit), the decoded frame is
    refused before its conversion to BGR and JPEG.
    """
    camera = ScriptedCamera(width=160, height=96, video=_idr_nal_units(320, 176))
    url = await camera.start()
    monkeypatch.setattr(rtsp, limit, 320 * 176 - 1 if limit == "MAX_PIXELS" else 319)
    monkeypatch.setattr(rtsp, "encode_bgr", lambda _array: pytest.fail("encoded"))
    try:
        with pytest.raises(InvalidImageError, match="implausible size 320x176"):
            await async_grab_keyframe(url, timeout=5)
    finally:
        await camera.stop()
    # FFmpeg itself refused to allocate the frame above MAX_PIXELS.
    assert decodes == [limit == "MAX_DIMENSION"]


async def test_a_keyframe_is_not_held_until_the_next_frame(socket_enabled: None) -> None:
    """A keyframe is decoded once its last payload is in, not when the next frame shows it ended.

    This camera sends a keyframe (fragmented, as any above ~1400 bytes is)
    0.3 s after PLAY and the next one 3 s later. FFmpeg's parser would hand
    the first over only when the second began; the grab and the warm session
    both return it before that.
    """
    camera = ScriptedCamera(
        width=640, height=352, audio=False, video=_idr_nal_units(640, 352, noise=True), interval=3
    )
    url = await camera.start()
    grabber = WarmGrabber(linger=0.5)
    try:
        for grab in (
            lambda: async_grab_keyframe(url, timeout=5),
            lambda: grabber.grab(url, timeout=5),
        ):
            start = time.monotonic()
            frame = await grab()
            assert frame.info.width == 640
            assert time.monotonic() - start < 2
    finally:
        await grabber.close()
        await camera.stop()


async def test_a_camera_offering_sha256_then_md5_digest_is_answered(
    scripted: Callable[[Responder], asyncio.Future[str]],
) -> None:
    """RFC 7616 order: SHA-256 listed first, MD5 second; the MD5 one is answered.

    FFmpeg (the stream) answers the MD5 one too; an MD5 hash sent for the
    SHA-256 nonce was refused, and the health check called working
    credentials wrong (a reauth flow for a working camera).
    """
    realm = "cam"
    # One nonce per challenge, as a server that remembers how it issued each.
    issued = {"n-sha": "SHA-256", "n-md5": "MD5"}
    challenges = (
        f'WWW-Authenticate: Digest realm="{realm}", nonce="n-sha", algorithm=SHA-256\r\n'
        f'WWW-Authenticate: Digest realm="{realm}", nonce="n-md5", algorithm=MD5\r\n'
    )

    def responder(request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization")
        if auth is None:
            return _reply("401 Unauthorized", extra=challenges)
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', auth))
        nonce = fields.get("nonce", "")
        algorithm = hashlib.sha256 if issued.get(nonce) == "SHA-256" else hashlib.md5

        def hasher(text: str) -> str:
            return algorithm(text.encode()).hexdigest()

        ha1 = hasher(f"{USER}:{realm}:{PASSWORD}")
        ha2 = hasher(f"DESCRIBE:{fields['uri']}")
        if nonce not in issued or fields.get("response") != hasher(f"{ha1}:{nonce}:{ha2}"):
            return _reply("401 Unauthorized", extra=challenges)
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    await describe(target, username=USER, password=PASSWORD, timeout=3)


@pytest.mark.parametrize("qop", [True, False], ids=["qop-auth", "no-qop"])
async def test_an_md5_sess_digest_camera_is_answered(
    scripted: Callable[[Responder], asyncio.Future[str]],
    qop: bool,
) -> None:
    """A camera asking for Digest algorithm=MD5-sess gets an RFC 2617 MD5-sess answer.

    FFmpeg (the stream's client) answers MD5-sess; the health check skipped
    the challenge as an unknown algorithm and raised InvalidAuthError, so a
    camera whose stream plays was sent into reauth (ConfigEntryAuthFailed)
    with credentials that work.
    """
    realm, nonce = "cam", "n-sess"
    challenge = f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}", algorithm=MD5-sess'
    challenge += ', qop="auth"\r\n' if qop else "\r\n"

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    def responder(_request_line: str, headers: dict[str, str]) -> bytes:
        auth = headers.get("authorization", "")
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', auth.removeprefix("Digest ")))
        if "cnonce" not in fields or fields.get("algorithm") != "MD5-sess":
            return _reply("401 Unauthorized", extra=challenge)
        ha1 = md5(f"{md5(f'{USER}:{realm}:{PASSWORD}')}:{nonce}:{fields['cnonce']}")
        ha2 = md5(f"DESCRIBE:{fields['uri']}")
        if qop:
            expected = md5(f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
        else:
            expected = md5(f"{ha1}:{nonce}:{ha2}")
        if fields.get("response") != expected:
            return _reply("401 Unauthorized", extra=challenge)
        return _reply("200 OK", b"v=0\r\nm=video 0 RTP/AVP 96\r\n")

    target = await _target(await scripted(responder))
    memory = RtspAuthMemory()
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory, timeout=3)
    # The remembered challenge is answered the same way (a fresh cnonce, the next nc).
    await describe(target, username=USER, password=PASSWORD, auth_memory=memory, timeout=3)


async def test_a_digest_realm_beyond_ascii_is_hashed_as_the_camera_sent_it(
    socket_enabled: None,
) -> None:
    """The camera's realm bytes (UTF-8 "Caméra 中") go into HA1 and back unchanged.

    FFmpeg hashes the realm's bytes as they came; the health check decoded
    them as Latin-1 and hashed and sent them re-encoded as UTF-8 (other
    bytes), so the camera refused the answer and working credentials were
    called wrong (reauth).
    """
    realm, nonce = "Caméra 中".encode(), b"n-1"

    def md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        challenge = b'WWW-Authenticate: Digest realm="' + realm + b'", nonce="n-1"\r\n'
        try:
            for _ in range(3):
                head = await reader.readuntil(b"\r\n\r\n")
                auth = next(
                    (
                        line[15:]
                        for line in head.split(b"\r\n")
                        if line.startswith(b"Authorization: ")
                    ),
                    b"",
                )
                fields = dict(re.findall(rb'(\w+)="([^"]*)"', auth))
                ha1 = md5(f"{USER}:".encode() + realm + f":{PASSWORD}".encode())
                ha2 = md5(b"DESCRIBE:" + fields.get(b"uri", b""))
                good = (
                    fields.get(b"realm") == realm
                    and fields.get(b"response")
                    == md5(f"{ha1}:".encode() + nonce + f":{ha2}".encode()).encode()
                )
                if good:
                    body = b"v=0\r\nm=video 0 RTP/AVP 96\r\n"
                    writer.write(
                        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: %d\r\n\r\n" % len(body)
                        + body
                    )
                else:
                    writer.write(
                        b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n"
                        + challenge
                        + b"Content-Length: 0\r\n\r\n"
                    )
                await writer.drain()
        except asyncio.IncompleteReadError, ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        target = await _target(f"rtsp://127.0.0.1:{port}/stream")
        await describe(target, username=USER, password=PASSWORD, timeout=3)
    finally:
        server.close()
        await server.wait_closed()
