"""core.http.fetch against real aiohttp servers on 127.0.0.1 (HA-free)."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
import hashlib
import io
from ipaddress import ip_address
import logging
from pathlib import Path
import re
import secrets
import socket
import ssl
import threading
import time
from typing import Any
from unittest.mock import patch

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageOps
import pytest
import yarl

from custom_components.localcam.core import jpeg
from custom_components.localcam.core.errors import (
    CameraTimeoutError,
    CannotConnectError,
    CertificateError,
    InvalidAuthError,
    InvalidImageError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
)
from custom_components.localcam.core.http import (
    AuthMemory,
    HttpReply,
    _host_header,
    _same_host_hop,
    fetch,
)
from custom_components.localcam.core.models import CameraSource
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.snapshot import CameraClient
from custom_components.localcam.core.snapshot_cache import SnapshotCache
from virtualcam.tls import self_signed

USER = "viewer"
PASSWORD = "Secr3t-Pw:with@odd/chars"
QUERY_SECRET = "Secr3tQuery"
REALM = "LocalCam test"
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
SECRETS = (PASSWORD, QUERY_SECRET, "Secr3t")


@dataclass
class Seen:
    """One request as the server received it."""

    port: int
    path: str
    host: str | None
    authorization: str | None


@dataclass
class ServerState:
    """What a test server was asked, and the knobs a test turns."""

    seen: list[Seen] = field(default_factory=list)
    locations: dict[str, str] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    nonces: set[str] = field(default_factory=set)

    def auth_schemes(self, path: str) -> list[str | None]:
        """The auth scheme of each request to path, None when it carried none."""
        return [
            s.authorization.split(" ", 1)[0] if s.authorization else None
            for s in self.seen
            if s.path == path
        ]


def _basic_ok(header: str | None) -> bool:
    """Check a Basic Authorization header against USER/PASSWORD."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = aiohttp.BasicAuth.decode(header, encoding="utf-8")
    except ValueError:
        return False
    return (decoded.login, decoded.password) == (USER, PASSWORD)


_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _md5(text: str) -> str:
    """Hex MD5, as RFC 7616 Digest with algorithm=MD5 uses it."""
    return hashlib.md5(text.encode()).hexdigest()


def _digest_ok(state: ServerState, request: web.Request) -> bool:
    """Verify an RFC 7616 MD5/qop=auth Digest response, server side."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Digest "):
        return False
    params = {m[1]: m[2] or m[3] for m in _DIGEST_PARAM.finditer(header[7:])}
    required = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
    if any(key not in params for key in required):
        return False
    if params["nonce"] not in state.nonces or params["uri"] != request.raw_path:
        return False
    ha1 = _md5(f"{params['username']}:{params['realm']}:{PASSWORD}")
    ha2 = _md5(f"{request.method}:{params['uri']}")
    expected = _md5(
        f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{params['qop']}:{ha2}"
    )
    return params["username"] == USER and secrets.compare_digest(expected, params["response"])


def _digest_challenge(state: ServerState) -> str:
    """Issue a fresh nonce in a Digest challenge."""
    nonce = secrets.token_hex(16)
    state.nonces.add(nonce)
    return f'Digest realm="{REALM}", qop="auth", nonce="{nonce}", opaque="0pq", algorithm=MD5'


def _unauthorized(*challenges: str) -> web.Response:
    """A 401 carrying each challenge in its own WWW-Authenticate header."""
    response = web.Response(status=401, text="unauthorized")
    for challenge in challenges:
        response.headers.add("WWW-Authenticate", challenge)
    return response


def make_app(state: ServerState) -> web.Application:
    """A camera-like app: snapshots, auth schemes, redirects and misbehaviours."""
    routes = web.RouteTableDef()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], object]
    ) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        state.seen.append(
            Seen(
                port=sock[1] if sock else 0,
                path=request.path,
                host=request.headers.get("Host"),
                authorization=request.headers.get("Authorization"),
            )
        )
        result = await handler(request)  # type: ignore[misc]
        assert isinstance(result, web.StreamResponse)
        return result

    @routes.get("/plain")
    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    @routes.get("/host")
    async def host(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Host", ""))

    @routes.get("/basic")
    async def basic(request: web.Request) -> web.Response:
        if _basic_ok(request.headers.get("Authorization")):
            return web.Response(body=JPEG, content_type="image/jpeg")
        return _unauthorized(f'Basic realm="{REALM}"')

    @routes.get("/digest")
    async def digest(request: web.Request) -> web.Response:
        if _digest_ok(state, request):
            return web.Response(body=JPEG, content_type="image/jpeg")
        return _unauthorized(_digest_challenge(state))

    @routes.get("/both-digest-first")
    async def both_digest_first(request: web.Request) -> web.Response:
        if _digest_ok(state, request) or _basic_ok(request.headers.get("Authorization")):
            return web.Response(body=JPEG, content_type="image/jpeg")
        return _unauthorized(_digest_challenge(state), f'Basic realm="{REALM}"')

    @routes.get("/both-basic-first")
    async def both_basic_first(request: web.Request) -> web.Response:
        if _digest_ok(state, request) or _basic_ok(request.headers.get("Authorization")):
            return web.Response(body=JPEG, content_type="image/jpeg")
        return _unauthorized(f'Basic realm="{REALM}"', _digest_challenge(state))

    @routes.get("/bearer")
    async def bearer(request: web.Request) -> web.Response:
        return _unauthorized('Bearer realm="api"')

    @routes.get("/redirect/{count}")
    async def redirect(request: web.Request) -> web.Response:
        count = int(request.match_info["count"])
        if count == 0:
            return web.Response(body=JPEG, content_type="image/jpeg")
        raise web.HTTPFound(f"/redirect/{count - 1}?pwd={QUERY_SECRET}")

    @routes.get("/go/{name}")
    async def go(request: web.Request) -> web.Response:
        # Raw header: the Location may be deliberately malformed.
        location = state.locations[request.match_info["name"]]
        return web.Response(status=307, headers={"Location": location})

    @routes.get("/basic-go/{name}")
    async def basic_go(request: web.Request) -> web.Response:
        if not _basic_ok(request.headers.get("Authorization")):
            return _unauthorized(f'Basic realm="{REALM}"')
        raise web.HTTPFound(state.locations[request.match_info["name"]])

    @routes.get("/record")
    async def record_only(request: web.Request) -> web.Response:
        return web.Response(text="recorded")

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.Response:
        await state.release.wait()
        return web.Response(text="late")

    @routes.get("/big")
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000, content_type="image/jpeg")

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "image/jpeg"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"y" * 1000)
        await response.write_eof()
        return response

    @routes.get("/trickle")
    async def trickle(request: web.Request) -> web.StreamResponse:
        # Headers and the first bytes at once, the rest of the body 0.5 s later.
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = len(JPEG)
        await response.prepare(request)
        await response.write(JPEG[:5])
        await asyncio.sleep(0.5)
        await response.write(JPEG[5:])
        return response

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    @routes.get("/no-location")
    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302)

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    return app


@dataclass
class Camera:
    """A running test server and what it saw."""

    server: TestServer
    state: ServerState

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """An http URL for path on this server."""
        return f"http://{host}:{self.port}{path}"


async def _start(**kwargs: object) -> Camera:
    """Start a camera app on 127.0.0.1 with an ephemeral port."""
    state = ServerState()
    server = TestServer(make_app(state), host="127.0.0.1")
    # No access log: it would print the query strings this suite checks never leak.
    await server.start_server(access_log=None, **kwargs)  # type: ignore[arg-type]
    return Camera(server, state)


async def _stop(camera: Camera) -> None:
    """Let hanging handlers finish and close the server."""
    camera.state.release.set()
    await camera.server.close()


@pytest.fixture
async def cam(socket_enabled: None) -> AsyncIterator[Camera]:
    """The main test camera."""
    camera = await _start()
    yield camera
    await _stop(camera)


@pytest.fixture
async def other_cam(socket_enabled: None) -> AsyncIterator[Camera]:
    """A second camera on another port (another origin)."""
    camera = await _start()
    yield camera
    await _stop(camera)


@dataclass
class Traced:
    """Where the client session actually sent requests."""

    urls: list[str] = field(default_factory=list)


@pytest.fixture
async def traced() -> Traced:
    """A record of requests the session started."""
    return Traced()


@pytest.fixture
async def session(socket_enabled: None, traced: Traced) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session standing in for Home Assistant's shared one."""

    async def on_request_start(
        _session: aiohttp.ClientSession,
        _ctx: object,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        traced.urls.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as client:
        yield client


class FakeResolver:
    """Maps test names; anything else fails like an unknown name."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.names: dict[str, list[str]] = {
            "cam.lan": ["127.0.0.1"],
            "alias.lan": ["127.0.0.1"],
            "evil.example": ["203.0.113.9"],
        }

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]


@pytest.fixture
def resolver() -> FakeResolver:
    """The fake resolver."""
    return FakeResolver()


@pytest.fixture
def policy(resolver: FakeResolver) -> NetPolicy:
    """The default LAN policy with the fake resolver."""
    return NetPolicy(resolver=resolver)


def _only_loopback(traced: Traced) -> None:
    """Assert that every request went to 127.0.0.1."""
    assert traced.urls
    for url in traced.urls:
        assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), url


async def test_plain_get(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, traced: Traced
) -> None:
    """A plain GET returns status, content type, body and a safe final URL."""
    asked = time.monotonic()
    reply = await fetch(session, policy, cam.url(f"/plain?pwd={QUERY_SECRET}"))
    assert reply == HttpReply(
        status=200,
        content_type="image/jpeg",
        body=JPEG,
        final_url=f"http://127.0.0.1:{cam.port}/plain?pwd=***",
        answered_at=reply.answered_at,  # not compared; checked below
        address=ip_address("127.0.0.1"),  # the checked address it came from
    )
    assert asked <= reply.answered_at <= time.monotonic()
    assert cam.state.auth_schemes("/plain") == [None]
    assert QUERY_SECRET not in repr(reply)
    _only_loopback(traced)


async def test_hostname_pinned_with_host_header(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    resolver: FakeResolver,
    cam: Camera,
    traced: Traced,
) -> None:
    """A host name is resolved by the policy once; aiohttp gets the IP and the Host header."""
    reply = await fetch(session, policy, cam.url("/host", host="cam.lan"))
    assert reply.body.decode() == f"cam.lan:{cam.port}"
    assert reply.final_url == f"http://cam.lan:{cam.port}/host"
    assert resolver.calls == ["cam.lan"]
    assert traced.urls == [f"http://127.0.0.1:{cam.port}/host"]


async def test_basic_auth(session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera) -> None:
    """A Basic challenge is answered with Basic; nothing is sent before it is asked for."""
    reply = await fetch(session, policy, cam.url("/basic"), username=USER, password=PASSWORD)
    assert reply.body == JPEG
    assert cam.state.auth_schemes("/basic") == [None, "Basic"]


async def test_digest_auth(session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera) -> None:
    """A Digest challenge is answered with Digest: two requests at first contact, not three."""
    reply = await fetch(session, policy, cam.url("/digest"), username=USER, password=PASSWORD)
    assert reply.body == JPEG
    assert cam.state.auth_schemes("/digest") == [None, "Digest"]


async def test_digest_preferred_over_basic(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """When both are offered, Digest is used and the password never goes out as Basic."""
    url = cam.url("/both-digest-first")
    reply = await fetch(session, policy, url, username=USER, password=PASSWORD)
    assert reply.body == JPEG
    schemes = cam.state.auth_schemes("/both-digest-first")
    assert schemes[-1] == "Digest"
    assert "Basic" not in schemes


async def test_basic_listed_first_still_works(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """Basic listed before Digest: the request still succeeds (Basic is offered)."""
    url = cam.url("/both-basic-first")
    reply = await fetch(session, policy, url, username=USER, password=PASSWORD)
    assert reply.body == JPEG


@pytest.mark.parametrize("path", ["/basic", "/digest", "/both-digest-first"])
async def test_wrong_credentials(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, path: str
) -> None:
    """Credentials the camera rejects raise InvalidAuthError."""
    with pytest.raises(InvalidAuthError, match="rejected the credentials"):
        await fetch(session, policy, cam.url(path), username=USER, password="wrong")


@pytest.mark.parametrize("path", ["/basic", "/digest"])
async def test_missing_credentials(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, path: str
) -> None:
    """A 401 without credentials to offer raises InvalidAuthError."""
    with pytest.raises(InvalidAuthError, match="requires credentials"):
        await fetch(session, policy, cam.url(path))


async def test_unsupported_scheme_gets_no_password(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A Bearer-only challenge is not answered with our password."""
    with pytest.raises(InvalidAuthError):
        await fetch(session, policy, cam.url("/bearer"), username=USER, password=PASSWORD)
    assert cam.state.auth_schemes("/bearer") == [None]


async def test_colon_in_username(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A username Basic cannot carry is refused up front, without echoing it."""
    with pytest.raises(InvalidAuthError) as excinfo:
        await fetch(session, policy, cam.url("/basic"), username="a:Secr3tUser", password="x")
    assert "Secr3tUser" not in str(excinfo.value)
    assert cam.state.seen == []


async def test_redirect_chain_of_three(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """Three redirects are followed; the final URL is the last hop's, query masked."""
    reply = await fetch(session, policy, cam.url("/redirect/3"), max_redirects=3)
    assert reply.body == JPEG
    assert reply.final_url == f"http://127.0.0.1:{cam.port}/redirect/0?pwd=***"
    assert [s.path for s in cam.state.seen] == [f"/redirect/{n}" for n in (3, 2, 1, 0)]


async def test_redirect_chain_of_four_refused(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A fourth redirect is refused and never requested."""
    with pytest.raises(CannotConnectError, match="more than 3 redirects"):
        await fetch(session, policy, cam.url("/redirect/4"), max_redirects=3)
    assert [s.path for s in cam.state.seen] == [f"/redirect/{n}" for n in (4, 3, 2, 1)]


@pytest.mark.parametrize(
    ("location", "error", "reason"),
    [
        pytest.param(
            f"http://203.0.113.9/steal?pwd={QUERY_SECRET}",
            InvalidUrlError,
            "redirects to another host",
            id="public-literal",
        ),
        pytest.param(
            "http://evil.example:8080/x", InvalidUrlError, "another host", id="public-name"
        ),
        pytest.param("http://169.254.169.254/latest/", InvalidUrlError, "another host", id="meta"),
        pytest.param("http://[::ffff:203.0.113.9]/", InvalidUrlError, "another host", id="mapped"),
        pytest.param("http://2130706433/", InvalidUrlError, "another host", id="decimal"),
        pytest.param("http://xn--/", InvalidUrlError, "another host", id="bad-idna"),
        pytest.param("ftp://127.0.0.1/x", InvalidUrlError, "scheme ftp", id="ftp"),
        pytest.param("rtsp://127.0.0.1/x", InvalidUrlError, "scheme rtsp", id="rtsp"),
        pytest.param("http://u:p@127.0.0.1/", InvalidUrlError, "credentials in URL", id="userinfo"),
        pytest.param("http://[::1/x", InvalidUrlError, "invalid redirect location", id="malformed"),
    ],
)
async def test_redirect_checked_before_connecting(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    resolver: FakeResolver,
    cam: Camera,
    traced: Traced,
    location: str,
    error: type[LocalCamError],
    reason: str,
) -> None:
    """A redirect out of the camera's host (or to a refused URL) fails before any connection.

    Another host is refused before it is even looked up: the camera does not
    get to make LocalCam resolve names of its choosing.
    """
    cam.state.locations["out"] = location
    with pytest.raises(error, match=re.escape(reason)):
        await fetch(session, policy, cam.url("/go/out"))
    assert traced.urls == [f"http://127.0.0.1:{cam.port}/go/out"]
    assert resolver.calls == []


async def test_a_redirect_is_followed_only_within_the_camera_s_host() -> None:
    """Another host is refused (LAN device, loopback, another name); the same host is followed.

    LocalCam serves only what the camera itself serves: nothing after the
    fetch checks where a redirect went for a camera with no MAC on this link.
    """

    async def resolve(name: str, port: int) -> Sequence[str]:
        return {
            "cam.lan": ["192.168.1.20"],
            "alias.lan": ["192.168.1.20"],
            "localhost": ["127.0.0.1"],
        }[name]

    policy = NetPolicy(resolver=resolve)
    lan = await policy.check("http://cam.lan/snap.jpg")
    for url in (
        "http://127.0.0.1:8123/api/",  # Home Assistant's own services
        "http://localhost:8123/",
        "http://[::1]/",
        "http://192.168.1.21/x",  # another LAN device
        "http://192.168.1.20/x",  # the camera's address, not its name
        "http://alias.lan/x",  # another name for the same address
    ):
        with pytest.raises(InvalidUrlError, match=r"redirects to another host \(HTTP 302\)"):
            await _same_host_hop(lan, yarl.URL(url), 302, policy)
    for url in ("https://cam.lan:8443/x", "http://cam.lan:8080/other.jpg?size=1"):
        hop = await _same_host_hop(lan, yarl.URL(url), 302, policy)
        assert (hop.url, hop.host, hop.address) == (yarl.URL(url), "cam.lan", lan.address)
    here = await policy.check("http://127.0.0.1:8554/snap.jpg")
    hop = await _same_host_hop(here, yarl.URL("http://127.0.0.1:8555/other.jpg"), 307, policy)
    assert (hop.port, hop.address) == (8555, here.address)


async def test_a_redirect_to_another_lan_host_is_never_requested(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, traced: Traced
) -> None:
    """A camera that sends its still to another LAN device: an error, and no request there."""
    cam.state.locations["away"] = f"http://192.168.1.21/snap.jpg?pwd={QUERY_SECRET}"
    with pytest.raises(InvalidUrlError, match="redirects to another host") as err:
        await fetch(session, policy, cam.url("/go/away"))
    assert err.value.translation_key == "invalid_url"
    assert QUERY_SECRET not in str(err.value)
    assert "192.168.1.21" not in str(err.value)
    assert traced.urls == [f"http://127.0.0.1:{cam.port}/go/away"]


async def test_a_same_host_redirect_keeps_the_checked_address(
    session: aiohttp.ClientSession, resolver: FakeResolver, cam: Camera, traced: Traced
) -> None:
    """A redirect within the camera's host name goes to the address checked for it.

    The name resolves anew for the hop's policy check and answers another
    address now (round-robin, a flapping record): the hop still connects to
    the address the origin was checked at, never the second answer.
    """
    cam.state.locations["same"] = cam.url("/plain", host="cam.lan")
    answers = iter([["127.0.0.1"]])
    names = resolver.names

    async def flapping(host: str, port: int) -> Sequence[str]:
        names["cam.lan"] = next(answers, ["127.0.0.9"])
        return await resolver(host, port)

    reply = await fetch(session, NetPolicy(resolver=flapping), cam.url("/go/same", host="cam.lan"))
    assert reply.body == JPEG
    assert resolver.calls == ["cam.lan", "cam.lan"]
    assert traced.urls == [
        f"http://127.0.0.1:{cam.port}/go/same",
        f"http://127.0.0.1:{cam.port}/plain",
    ]
    assert [seen.host for seen in cam.state.seen] == [f"cam.lan:{cam.port}"] * 2


async def test_redirect_without_location(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A 302 without Location is an error, not a loop."""
    with pytest.raises(CannotConnectError, match="without Location"):
        await fetch(session, policy, cam.url("/no-location"))


async def test_credentials_kept_on_same_origin_redirect(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A redirect within the typed origin keeps the credentials."""
    cam.state.locations["same"] = "/basic"
    reply = await fetch(session, policy, cam.url("/go/same"), username=USER, password=PASSWORD)
    assert reply.body == JPEG
    assert cam.state.auth_schemes("/basic") == [None, "Basic"]


async def test_credentials_not_forwarded_cross_port(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    cam: Camera,
    other_cam: Camera,
) -> None:
    """Credentials accepted by the origin are not sent to a redirect target on another port."""
    cam.state.locations["away"] = other_cam.url("/record")
    reply = await fetch(
        session, policy, cam.url("/basic-go/away"), username=USER, password=PASSWORD
    )
    assert reply.body == b"recorded"
    assert cam.state.auth_schemes("/basic-go/away") == [None, "Basic"]
    assert other_cam.state.seen
    assert all(s.authorization is None for s in other_cam.state.seen)


async def test_credentials_follow_an_upgrade_to_https_of_the_same_host(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, tls_cam: TlsCamera
) -> None:
    """http://cam/... -> https://cam/... (an "HTTPS only" camera): the credentials go along.

    The same host at the same checked address, better protected. Without
    them, the camera's 401 read as wrong credentials: a reauth flow that no
    password could satisfy. The way back (https -> http) never carries them,
    and its 401 is no credentials error either.
    """
    cam.state.locations["secure"] = f"https://cam.lan:{tls_cam.camera.port}/basic"
    reply = await fetch(
        session,
        policy,
        cam.url("/go/secure", host="cam.lan"),
        username=USER,
        password=PASSWORD,
        verify_ssl=False,
    )
    assert reply.body == JPEG
    assert tls_cam.camera.state.auth_schemes("/basic") == [None, "Basic"]
    tls_cam.camera.state.locations["plain"] = cam.url("/basic", host="cam.lan")
    with pytest.raises(CannotConnectError, match="asks for credentials") as err:
        await fetch(
            session,
            policy,
            f"https://cam.lan:{tls_cam.camera.port}/go/plain",
            username=USER,
            password=PASSWORD,
            verify_ssl=False,
        )
    assert not isinstance(err.value, InvalidAuthError)
    assert cam.state.auth_schemes("/basic") == [None]


async def test_a_redirect_to_another_name_for_the_same_address_is_refused(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """Another host name is another host, even at the same address: refused, never requested.

    (So the credentials typed for the origin never reach it either.)
    """
    cam.state.locations["alias"] = cam.url("/basic", host="alias.lan")
    with pytest.raises(InvalidUrlError, match="redirects to another host"):
        await fetch(
            session,
            policy,
            cam.url("/basic-go/alias", host="cam.lan"),
            username=USER,
            password=PASSWORD,
        )
    assert cam.state.auth_schemes("/basic") == []


async def test_hanging_server_times_out(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A camera that never answers costs the timeout, then CameraTimeoutError."""
    start = time.monotonic()
    with pytest.raises(CameraTimeoutError):
        await fetch(session, policy, cam.url("/hang"), timeout=0.5)
    assert time.monotonic() - start < 1.0


async def test_hanging_resolver_bounded_by_fetch_timeout(
    session: aiohttp.ClientSession, cam: Camera
) -> None:
    """The overall deadline also covers name resolution."""

    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return ["127.0.0.1"]

    start = time.monotonic()
    with pytest.raises(CameraTimeoutError):
        await fetch(session, NetPolicy(resolver=slow), cam.url("/plain", "cam.lan"), timeout=0.3)
    assert time.monotonic() - start < 0.8


async def test_session_socket_timeout(policy: NetPolicy, cam: Camera) -> None:
    """A timeout of the (shared) session itself also surfaces as CameraTimeoutError."""
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(CameraTimeoutError, match="timed out"):
            await fetch(session, policy, cam.url("/hang"), timeout=5)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        pytest.param("http://cam.lan/", "cam.lan", id="default-port"),
        pytest.param("http://cam.lan:80/", "cam.lan", id="explicit-default"),
        pytest.param("https://cam.lan:8443/", "cam.lan:8443", id="other-port"),
        pytest.param("http://[fd00::5]:8080/", "[fd00::5]:8080", id="ipv6"),
        pytest.param("http://[fe80::1%25eth0]/", "[fe80::1]", id="zone-not-sent"),
        pytest.param("http://bücher.lan/", "xn--bcher-kva.lan", id="idna"),
    ],
)
async def test_host_header(url: str, host: str) -> None:
    """The Host header carries the typed name (IDNA), a non-default port, never a zone."""

    async def resolve(name: str, port: int) -> Sequence[str]:
        return ["10.0.0.5"]

    target = await NetPolicy(resolver=resolve).check(url)
    assert _host_header(target) == host


@pytest.mark.parametrize("path", ["/big", "/stream"])
async def test_body_over_max_bytes(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, path: str
) -> None:
    """A body over max_bytes is refused, with or without Content-Length."""
    with pytest.raises(CannotConnectError, match="response larger than 1000 bytes"):
        await fetch(session, policy, cam.url(path), max_bytes=1000)


async def test_body_at_max_bytes(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A body of exactly max_bytes is fine."""
    reply = await fetch(session, policy, cam.url("/stream"), max_bytes=10_000)
    assert len(reply.body) == 10_000


async def test_answered_at_is_when_the_headers_arrived(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A body that trickles in does not move the answer's time: the headers' arrival does."""
    reply = await fetch(session, policy, cam.url("/trickle"))
    done = time.monotonic()
    assert reply.body == JPEG
    assert done - reply.answered_at >= 0.45


@pytest.mark.parametrize("code", [404, 500, 503, 304])
async def test_non_2xx(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, code: int
) -> None:
    """Any other status raises CannotConnectError naming the status."""
    with pytest.raises(CannotConnectError, match=f"HTTP {code}"):
        await fetch(session, policy, cam.url(f"/status/{code}"))


async def test_connection_refused(
    session: aiohttp.ClientSession, policy: NetPolicy, socket_enabled: None
) -> None:
    """A closed port raises CannotConnectError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CannotConnectError):
        await fetch(session, policy, f"http://127.0.0.1:{port}/x")


async def test_public_url_refused_without_connecting(
    session: aiohttp.ClientSession, policy: NetPolicy, traced: Traced
) -> None:
    """The policy refuses a public URL before aiohttp sees it."""
    with pytest.raises(NotLocalError):
        await fetch(session, policy, "http://evil.example/snap.jpg")
    with pytest.raises(InvalidUrlError, match="credentials in URL"):
        await fetch(session, policy, "http://u:p@127.0.0.1/snap.jpg")
    assert traced.urls == []


# --- HTTPS: SNI and certificate checks go to the name the user typed. ---


@dataclass
class TlsFiles:
    """A self-signed certificate for cam.lan."""

    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Generate a throwaway self-signed certificate for cam.lan."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"), "cam.lan")
    return TlsFiles(cert=cert, key=key)


@dataclass
class TlsCamera:
    """An https camera and the SNI names its clients sent."""

    camera: Camera
    sni: list[str | None]


@pytest.fixture
async def tls_cam(
    socket_enabled: None, quiet_tls_rejects: None, tls_files: TlsFiles
) -> AsyncIterator[TlsCamera]:
    """An https test camera recording the SNI of each handshake."""
    sni: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)

    def on_sni(_sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(server_name)

    context.sni_callback = on_sni
    camera = await _start(ssl=context)
    yield TlsCamera(camera, sni)
    await _stop(camera)


async def test_https_sni_and_host_header(
    session: aiohttp.ClientSession, policy: NetPolicy, tls_cam: TlsCamera, traced: Traced
) -> None:
    """Over https the pinned connection still presents the typed name (SNI and Host)."""
    url = f"https://cam.lan:{tls_cam.camera.port}/host"
    reply = await fetch(session, policy, url, verify_ssl=False)
    assert reply.body.decode() == f"cam.lan:{tls_cam.camera.port}"
    assert tls_cam.sni == ["cam.lan"]
    assert traced.urls == [f"https://127.0.0.1:{tls_cam.camera.port}/host"]


async def test_https_verifies_certificates_by_default(
    session: aiohttp.ClientSession, policy: NetPolicy, tls_cam: TlsCamera
) -> None:
    """verify_ssl=True (the default) refuses a self-signed certificate, saying so."""
    url = f"https://cam.lan:{tls_cam.camera.port}/plain"
    with pytest.raises(CertificateError) as err:
        await fetch(session, policy, url)
    assert err.value.placeholders == {"reason": "self-signed certificate"}
    assert err.value.translation_key == "invalid_certificate"


# --- No secret in any error message or log line. ---


async def _failing_calls(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> list[LocalCamError]:
    """Provoke every kind of failure with secrets in the URL and the credentials."""
    cam.state.locations["out"] = f"http://203.0.113.9/?pwd={QUERY_SECRET}"
    q = f"?user={USER}&pwd={QUERY_SECRET}&token={QUERY_SECRET}"
    calls: list[tuple[str, dict[str, object]]] = [
        (cam.url(f"/basic{q}"), {"username": USER, "password": "Secr3t-wrong"}),
        (cam.url(f"/digest{q}"), {"username": USER, "password": "Secr3t-wrong"}),
        (cam.url(f"/status/500{q}"), {"username": USER, "password": PASSWORD}),
        (cam.url(f"/go/out{q}"), {"username": USER, "password": PASSWORD}),
        (cam.url(f"/redirect/9{q}"), {"username": USER, "password": PASSWORD}),
        (cam.url(f"/big{q}"), {"username": USER, "password": PASSWORD, "max_bytes": 10}),
        (cam.url(f"/hang{q}"), {"username": USER, "password": PASSWORD, "timeout": 0.2}),
        ("http://127.0.0.1:1/x" + q, {"username": USER, "password": PASSWORD}),
        ("http://nowhere.lan/x" + q, {"username": USER, "password": PASSWORD}),
        ("http://203.0.113.9/x" + q, {"username": USER, "password": PASSWORD}),  # public
        (f"http://u:{PASSWORD}@127.0.0.1/x{q}", {}),
    ]
    errors: list[LocalCamError] = []
    for url, kwargs in calls:
        with pytest.raises(LocalCamError) as excinfo:
            await fetch(session, policy, url, **kwargs)  # type: ignore[arg-type]
        errors.append(excinfo.value)
    return errors


def _exception_texts(err: BaseException) -> Iterator[str]:
    """Every text an error (and whatever it chains to) would show in a traceback."""
    seen: BaseException | None = err
    while seen is not None:
        yield str(seen)
        yield repr(seen)
        yield from (str(v) for v in getattr(seen, "placeholders", {}).values())
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


async def test_no_secret_in_errors_or_logs(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    cam: Camera,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No password or query value reaches an exception message or a log record."""
    caplog.set_level(logging.DEBUG)
    errors = await _failing_calls(session, policy, cam)
    assert {type(e) for e in errors} >= {
        InvalidAuthError,
        CannotConnectError,
        NotLocalError,
        CameraTimeoutError,
        InvalidUrlError,
    }
    for err in errors:
        for text in _exception_texts(err):
            for secret in SECRETS:
                assert secret not in text, f"{type(err).__name__} leaks: {text}"
    assert caplog.records, "fetch logs its hops at debug level"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in SECRETS:
            assert secret not in text, f"log leaks: {text}"


@pytest.mark.parametrize(("path", "scheme"), [("/digest", "Digest"), ("/basic", "Basic")])
async def test_auth_memory_answers_at_once(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera, path: str, scheme: str
) -> None:
    """A remembered scheme: the next fetch is one authorised request, not a bare one first."""
    memory = AuthMemory()
    for _ in range(3):
        reply = await fetch(
            session, policy, cam.url(path), username=USER, password=PASSWORD, auth_memory=memory
        )
        assert reply.body == JPEG
    schemes = cam.state.auth_schemes(path)
    first = schemes.index(scheme) + 1
    assert schemes[first:] == [scheme, scheme]  # fetches 2 and 3: one request each
    assert memory.scheme == scheme.lower()


async def test_auth_memory_sends_nothing_to_a_camera_that_never_asked(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """A camera that needs no credentials never receives any, on any fetch."""
    memory = AuthMemory()
    for _ in range(2):
        await fetch(
            session, policy, cam.url("/plain"), username=USER, password=PASSWORD, auth_memory=memory
        )
    assert cam.state.auth_schemes("/plain") == [None, None]
    assert memory.scheme is None


async def test_auth_memory_starts_over_after_a_401(
    session: aiohttp.ClientSession, policy: NetPolicy, cam: Camera
) -> None:
    """Remembered credentials that stop working fall back to a fresh challenge."""
    memory = AuthMemory()
    await fetch(
        session, policy, cam.url("/basic"), username=USER, password=PASSWORD, auth_memory=memory
    )
    with pytest.raises(InvalidAuthError):
        await fetch(
            session,
            policy,
            cam.url("/basic"),
            username=USER,
            password="changed",
            auth_memory=memory,
        )
    assert memory.scheme is None


async def test_an_mjpeg_snapshot_url_is_refused_at_its_headers(
    socket_enabled: None, session: aiohttp.ClientSession
) -> None:
    """A snapshot URL that streams MJPEG (/video.mjpg): a content-type error at once.

    Its reply never ends: read to the still's deadline, it cost the whole
    timeout, held one of the camera's connections, and said "did not
    answer in time" instead of what is wrong with the URL.
    """
    stream_ended = asyncio.Event()

    async def mjpeg(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
        )
        await response.prepare(request)
        try:
            for _ in range(300):
                await response.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG + b"\r\n"
                )
                await asyncio.sleep(0.1)
        finally:
            stream_ended.set()
        return response

    async with _still_url_client(session, mjpeg) as client:
        started = time.monotonic()
        with pytest.raises(InvalidImageError) as err:
            await client.fetch_snapshot(timeout=5.0)
        assert err.value.kind == "content_type"
        assert time.monotonic() - started < 1.0
        # The connection was given up, not read on.
        async with asyncio.timeout(5):
            await stream_ended.wait()


async def test_a_still_with_no_declared_type_is_judged_by_its_bytes(
    socket_enabled: None, session: aiohttp.ClientSession
) -> None:
    """A camera CGI that sends no Content-Type: its JPEG is served, its HTML page is not.

    aiohttp reads a missing header as application/octet-stream, which the
    type check refused: such a camera could not be added at all. (A raw
    server: aiohttp's own adds a Content-Type to every reply.)
    """
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 10)).save(buffer, "JPEG")
    still = buffer.getvalue()
    bodies = [still, b"<html><body>busy</body></html>"]

    async def untyped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(5):
            await reader.readuntil(b"\r\n\r\n")
        body = bodies.pop(0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(untyped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = CameraClient(
        session,
        NetPolicy(),
        CameraSource(
            camera_id="cam",
            stream_url="rtsp://127.0.0.1:9/none",
            snapshot_url=f"http://127.0.0.1:{port}/snap",
        ),
    )
    try:
        snapshot = await client.fetch_snapshot(timeout=5.0)
        assert (snapshot.jpeg, snapshot.width, snapshot.height) == (still, 32, 24)
        with pytest.raises(InvalidImageError) as err:
            await client.fetch_snapshot(timeout=5.0)
        assert err.value.kind == "not_jpeg"
        assert bodies == []
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def _still_url_client(
    session: aiohttp.ClientSession, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[CameraClient]:
    """A camera client whose snapshot URL ``handler`` answers, on 127.0.0.1."""
    app = web.Application()
    app.router.add_get("/snap", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)  # type: ignore[arg-type]
    source = CameraSource(
        camera_id="cam",
        stream_url="rtsp://127.0.0.1:9/none",
        snapshot_url=f"http://127.0.0.1:{server.port}/snap",
    )
    client = CameraClient(session, NetPolicy(), source)
    try:
        yield client
    finally:
        await client.close()
        await server.close()


async def test_a_card_sized_still_shows_the_same_way_up_as_the_full_one(
    socket_enabled: None, session: aiohttp.ClientSession
) -> None:
    """A camera whose JPEG says "turn me" (EXIF Orientation 6): every copy is upright.

    Browsers honour the tag on the camera's own JPEG; the card-sized copy
    LocalCam encodes carried no tag and showed sideways. The tag is applied
    once, so the full still and each card size show the same picture.
    """
    picture = Image.new("RGB", (64, 48), (200, 10, 10))
    picture.paste((10, 10, 200), (0, 0, 32, 48))  # left half blue: which way it is turned
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif.tobytes())
    body = buffer.getvalue()

    async def snap(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/jpeg")

    turned_in: list[threading.Thread] = []
    orient = jpeg.orient_jpeg

    def record_thread(*args: Any, **kwargs: Any) -> tuple[bytes, int, int]:
        turned_in.append(threading.current_thread())
        return orient(*args, **kwargs)

    jpeg.turbojpeg()  # loaded, so a small still could be finished inline
    async with _still_url_client(session, snap) as client:
        cache = SnapshotCache("cam", client.source.fingerprint, client.fetch_snapshot, max_age=5)
        try:
            with patch.object(jpeg, "orient_jpeg", record_thread):
                full = await cache.get()
                card = await cache.get(24, 32)
        finally:
            await cache.close()

    def as_shown(data: bytes) -> Image.Image:
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        assert shown is not None
        return shown.convert("RGB")

    # Turning decodes the whole picture: in a worker thread, never on the event loop.
    assert turned_in
    assert threading.main_thread() not in turned_in
    upright = as_shown(body)
    assert upright.size == (48, 64)
    for still in (full, card):
        shown = as_shown(still.jpeg)
        assert (still.width, still.height) == shown.size
        assert shown.size[0] < shown.size[1]  # portrait, as the camera meant it
        # The blue half is where the camera's own JPEG shows it (the top).
        assert [_bluer(shown, y) for y in (0.1, 0.9)] == [_bluer(upright, y) for y in (0.1, 0.9)]


def _bluer(picture: Image.Image, y: float) -> bool:
    """Whether the picture is more blue than red at its middle column, ``y`` of the way down."""
    pixel = picture.getpixel((picture.width // 2, int(picture.height * y)))
    assert isinstance(pixel, tuple)
    return bool(pixel[2] > pixel[0])
