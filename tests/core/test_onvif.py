"""core.onvif against real ONVIF SOAP servers on 127.0.0.1 (the virtual camera and bad ones)."""

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
import contextlib
from datetime import UTC, datetime, timedelta
import gzip
import ipaddress
import logging
import os
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web
from lxml import etree
from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError
import pytest
from zeep.exceptions import Fault as SoapFault, TransportError, XMLSyntaxError

from custom_components.localcam.core.errors import (
    CameraTimeoutError,
    CannotConnectError,
    InvalidAuthError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
    ProtocolError,
)
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.onvif import (
    MAX_PROFILES,
    MAX_SOAP_REPLY,
    MAX_SOAP_TAGS,
    OnvifDevice,
    UriKind,
    _CappedSession,
    _clean_text,
    _clean_uuid,
    _clock_offset,
    _is_xml,
    _last_enabled_mac,
    _optional,
    _read_clock,
    _read_profiles,
    _translate,
    _UriVetter,
    format_mac,
    read_device,
)
from virtualcam import CameraConfig, Fault, VirtualCamera, color_for
from virtualcam.camera import OnvifProfileSpec
from virtualcam.onvif import envelope, password_digest

pytestmark = pytest.mark.usefixtures("socket_enabled")

USER = "onvif-admin"
PASSWORD = "Onv1f-s3cret!"
POLICY = NetPolicy()


@contextlib.asynccontextmanager
async def onvif_camera(**overrides: Any) -> AsyncIterator[VirtualCamera]:
    """A running virtual ONVIF camera with credentials, serial and MAC (overridable)."""
    settings: dict[str, Any] = {
        "onvif": True,
        "username": USER,
        "password": PASSWORD,
        "serial": "VC-000123",
        "mac": "AA-BB-CC-00-11-22",
        "manufacturer": "Acme",
        "model": "Cam 5",
        "firmware": "5.1.2",
        "width": 320,
        "height": 180,
        **overrides,
    }
    cam = VirtualCamera(CameraConfig("onvif-cam", color_for(3), **settings))
    await cam.start()
    try:
        yield cam
    finally:
        await cam.stop()


async def read(cam: VirtualCamera, password: str = PASSWORD, **kwargs: Any) -> OnvifDevice:
    """read_device on the camera's HTTP port."""
    return await read_device("127.0.0.1", cam.http_port, USER, password, policy=POLICY, **kwargs)


@contextlib.asynccontextmanager
async def _serve(
    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], host: str = "127.0.0.1"
) -> AsyncIterator[int]:
    """Serve handle on host (a loopback address) at a free port; yields the port."""
    runner = web.ServerRunner(web.Server(handle))
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def soap_server(
    answer: Callable[[bytes], tuple[int, bytes]],
    *,
    host: str = "127.0.0.1",
    content_type: str = "application/soap+xml",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[int]:
    """A bare HTTP server on host answering every request with answer(body)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        status, body = answer(await request.read())
        response = web.Response(
            status=status, body=body, content_type=content_type, charset="utf-8", headers=headers
        )
        if body[:2] == b"\x1f\x8b":  # a gzip bomb: small on the wire, 10 MB inflated
            response.headers["Content-Encoding"] = "gzip"
        return response

    async with _serve(handle, host) as port:
        yield port


#: (HTTP status, content type, body) a fronted camera's proxy answers with itself.
type Reply = tuple[int, str, bytes]


def _operation(request: bytes) -> str:
    """The SOAP operation a request calls: the first element in the envelope's Body."""
    body = next(e for e in etree.fromstring(request) if etree.QName(e).localname == "Body")
    return etree.QName(body[0]).localname


@contextlib.asynccontextmanager
async def fronted_camera(
    override: Callable[[str, bool], Reply | None], **settings: Any
) -> AsyncIterator[int]:
    """A virtual camera behind a proxy on 127.0.0.1; yields the proxy's port.

    override(operation, authenticated) gives the reply the proxy sends itself, or None to
    pass the request on to the camera (whose XAddrs are re-aimed at the proxy).
    """
    ports: list[int] = []
    async with onvif_camera(**settings) as cam, aiohttp.ClientSession() as session:

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            body = await request.read()
            mine = override(_operation(body), b"UsernameToken" in body)
            if mine is not None:
                status, content_type, reply = mine
                return web.Response(status=status, body=reply, content_type=content_type)
            upstream_url = f"http://127.0.0.1:{cam.http_port}{request.path}"
            headers = {"Content-Type": request.headers["Content-Type"]}
            async with session.post(upstream_url, data=body, headers=headers) as upstream:
                reply = await upstream.read()
                status, content_type = upstream.status, upstream.headers["Content-Type"]
            reply = reply.replace(
                f"127.0.0.1:{cam.http_port}/onvif/".encode(),
                f"127.0.0.1:{ports[0]}/onvif/".encode(),
            )
            return web.Response(status=status, body=reply, headers={"Content-Type": content_type})

        async with _serve(handle) as port:
            ports.append(port)
            yield port


# -- the happy path ---------------------------------------------------------------------------


async def test_reads_identity_profiles_and_uris() -> None:
    """Device information, MAC, UUID and both profiles with the camera's real URIs."""
    async with onvif_camera() as cam:
        device = await read(cam)
    assert (device.manufacturer, device.model, device.firmware) == ("Acme", "Cam 5", "5.1.2")
    assert device.serial == "VC-000123"
    assert device.mac == "aa:bb:cc:00:11:22"
    assert device.identity == "aa:bb:cc:00:11:22"
    assert device.device_uuid == cam.device_uuid
    assert [(p.token, p.encoding, p.width, p.height) for p in device.profiles] == [
        ("main", "H264", 320, 180),
        ("sub", "H264", 160, 90),
    ]
    assert all(p.stream_uri == cam.rtsp_url for p in device.profiles)
    assert all(p.snapshot_uri == cam.snapshot_url for p in device.profiles)
    assert device.snapshot_supported
    assert device.primary_profile is device.profiles[0]
    assert not device.h265_only
    assert device.refused_uris == device.rewritten_uris == ()
    assert device.clock_offset is not None
    assert abs(device.clock_offset) < 2


async def test_identity_falls_back_to_serial_then_uuid() -> None:
    """No MAC: identity is serial:<serial>; no serial either: uuid:<device uuid>."""
    async with onvif_camera(mac=None) as cam:
        device = await read(cam)
    assert device.mac is None
    assert device.identity == "serial:VC-000123"
    async with onvif_camera(mac=None, serial=None) as cam:
        device = await read(cam)
    assert device.serial is None
    assert device.identity == f"uuid:{cam.device_uuid}"


async def test_camera_without_snapshot() -> None:
    """GetSnapshotUri faults: profiles keep their streams, snapshot_supported is False."""
    async with onvif_camera(http_snapshot=False) as cam:
        device = await read(cam)
    assert [p.snapshot_uri for p in device.profiles] == [None, None]
    assert not device.snapshot_supported


@pytest.mark.parametrize("offset", [3600.0, -7200.0, 45.0])
async def test_clock_offset_still_authenticates(offset: float) -> None:
    """Tokens are created in the camera's time, so a camera clock hours off still works."""
    async with onvif_camera(clock_offset=offset) as cam:
        device = await read(cam)
        assert cam.stats.onvif_auth_failures == 0
    assert device.serial == "VC-000123"
    assert device.clock_offset is not None
    assert abs(device.clock_offset - offset) < 2


def _token_request(created: datetime, password: str = PASSWORD) -> bytes:
    """A GetDeviceInformation request with a digest token created at `created`."""
    nonce = os.urandom(16)
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = password_digest(nonce, stamp, password)
    wsse = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
    wsu = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
    kind = (
        "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
        "#PasswordDigest"
    )
    return (
        f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header>'
        f'<wsse:Security xmlns:wsse="{wsse}" xmlns:wsu="{wsu}"><wsse:UsernameToken>'
        f"<wsse:Username>{USER}</wsse:Username>"
        f'<wsse:Password Type="{kind}">{digest}</wsse:Password>'
        f"<wsse:Nonce>{base64.b64encode(nonce).decode()}</wsse:Nonce>"
        f"<wsu:Created>{stamp}</wsu:Created></wsse:UsernameToken></wsse:Security>"
        "</s:Header><s:Body>"
        '<GetDeviceInformation xmlns="http://www.onvif.org/ver10/device/wsdl"/>'
        "</s:Body></s:Envelope>"
    ).encode()


async def test_virtual_camera_enforces_token_freshness() -> None:
    """The emulator really rejects tokens more than 30 s off its clock (so the test above bites)."""
    async with onvif_camera(clock_offset=3600.0) as cam, aiohttp.ClientSession() as session:
        camera_now = datetime.now(UTC) + timedelta(seconds=3600)
        for created, expected in (
            (datetime.now(UTC), 400),  # our clock: an hour off the camera's
            (camera_now - timedelta(seconds=40), 400),
            (camera_now + timedelta(seconds=40), 400),
            (camera_now - timedelta(seconds=10), 200),
            (camera_now + timedelta(seconds=10), 200),
        ):
            async with session.post(cam.onvif_url, data=_token_request(created)) as resp:
                body = await resp.read()
            assert resp.status == expected, created
            if expected == 400:
                assert b"NotAuthorized" in body
        async with session.post(cam.onvif_url, data=_token_request(camera_now, "wrong")) as resp:
            assert resp.status == 400


# -- what the camera reports ------------------------------------------------------------------


async def test_h265_only_camera_is_returned() -> None:
    """An H.265-only camera is not hidden: its profiles come back, flagged h265_only."""
    async with onvif_camera(hevc_only=True) as cam:
        device = await read(cam)
    assert [p.encoding for p in device.profiles] == ["H265", "H265"]
    assert device.h265_only
    assert device.primary_profile is device.profiles[0]


async def test_mixed_codecs_and_profiles_without_video() -> None:
    """H.264 + H.265 profiles are both offered; the primary profile is the H.264 one."""
    profiles = (
        OnvifProfileSpec("hevc", "HEVC main", encoding="H265"),
        OnvifProfileSpec("avc", "AVC sub", divisor=2),
        OnvifProfileSpec("mjpeg", "MJPEG", encoding="JPEG", divisor=4),
    )
    async with onvif_camera(profiles=profiles) as cam:
        device = await read(cam)
    assert [(p.token, p.encoding) for p in device.profiles] == [
        ("hevc", "H265"),
        ("avc", "H264"),
        ("mjpeg", "JPEG"),
    ]
    assert not device.h265_only
    assert device.primary_profile is not None
    assert device.primary_profile.token == "avc"


async def test_uri_on_another_private_host_is_rewritten() -> None:
    """NAT / stale self-address: LAN URIs on another host are re-aimed at the configured host."""
    async with onvif_camera(
        reported_host="192.168.77.5", reported_xaddr_host="192.168.77.6"
    ) as cam:
        device = await read(cam)
    # The media service still answered: the library was aimed at 127.0.0.1, not 192.168.77.6.
    assert [p.stream_uri for p in device.profiles] == [cam.rtsp_url, cam.rtsp_url]
    assert [p.snapshot_uri for p in device.profiles] == [cam.snapshot_url, cam.snapshot_url]
    kinds = [(r.kind, r.profile_token) for r in device.rewritten_uris]
    assert kinds == [
        (UriKind.SERVICE, None),
        (UriKind.STREAM, "main"),
        (UriKind.SNAPSHOT, "main"),
        (UriKind.STREAM, "sub"),
        (UriKind.SNAPSHOT, "sub"),
    ]
    stream = device.rewritten_uris[1]
    assert stream.reported == f"rtsp://192.168.77.5:{cam.rtsp_port}/stream"
    assert stream.rewritten == cam.rtsp_url
    assert device.refused_uris == ()


async def test_uri_on_public_host_is_refused_and_reported() -> None:
    """Public stream/snapshot URIs are dropped (never fetched) and listed with the reason."""
    async with onvif_camera(reported_host="203.0.113.7") as cam:
        device = await read(cam)
    assert device.profiles == ()  # no profile has a usable stream
    assert not device.snapshot_supported
    assert {(r.kind, r.profile_token) for r in device.refused_uris} == {
        (UriKind.STREAM, "main"),
        (UriKind.SNAPSHOT, "main"),
        (UriKind.STREAM, "sub"),
        (UriKind.SNAPSHOT, "sub"),
    }
    assert all(r.reason == "public address 203.0.113.7" for r in device.refused_uris)
    assert device.identity == "aa:bb:cc:00:11:22"  # identity is still known


async def test_public_media_service_is_never_contacted() -> None:
    """A public Media XAddr is refused before any request (pytest-socket would raise if not)."""
    async with onvif_camera(reported_xaddr_host="8.8.8.8") as cam:  # refused: public
        device = await read(cam)
    assert device.profiles == ()
    assert [(r.kind, r.reason) for r in device.refused_uris] == [
        (UriKind.SERVICE, "public address 8.8.8.8")
    ]


async def test_embedded_credentials_are_stripped_and_never_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """userinfo in reported URIs is removed; the password is in no result, error or our log."""
    caplog.set_level(logging.DEBUG)
    async with onvif_camera(reported_userinfo=f"{USER}:{PASSWORD}") as cam:
        device = await read(cam)
        with pytest.raises(InvalidAuthError) as bad:
            await read(cam, password=f"{PASSWORD}-wrong")
    assert [p.stream_uri for p in device.profiles] == [cam.rtsp_url, cam.rtsp_url]
    texts = [repr(device), str(bad.value), repr(bad.value), repr(bad.value.placeholders)]
    assert bad.value.__cause__ is None
    assert bad.value.__suppress_context__
    # onvif-zeep-async's transport dumps whole SOAP replies at DEBUG (the camera put the
    # password into them); everything else, ours included, must stay clean.
    texts += [r.getMessage() for r in caplog.records if r.name != "onvif.zeep_aiohttp"]
    assert not [text for text in texts if PASSWORD in text]
    ours = [r for r in caplog.records if r.name.startswith("custom_components.localcam")]
    assert not [r for r in ours if "@" in r.getMessage()]


async def test_credentials_never_in_any_log(caplog: pytest.LogCaptureFixture) -> None:
    """Success, wrong password and a clock offset: no logger at any level shows the password."""
    caplog.set_level(logging.DEBUG)
    async with onvif_camera(clock_offset=600) as cam:
        await read(cam)
        with pytest.raises(InvalidAuthError):
            await read(cam, password="not-" + PASSWORD)
    assert caplog.records  # the library and we do log at DEBUG
    assert not [r.name for r in caplog.records if PASSWORD in r.getMessage()]


# -- failures ---------------------------------------------------------------------------------


async def test_wrong_password_is_invalid_auth() -> None:
    """A NotAuthorized fault is InvalidAuthError."""
    async with onvif_camera() as cam:
        with pytest.raises(InvalidAuthError):
            await read(cam, password="wrong")
        with pytest.raises(InvalidAuthError):
            await read_device("127.0.0.1", cam.http_port, None, None, policy=POLICY)
        cam.fault = Fault.UNAUTHORIZED
        with pytest.raises(InvalidAuthError):
            await read(cam)


async def test_hanging_camera_times_out_within_the_bound() -> None:
    """A camera that never answers: CameraTimeoutError after `timeout`, not the library's 90 s."""
    async with onvif_camera() as cam:
        cam.fault = Fault.HANG
        start = time.monotonic()
        with pytest.raises(CameraTimeoutError) as err:
            await read(cam, timeout=0.5)
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 1.5
    assert err.value.translation_key == "timeout"


async def test_slow_camera_past_the_bound_times_out() -> None:
    """Each answer late (SLOW): the whole read is still bounded by `timeout`."""
    async with onvif_camera(slow_delay=0.4) as cam:
        cam.fault = Fault.SLOW
        start = time.monotonic()
        with pytest.raises(CameraTimeoutError):
            await read(cam, timeout=1.0)
    assert time.monotonic() - start < 2.0


async def test_refused_connection_is_cannot_connect() -> None:
    """A reset connection and a closed port are CannotConnectError."""
    async with onvif_camera() as cam:
        cam.fault = Fault.REFUSE
        with pytest.raises(CannotConnectError):
            await read(cam)
        port = cam.http_port
    with pytest.raises(CannotConnectError):
        await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=2)


@pytest.mark.parametrize("fault", [Fault.TRUNCATED_JPEG, Fault.WRONG_CONTENT_TYPE])
async def test_garbled_answers_are_protocol_errors(fault: Fault) -> None:
    """Truncated SOAP and an HTML page are ProtocolError (translation key onvif_error)."""
    async with onvif_camera() as cam:
        cam.fault = fault
        with pytest.raises(ProtocolError) as err:
            await read(cam)
    assert err.value.translation_key == "onvif_error"


async def test_policy_is_checked_before_any_connection() -> None:
    """A public host, a bad port and a malformed host fail before a packet is sent."""
    with pytest.raises(NotLocalError):
        await read_device("8.8.8.8", 80, USER, PASSWORD, policy=POLICY)
    with pytest.raises(InvalidUrlError):
        await read_device("127.0.0.1", 0, USER, PASSWORD, policy=POLICY)
    for host in ("127.0.0.1/x?y=", "user@127.0.0.1", "127.0.0.1:81", "127.0.0.1#x", ""):
        with pytest.raises(InvalidUrlError):
            await read_device(host, 80, USER, PASSWORD, policy=POLICY)


_ENVELOPE = (
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
    "<s:Body>{}</s:Body></s:Envelope>"
)
_BAD_SOAP: dict[str, tuple[int, bytes]] = {
    "empty": (200, b""),
    "truncated": (200, _ENVELOPE.format("<tds:GetSystemDateAndTimeResponse>")[:90].encode()),
    "not xml": (200, b"\x00\xff garbage \xfe" * 100),
    "billion laughs": (
        200,
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(8)
        )
        + b"]>"
        + _ENVELOPE.format("<x>&i;</x>").encode(),
    ),
    "external entity": (
        200,
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + _ENVELOPE.format("<x>&e;</x>").encode(),
    ),
    "wrong namespace": (
        200,
        b'<s:Envelope xmlns:s="urn:not-soap"><s:Body><x/></s:Body></s:Envelope>',
    ),
    "huge": (200, _ENVELOPE.format("<x>" + "y" * 10_000_000 + "</x>").encode()),
    "huge compressed": (
        200,
        gzip.compress(_ENVELOPE.format("<x>" + "y" * 10_000_000 + "</x>").encode()),
    ),
    "http 500 html": (500, b"<html>oops</html>"),
    "unknown body": (200, _ENVELOPE.format('<q:Odd xmlns:q="urn:q">1</q:Odd>').encode()),
}


@pytest.mark.parametrize("case", sorted(_BAD_SOAP))
async def test_bad_soap_answers_fail_cleanly(case: str) -> None:
    """Hostile or broken SOAP: a core error within the bound, no file read, no crash."""
    status, body = _BAD_SOAP[case]
    async with soap_server(lambda _request: (status, body)) as port:
        start = time.monotonic()
        with pytest.raises(LocalCamError) as err:
            await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert time.monotonic() - start < 5
    assert isinstance(err.value, ProtocolError | CannotConnectError), err.value
    assert "root:" not in str(err.value)
    if case.startswith("huge"):
        assert "too large" in str(err.value)


async def test_redirects_are_never_followed() -> None:
    """A 307 to another loopback host: nothing reaches that host; the read is a ProtocolError."""
    elsewhere: list[bytes] = []

    def record(request: bytes) -> tuple[int, bytes]:
        elsewhere.append(request)
        return 200, b""

    # 127.0.0.2 stands for a host NetPolicy never classified: only the configured one was.
    async with soap_server(record, host="127.0.0.2") as other:
        location = {"Location": f"http://127.0.0.2:{other}/onvif/device_service"}
        async with soap_server(lambda _request: (307, b""), headers=location) as port:
            with pytest.raises(ProtocolError) as err:
                await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/onvif/device_service"
                # Forced off even when a caller asks for redirects.
                response = await _CappedSession(session).get(url, allow_redirects=True)
    assert elsewhere == []
    assert "redirect (HTTP 307)" in str(err.value)
    assert response.status == 307
    assert await response.read() == b""


_PLAIN_ERRORS: dict[str, Reply] = {
    "500 text": (500, "text/plain", b"Internal Error"),
    "200 text": (200, "text/plain", b"hello"),
    "500 blank": (500, "text/plain", b" \r\n"),
}


@pytest.mark.parametrize("reply", sorted(_PLAIN_ERRORS))
async def test_optional_query_with_plain_text_error_is_skipped(reply: str) -> None:
    """GetDeviceInformation answered with text, not XML: read succeeds without that part."""

    def answer(operation: str, _authenticated: bool) -> Reply | None:
        return _PLAIN_ERRORS[reply] if operation == "GetDeviceInformation" else None

    async with fronted_camera(answer) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert (device.manufacturer, device.model, device.firmware, device.serial) == (None,) * 4
    assert device.mac == "aa:bb:cc:00:11:22"
    assert [p.token for p in device.profiles] == ["main", "sub"]


@pytest.mark.parametrize("reply", sorted(_PLAIN_ERRORS))
async def test_clock_query_with_plain_text_error_is_skipped(reply: str) -> None:
    """GetSystemDateAndTime answered with text, not XML: read succeeds, clock unknown."""

    def answer(operation: str, _authenticated: bool) -> Reply | None:
        return _PLAIN_ERRORS[reply] if operation == "GetSystemDateAndTime" else None

    async with fronted_camera(answer) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert device.clock_offset is None
    assert device.serial == "VC-000123"
    assert len(device.profiles) == 2


_REFUSALS: dict[str, Reply] = {
    "401 text": (401, "text/plain", b"401 Unauthorized"),
    "403 text": (403, "text/plain", b"Forbidden"),
    "401 html": (401, "text/html", b"<html><body>Unauthorized</body></html>"),
}


@pytest.mark.parametrize("reply", sorted(_REFUSALS))
async def test_http_401_403_is_invalid_auth(reply: str) -> None:
    """Authenticated calls refused with HTTP 401/403 (any body) are InvalidAuthError."""

    def answer(_operation: str, authenticated: bool) -> Reply | None:
        return _REFUSALS[reply] if authenticated else None

    async with fronted_camera(answer) as port:
        with pytest.raises(InvalidAuthError) as err:
            await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert f"HTTP {_REFUSALS[reply][0]}" in str(err.value)
    status, content_type, body = _REFUSALS[reply]
    # A camera refusing everything, the authless clock query included, with and without
    # credentials.
    async with soap_server(lambda _request: (status, body), content_type=content_type) as port:
        for username, password in ((USER, PASSWORD), (None, None)):
            with pytest.raises(InvalidAuthError):
                await read_device("127.0.0.1", port, username, password, policy=POLICY, timeout=5)


_NOT_ALLOWED_FAULT = b"""<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
  xmlns:ter="http://www.onvif.org/ver10/error">
 <s:Body><s:Fault>
  <s:Code><s:Value>s:Sender</s:Value>
   <s:Subcode><s:Value>ter:ActionNotSupported</s:Value></s:Subcode></s:Code>
  <s:Reason><s:Text xml:lang="en">Not available to this account</s:Text></s:Reason>
 </s:Fault></s:Body>
</s:Envelope>"""


async def test_optional_query_refused_with_a_non_auth_fault_is_skipped() -> None:
    """A 401 that carries a SOAP fault without an auth subcode: that part only is missing."""

    def answer(operation: str, _authenticated: bool) -> Reply | None:
        if operation == "GetNetworkInterfaces":
            return (401, "application/soap+xml", _NOT_ALLOWED_FAULT)
        return None

    async with fronted_camera(answer) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert device.mac is None
    assert device.serial == "VC-000123"
    assert [p.token for p in device.profiles] == ["main", "sub"]


async def test_non_xml_reply_to_required_call_is_protocol_error() -> None:
    """GetProfiles answered 200 with plain text: a ProtocolError that says so."""

    def answer(operation: str, _authenticated: bool) -> Reply | None:
        return (200, "text/plain", b"hello") if operation == "GetProfiles" else None

    async with fronted_camera(answer) as port:
        with pytest.raises(ProtocolError) as err:
            await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert str(err.value) == "the camera answered GetProfiles with HTTP 200 but no XML"


async def test_fronted_camera_passes_requests_through() -> None:
    """The test proxy itself: with nothing overridden, the whole read works through it."""
    async with fronted_camera(lambda _operation, _authenticated: None) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert device.serial == "VC-000123"
    assert device.clock_offset is not None
    assert [p.token for p in device.profiles] == ["main", "sub"]


def test_format_mac() -> None:
    """MACs in any common spelling become lower-case colon form; junk becomes None."""
    assert format_mac("AA-BB-CC-00-11-22") == "aa:bb:cc:00:11:22"
    assert format_mac("aabb.cc00.1122") == "aa:bb:cc:00:11:22"
    assert format_mac("00:00:00:00:00:00") is None
    assert format_mac("zz:bb:cc:00:11:22") is None
    assert format_mac(None) is None


async def test_concurrent_reads_do_not_interfere() -> None:
    """Two cameras read at once each return their own identity."""
    async with onvif_camera() as one, onvif_camera(mac="02:00:00:00:00:02") as two:
        first, second = await asyncio.gather(read(one), read(two))
    assert (first.mac, second.mac) == ("aa:bb:cc:00:11:22", "02:00:00:00:00:02")


# -- helpers, unit by unit --------------------------------------------------------------------


def _fault(message: str, code: str | None = None, subcode: str | None = None) -> SoapFault:
    """A zeep Fault as the SOAP 1.2 binding builds it."""
    subcodes = [etree.QName("http://www.onvif.org/ver10/error", subcode)] if subcode else None
    return SoapFault(message, code=code, subcodes=subcodes)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_fault("Sender not Authorized", "env:Sender", "NotAuthorized"), InvalidAuthError),
        (_fault("The security token could not be authenticated"), InvalidAuthError),
        (_fault("Action not supported", "env:Receiver", "ActionNotSupported"), ProtocolError),
        (TransportError(status_code=401), InvalidAuthError),
        (TransportError(status_code=503), ProtocolError),
        (ONVIFAuthError("no"), InvalidAuthError),
        (ONVIFTimeoutError("slow"), CameraTimeoutError),
        (TimeoutError(), CameraTimeoutError),
        (ONVIFError(ConnectionRefusedError()), CannotConnectError),
        (aiohttp.ServerDisconnectedError(), CannotConnectError),
        (OSError("unreachable"), CannotConnectError),
        (aiohttp.ClientPayloadError("bad"), ProtocolError),
        (XMLSyntaxError("bad"), ProtocolError),
        (AttributeError("Uri"), ProtocolError),
        (InvalidAuthError("kept"), InvalidAuthError),
    ],
)
def test_library_errors_are_translated(error: BaseException, expected: type) -> None:
    """Every library/transport error becomes one core error with a fixed message."""
    if type(error) is ONVIFError:  # the library wraps with `raise ONVIFError(err) from err`
        error.__cause__ = error.args[0]
    translated = _translate(error, "GetProfiles")
    assert type(translated) is expected
    if not isinstance(error, LocalCamError):
        assert "GetProfiles" in str(translated)


async def _vetted(
    raw: object, *, host: str = "127.0.0.1", policy: NetPolicy = POLICY, schemes: str = "http"
) -> tuple[str | None, _UriVetter]:
    """Vet one URI as the snapshot URI of profile "p"."""
    address = ipaddress.ip_address("127.0.0.1" if host == "127.0.0.1" else "192.168.1.5")
    vetter = _UriVetter(policy, host, address)
    allowed = frozenset({"http", "https"} if schemes == "http" else {"rtsp", "rtsps"})
    url = await vetter.vet(raw, UriKind.SNAPSHOT, "p", allowed)
    return (str(url) if url is not None else None), vetter


async def test_uri_vetting_edge_cases() -> None:
    """Malformed, relative, wrong-scheme and oversized URIs are refused with a reason."""
    for raw in (None, "", "   ", 42):
        url, vetter = await _vetted(raw)
        assert url is None
        assert vetter.refused == []
    for raw, reason in (
        ("http://127.0.0.1/" + "x" * 3000, "uri too long"),
        ("http://[::1/x", "malformed url"),
        ("/snapshot.jpg", "not an absolute url"),
        ("ftp://127.0.0.1/snap.jpg", "scheme not allowed here"),
        ("http://0x7f.1/snap.jpg", "ambiguous numeric host"),
    ):
        url, vetter = await _vetted(raw)
        assert url is None, raw
        assert [r.reason for r in vetter.refused] == [reason], raw
    url, vetter = await _vetted("rtsp://127.0.0.1/x")
    assert url is None
    url, _ = await _vetted("rtsp://127.0.0.1:554/x", schemes="rtsp")
    assert url == "rtsp://127.0.0.1:554/x"


async def test_uri_vetting_repairs_and_strips() -> None:
    """A doubled port is repaired; userinfo and credential parameters are removed."""
    url, vetter = await _vetted(
        "http://admin:pw@127.0.0.1:8080:8080/cgi?user=admin&pwd=secret&channel=1"
    )
    assert url == "http://127.0.0.1:8080/cgi?channel=1"
    assert vetter.refused == vetter.rewritten == []


async def test_uri_vetting_with_a_host_name() -> None:
    """Configured by name: its address counts as the same host; other LAN hosts are re-aimed."""

    async def resolver(host: str, _port: int) -> list[str]:
        if host == "cam.lan":
            return ["192.168.1.5"]
        raise OSError("no such host")

    policy = NetPolicy(resolver=resolver)
    url, vetter = await _vetted("http://192.168.1.5/snap.jpg", host="cam.lan", policy=policy)
    assert url == "http://192.168.1.5/snap.jpg"
    assert vetter.rewritten == []
    url, vetter = await _vetted("http://192.168.1.9:81/snap.jpg", host="cam.lan", policy=policy)
    assert url == "http://cam.lan:81/snap.jpg"
    assert [(r.reported, r.rewritten) for r in vetter.rewritten] == [
        ("http://192.168.1.9:81/snap.jpg", "http://cam.lan:81/snap.jpg")
    ]
    url, vetter = await _vetted("http://other.lan/snap.jpg", host="cam.lan", policy=policy)
    assert url is None
    assert [r.reason for r in vetter.refused] == ["CannotConnectError"]


class _FakeMedia:
    """Media service replies built from plain objects (profiles a camera could send)."""

    def __init__(self, profiles: list[Any]) -> None:
        """Serve these profiles."""
        self.profiles = profiles

    async def GetProfiles(self) -> list[Any]:  # noqa: N802
        """The profiles."""
        return self.profiles

    async def GetStreamUri(self, request: dict[str, Any]) -> Any:  # noqa: N802
        """A stream URI per profile token."""
        return SimpleNamespace(Uri=f"rtsp://127.0.0.1:554/{request['ProfileToken']}")

    async def GetSnapshotUri(self, _request: dict[str, Any]) -> Any:  # noqa: N802
        """No snapshots on this camera."""
        raise _fault("Not supported", "env:Receiver", "ActionNotSupported")


def _profile(token: Any, encoding: Any = "H264", width: Any = 640) -> SimpleNamespace:
    """A GetProfiles entry."""
    encoder = SimpleNamespace(
        Encoding=encoding, Resolution=SimpleNamespace(Width=width, Height=360)
    )
    return SimpleNamespace(token=token, Name=None, VideoEncoderConfiguration=encoder)


async def test_odd_profiles_are_bounded_and_skipped() -> None:
    """Audio-only, unnamed, duplicate, over-long and excess profiles are left out."""
    raw = [
        SimpleNamespace(token="audio", Name="Audio", VideoEncoderConfiguration=None),
        _profile(None),
        _profile("x" * 65),
        _profile("dup", encoding="h.265", width="wide"),
        _profile("dup"),
        _profile("hevc", encoding="HEVC", width=10**9),
        *(_profile(f"p{i}") for i in range(MAX_PROFILES + 14)),
    ]
    vetter = _UriVetter(POLICY, "127.0.0.1", ipaddress.ip_address("127.0.0.1"))
    profiles, snapshot_supported = await _read_profiles(_FakeMedia(raw), vetter)
    assert not snapshot_supported
    assert [(p.token, p.encoding, p.width) for p in profiles[:2]] == [
        ("dup", "H265", 0),
        ("hevc", "H265", 0),
    ]
    assert profiles[0].name == "dup"  # no Name: the token stands in
    assert len(profiles) == MAX_PROFILES - 4  # MAX_PROFILES looked at, 4 of them unusable


class _FakeDeviceMgmt:
    """A device service whose GetSystemDateAndTime faults both ways."""

    async def authless_GetSystemDateAndTime(self) -> Any:  # noqa: N802
        """Refuse without credentials."""
        raise _fault("Sender not Authorized", "env:Sender", "NotAuthorized")

    async def GetSystemDateAndTime(self) -> Any:  # noqa: N802
        """Refuse with them too."""
        raise _fault("Not implemented", "env:Receiver", "ActionNotSupported")


async def test_clock_unknown_when_the_camera_will_not_tell() -> None:
    """No readable clock: no offset, and the service is used as it is."""
    service = _FakeDeviceMgmt()
    assert await _read_clock(None, service, anonymous=True) == (service, None)
    assert await _read_clock(None, service, anonymous=False) == (service, None)
    assert _clock_offset(SimpleNamespace(UTCDateTime=None)) is None
    time_ = SimpleNamespace(Hour=25, Minute=0, Second=0)
    date = SimpleNamespace(Year=2026, Month=1, Day=1)
    assert (
        _clock_offset(SimpleNamespace(UTCDateTime=SimpleNamespace(Time=time_, Date=date))) is None
    )


async def test_optional_queries() -> None:
    """Optional answers: faults and bad replies are None; auth failures still raise."""

    async def raises(error: BaseException) -> None:
        raise error

    assert await _optional(raises(TransportError(status_code=500)), "X") is None
    assert await _optional(raises(XMLSyntaxError("bad")), "X") is None
    with pytest.raises(TransportError):
        await _optional(raises(TransportError(status_code=401)), "X")
    with pytest.raises(SoapFault):
        await _optional(raises(_fault("Sender not Authorized", None, "NotAuthorized")), "X")


def test_xml_sniffing() -> None:
    """Replies count as XML after BOMs and blanks (UTF-8 and UTF-16); text does not."""
    envelope = _ENVELOPE.format("<x/>")
    for body in (
        envelope.encode(),
        b"\r\n  " + envelope.encode(),
        b"\xef\xbb\xbf" + envelope.encode(),
        envelope.encode("utf-16"),  # with its BOM
        envelope.encode("utf-16-be"),
    ):
        assert _is_xml(body), body[:8]
    for body in (b"", b" \r\n", b"Internal Error", b"401 Unauthorized", b" " * 5000 + b"<x/>"):
        assert not _is_xml(body), body[:8]


def test_small_helpers() -> None:
    """Text, UUID, MAC-list and identity helpers on junk input."""
    assert _clean_text(None) is None
    assert _clean_text(" \x00 ") is None
    assert _clean_uuid("URN:UUID:6F0E5A54-0000-4000-8000-00000000000A") == (
        "6f0e5a54-0000-4000-8000-00000000000a"
    )
    assert _clean_uuid("not-a-uuid") is None
    assert _clean_uuid(None) is None
    assert _last_enabled_mac(None) is None
    interfaces = [
        SimpleNamespace(Enabled=True, Info=SimpleNamespace(HwAddress="00:11:22:33:44:55")),
        SimpleNamespace(Enabled=False, Info=SimpleNamespace(HwAddress="66:77:88:99:aa:bb")),
        SimpleNamespace(Enabled=True, Info=None),
    ]
    assert _last_enabled_mac(interfaces) == "00:11:22:33:44:55"
    empty = OnvifDevice(None, None, None, None, None, (), snapshot_supported=False)
    assert empty.identity is None
    assert empty.primary_profile is None
    assert not empty.h265_only


# -- a reply within the byte cap but too big to parse in the loop ----------------------------

#: One GetProfiles profile as the virtual camera writes it: 29 tags ("<"), 552 bytes.
_PROFILE = (
    '<trt:Profiles token="main" fixed="true"><tt:Name>main</tt:Name>'
    '<tt:VideoSourceConfiguration token="vsc"><tt:Name>source</tt:Name>'
    "<tt:UseCount>2</tt:UseCount><tt:SourceToken>video0</tt:SourceToken>"
    '<tt:Bounds x="0" y="0" width="320" height="180"/></tt:VideoSourceConfiguration>'
    '<tt:VideoEncoderConfiguration token="enc"><tt:Name>main</tt:Name>'
    "<tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding><tt:Resolution>"
    "<tt:Width>320</tt:Width><tt:Height>180</tt:Height></tt:Resolution>"
    "<tt:Quality>5</tt:Quality></tt:VideoEncoderConfiguration></trt:Profiles>"
)


def _get_profiles_reply(tags: int) -> bytes:
    """A GetProfiles reply of copies of _PROFILE: at most ``tags`` tags, less than one short."""
    from virtualcam.onvif import envelope

    one = envelope(f"<trt:GetProfilesResponse>{_PROFILE}</trt:GetProfilesResponse>")
    copies = 1 + (tags - one.count(b"<")) // _PROFILE.count("<")
    return one.replace(_PROFILE.encode(), _PROFILE.encode() * copies)


async def _read_with_stall(reply: bytes) -> tuple[OnvifDevice | LocalCamError, float]:
    """read_device with ``reply`` to GetProfiles; its result and the longest loop stall."""
    stall, done = 0.0, False

    async def ticker() -> None:
        nonlocal stall
        while not done:
            start = time.monotonic()
            await asyncio.sleep(0.002)
            stall = max(stall, time.monotonic() - start - 0.002)

    def override(operation: str, _authenticated: bool) -> Reply | None:
        return (200, "application/soap+xml", reply) if operation == "GetProfiles" else None

    async with fronted_camera(override) as port:
        task = asyncio.create_task(ticker())
        try:
            result: OnvifDevice | LocalCamError = await read_device(
                "127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=10
            )
        except LocalCamError as err:
            result = err
        done = True
        await task
    return result, stall


async def test_a_reply_with_too_many_tags_is_refused_before_parsing() -> None:
    """A reply under the byte cap with more tags than MAX_SOAP_TAGS never reaches zeep.

    Twice the tag cap (~1.2 MB, under MAX_SOAP_REPLY) once cost ~0.3 s of
    zeep parsing inside the event loop; now it is refused with the byte cap's
    error, and the loop never stalls for long. A reply just under the cap
    still reads.
    """
    big = _get_profiles_reply(2 * MAX_SOAP_TAGS)
    assert len(big) < MAX_SOAP_REPLY
    result, stall = await _read_with_stall(big)
    assert isinstance(result, ProtocolError), result
    assert str(result) == f"the camera's reply is too large (over {MAX_SOAP_TAGS} XML tags)"
    assert stall < 0.1, f"the event loop stalled {stall * 1000:.0f} ms"

    fits = _get_profiles_reply(MAX_SOAP_TAGS)
    assert MAX_SOAP_TAGS - _PROFILE.count("<") < fits.count(b"<") <= MAX_SOAP_TAGS
    result, _stall = await _read_with_stall(fits)
    assert isinstance(result, OnvifDevice), result
    assert [profile.token for profile in result.profiles] == ["main"]  # one token, repeated


def _utf7(reply: bytes) -> bytes:
    """The same document, declared UTF-7, every "<" after the declaration written "+ADw-"."""
    decl, _, rest = reply.partition(b"?>")
    decl = decl.replace(b'encoding="UTF-8"', b'encoding="UTF-7"')
    return decl + b"?>" + rest.replace(b"<", b"+ADw-")


async def test_utf7_reply_with_too_many_tags_is_refused(socket_enabled: None) -> None:
    """The tag cap counts b"<"; a UTF-7 reply spells "<" as "+ADw-" and libxml2 decodes it.

    Parsed, such a reply stalled the event loop for most of a second.
    """
    big = _utf7(_get_profiles_reply(2 * MAX_SOAP_TAGS))
    assert len(big) < MAX_SOAP_REPLY
    assert big.count(b"<") <= 2
    result, stall = await _read_with_stall(big)
    assert isinstance(result, ProtocolError), result
    assert stall < 0.1, f"the event loop stalled {stall * 1000:.0f} ms"


async def test_utf7_behind_a_padded_xml_declaration_is_refused(socket_enabled: None) -> None:
    """The same reply with 300 spaces before its encoding: the whole declaration is read.

    Only its first 200 characters were, and such a reply got past the tag cap.
    """
    reply = _get_profiles_reply(2 * MAX_SOAP_TAGS)
    decl, _, rest = reply.partition(b"?>")
    decl = decl.replace(b'encoding="UTF-8"', b" " * 300 + b'encoding="UTF-7"')
    padded = decl + b"?>" + rest.replace(b"<", b"+ADw-")
    assert len(padded) < MAX_SOAP_REPLY
    assert padded.count(b"<") <= 2
    result, stall = await _read_with_stall(padded)
    assert isinstance(result, ProtocolError), result
    assert stall < 0.1, f"the event loop stalled {stall * 1000:.0f} ms"
    # A declaration that never ends within its bound is refused as well.
    endless = b'<?xml version="1.0"' + b" " * 5000 + rest
    result, _stall = await _read_with_stall(endless)
    assert isinstance(result, ProtocolError), result


async def test_odd_value_in_a_reply_logs_no_traceback(
    socket_enabled: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock reply with a non-numeric hour: the read works, and no ERROR traceback is logged.

    The identity check runs this read after fetches and at every health check, so a
    traceback per read floods the log with an error the user cannot act on.
    """
    odd_time = (
        "<tt:Time><tt:Hour>12h</tt:Hour><tt:Minute>00</tt:Minute><tt:Second>00</tt:Second>"
        "</tt:Time><tt:Date><tt:Year>2026</tt:Year><tt:Month>1</tt:Month><tt:Day>1</tt:Day>"
        "</tt:Date>"
    )
    reply = envelope(
        "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
        "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
        f"<tt:UTCDateTime>{odd_time}</tt:UTCDateTime>"
        "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
    )

    def answer(operation: str, _authenticated: bool) -> tuple[int, str, bytes] | None:
        return (200, "application/soap+xml", reply) if operation == "GetSystemDateAndTime" else None

    caplog.set_level(logging.WARNING)
    async with fronted_camera(answer) as port:
        device = await read_device(
            "127.0.0.1",
            port,
            USER,
            PASSWORD,
            policy=POLICY,
            timeout=5,
            with_media=False,
            only_serial=True,
        )
    assert device.serial == "VC-000123"
    assert device.clock_offset is None
    errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def _fault_with_subcode(subcode: str) -> bytes:
    """A SOAP 1.2 Sender fault whose Subcode holds ``subcode`` (raw XML)."""
    return envelope(
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value>"
        f"<s:Subcode>{subcode}</s:Subcode></s:Code>"
        '<s:Reason><s:Text xml:lang="en">Not supported</s:Text></s:Reason></s:Fault>'
    )


_ODD_SUBCODES = {
    "empty value": "<s:Value/>",
    "no value": "",
    "two colons": "<s:Value>ter:Action:NotSupported</s:Value>",
}


@pytest.mark.parametrize("odd", sorted(_ODD_SUBCODES))
@pytest.mark.parametrize("operation", ["GetNetworkInterfaces", "GetSystemDateAndTime"])
async def test_optional_query_with_an_odd_fault_is_skipped(
    socket_enabled: None, operation: str, odd: str
) -> None:
    """An optional query answered with a fault whose Subcode is odd: that part only is missing.

    With a readable non-auth subcode the query is skipped (test_onvif); with an empty or
    missing Subcode Value zeep raises AttributeError (ValueError for "a:b:c"), which
    _optional and _read_clock do not catch, and the whole read fails.
    """

    reply = _fault_with_subcode(_ODD_SUBCODES[odd])

    def answer(op: str, _authenticated: bool) -> tuple[int, str, bytes] | None:
        return (500, "application/soap+xml", reply) if op == operation else None

    async with fronted_camera(answer) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert device.serial == "VC-000123"
    assert [p.token for p in device.profiles] == ["main", "sub"]


_ODD_REPLIES = {
    "empty body": b"",  # <s:Body></s:Body>: zeep raises IndexError
    "no body": None,  # an Envelope without a Body: zeep raises TypeError
}


@pytest.mark.parametrize("odd", sorted(_ODD_REPLIES))
@pytest.mark.parametrize("operation", ["GetEndpointReference", "GetDeviceInformation"])
async def test_optional_query_with_an_empty_soap_body_is_skipped(
    socket_enabled: None, operation: str, odd: str
) -> None:
    """HTTP 200 with an empty SOAP Body (or none) to an optional query: that part is missing.

    Faults and plain-text answers to the same queries are skipped; this one fails the read.
    """
    if _ODD_REPLIES[odd] is None:
        reply = (
            b'<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>'
        )
    else:
        reply = envelope("")

    def answer(op: str, _authenticated: bool) -> tuple[int, str, bytes] | None:
        return (200, "application/soap+xml", reply) if op == operation else None

    async with fronted_camera(answer) as port:
        device = await read_device("127.0.0.1", port, USER, PASSWORD, policy=POLICY, timeout=5)
    assert device.mac == "aa:bb:cc:00:11:22"
    assert [p.token for p in device.profiles] == ["main", "sub"]


async def test_an_nvr_with_many_profiles_is_read_within_a_time_that_grows_with_them(
    socket_enabled: None,
) -> None:
    """40 profiles at 30 ms a request: about 2.5 s of requests, past a 2 s read limit.

    Each profile costs two requests (its stream and snapshot URIs), one after
    the other; a 32-channel NVR reports 64 profiles or more. With the limit
    fixed, such an NVR timed out at every read (its setup, and the health
    check's whole read every 15 minutes). The limit now grows by
    PROFILE_READ_SECONDS for each profile the device reports.
    """
    profiles = tuple(
        OnvifProfileSpec(f"ch{n}", f"Channel {n}", path=f"/stream/{n}", source=f"v{n}")
        for n in range(40)
    )
    async with onvif_camera(profiles=profiles, slow_delay=0.03) as cam:
        cam.fault = Fault.SLOW
        device = await read(cam, timeout=2.0)
        cam.fault = None
    assert len(device.profiles) == 40


def _profiles_reply(profile: str) -> bytes:
    return envelope(f"<trt:GetProfilesResponse>{profile}</trt:GetProfilesResponse>")


async def test_a_tag_with_a_flood_of_attributes_does_not_stall_the_loop() -> None:
    """One Profiles tag with 200 000 attributes: 2 MB, 36 tags, under both caps.

    lxml reads an element's attributes in time quadratic in their number, and
    zeep reads them in the event loop (where the read's asyncio timeout cannot
    interrupt it): this reply held the loop for about three minutes. It is
    refused before parsing; many tags of a sane number of attributes still read.
    """
    attributes = " ".join(f"a{i}=''" for i in range(200_000))
    reply = _profiles_reply(_PROFILE.replace('fixed="true"', f'fixed="true" {attributes}', 1))
    assert len(reply) < MAX_SOAP_REPLY
    assert reply.count(b"<") < MAX_SOAP_TAGS
    result, stall = await _read_with_stall(reply)
    assert isinstance(result, ProtocolError), result
    assert "attributes" in str(result)
    assert stall < 0.1, f"the event loop stalled {stall:.1f} s"

    # The most a tag may carry, on 100 profiles: read, without a long stall.
    some = " ".join(f"a{i}=''" for i in range(250))
    one = _PROFILE.replace('fixed="true"', f'fixed="true" {some}', 1)
    result, stall = await _read_with_stall(_profiles_reply(one * 100))
    assert isinstance(result, OnvifDevice), result
    assert stall < 0.1, f"the event loop stalled {stall:.1f} s"
