"""Bounded HTTP GET against a LAN camera through Home Assistant's shared session.

The shared session's connector and resolver cannot be changed, so every hop is
first approved by ``NetPolicy.check`` and then requested as the pinned
IP-literal URL with the original ``Host`` header (and SNI/certificate name for
https). aiohttp therefore never resolves a name itself and the connection goes
to the address the policy checked. Redirects are followed here, one policy
check per hop, and credentials only ever go to the origin the user typed.

This module guarantees that an answer comes from the host the caller named:
a redirect is followed only within that host (another path, port or scheme),
at the address checked for it. LocalCam shows only what the camera itself
serves, as its RTSP path does: a still from another device would be served
as this camera's, and for a camera with no MAC on this link, or one known by
its URL alone, no later identity check looks at the redirect's target.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
import logging
import re
import time
from typing import Final

import aiohttp
from aiohttp import hdrs
import yarl

from .errors import (
    CameraTimeoutError,
    CannotConnectError,
    CertificateError,
    InvalidAuthError,
    InvalidUrlError,
    ReplyTooLargeError,
    certificate_reason,
)
from .netpolicy import DEFAULT_PORTS, NetPolicy, Target, display_url

_LOGGER: Final = logging.getLogger(__name__)

HTTP_SCHEMES: Final = frozenset({"http", "https"})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK_SIZE: Final = 64 * 1024
# An auth-scheme token: at the start of a challenge list or after a comma, and
# followed by parameters (not "=", which would make it a parameter name).
_AUTH_SCHEME_RE: Final = re.compile(
    r"(?:^|,)\s*([!#$%&'*+.^_`|~0-9A-Za-z\-]+)(?=\s+[^\s=]|\s*,|\s*$)"
)

type Credentials = tuple[str, str]
# Runs before any request that may carry credentials goes to a target (the
# identity layer's link check, see CameraClient.guard_credentials); what it
# raises ends the fetch, nothing sent.
type BeforeCredentials = Callable[[Target], Awaitable[None]]
# Called with a 2xx reply's declared content type before its body is read;
# raises to refuse the reply (the snapshot path: anything but a JPEG).
type CheckContentType = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A complete, size-bounded 2xx answer from a camera."""

    status: int
    content_type: str
    body: bytes = field(repr=False)
    final_url: str
    # time.monotonic() when the answer's status line and headers had arrived,
    # before its body was read: the camera had the picture by then, so this
    # is how old a still is however slowly its body trickles in.
    answered_at: float = field(compare=False)
    # The checked address the answer came from (after redirects): the
    # identity layer looks up that address's MAC.
    address: IPv4Address | IPv6Address | None = None


@dataclass(slots=True)
class AuthMemory:
    """The scheme a camera asked for, kept so later fetches answer it at once.

    Without it every still costs a Digest camera three requests (a bare GET,
    the middleware's own bare GET, then the authorised one). With it, the
    kept middleware authenticates preemptively with the camera's nonce: one
    request while the nonce lasts. Bound to the pinned origin it was learnt
    from; a 401 or another origin starts over from a bare request.
    """

    origin: str | None = None
    scheme: str | None = None
    digest: aiohttp.DigestAuthMiddleware | None = field(default=None, repr=False)

    def forget(self) -> None:
        """Start over with a bare request next time."""
        self.origin = self.scheme = None
        self.digest = None


async def fetch(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    verify_ssl: bool = True,
    timeout: float = 8.0,
    max_bytes: int = 8 * 1024 * 1024,
    max_redirects: int = 3,
    auth_memory: AuthMemory | None = None,
    before_credentials: BeforeCredentials | None = None,
    check_content_type: CheckContentType | None = None,
) -> HttpReply:
    """GET a credential-free LAN URL, following checked redirects, within one deadline."""
    credentials: Credentials | None = None
    if username is not None or password is not None:
        credentials = (username or "", password or "")
        if ":" in credentials[0]:
            # Basic auth cannot carry it, and aiohttp would raise with the value.
            raise InvalidAuthError("username must not contain a colon")
    try:
        async with asyncio.timeout(timeout):
            return await _follow(
                session,
                policy,
                url,
                credentials=credentials,
                verify_ssl=verify_ssl,
                max_bytes=max_bytes,
                max_redirects=max_redirects,
                auth_memory=auth_memory,
                before_credentials=before_credentials,
                check_content_type=check_content_type,
            )
    except TimeoutError:
        raise CameraTimeoutError(
            f"{display_url(url)} did not answer within {timeout:g} s"
        ) from None


async def _follow(
    session: aiohttp.ClientSession,
    policy: NetPolicy,
    url: str,
    *,
    credentials: Credentials | None,
    verify_ssl: bool,
    max_bytes: int,
    max_redirects: int,
    auth_memory: AuthMemory | None = None,
    before_credentials: BeforeCredentials | None = None,
    check_content_type: CheckContentType | None = None,
) -> HttpReply:
    """Run the request/redirect loop; every hop is policy-checked before connecting."""
    origin = await policy.check(url, schemes=HTTP_SCHEMES)
    target = origin
    for redirects in range(max_redirects + 1):
        # Credentials stay with the origin the user typed them for, or its
        # upgrade to HTTPS (every hop is the same host at the same checked
        # address). Without them there, an "HTTPS only" camera's 401 read as
        # wrong credentials, a reauth no password could ever satisfy.
        hop_credentials = credentials if _credentials_go(target, origin) else None
        if hop_credentials is not None and before_credentials is not None:
            # Before the first request: a remembered scheme sends them at once,
            # and aiohttp's Digest middleware answers a challenge by itself.
            await before_credentials(target)
        _LOGGER.debug("GET %s via %s", display_url(target.url), target.address)
        try:
            memory = auth_memory if hop_credentials is not None and target is origin else None
            async with _exchange(session, target, hop_credentials, verify_ssl, memory) as response:
                # Headers in, body not yet read (aiohttp returns at the headers).
                answered_at = time.monotonic()
                status = response.status
                if status in REDIRECT_STATUSES:
                    location = response.headers.get(hdrs.LOCATION)
                elif status == 401 and credentials is not None and hop_credentials is None:
                    # The redirect left the origin the credentials are for: no
                    # new password can answer this, so it is no credentials
                    # error (which would start a reauth flow).
                    raise CannotConnectError(
                        f"it redirects to {display_url(target.url)}, which asks for "
                        "credentials: enter that URL"
                    )
                elif status == 401:
                    raise InvalidAuthError(
                        f"{display_url(target.url)} rejected the credentials"
                        if hop_credentials
                        else f"{display_url(target.url)} requires credentials"
                    )
                elif not 200 <= status < 300:
                    raise CannotConnectError(f"HTTP {status} from {display_url(target.url)}")
                else:
                    # The type as declared: "" when the camera sends none
                    # (aiohttp's content_type would say application/octet-stream).
                    content_type = response.headers.get(hdrs.CONTENT_TYPE, "")
                    if check_content_type is not None:
                        check_content_type(content_type)
                    body = await _read_body(response, max_bytes)
                    return HttpReply(
                        status=status,
                        content_type=content_type,
                        body=body,
                        final_url=display_url(target.url),
                        answered_at=answered_at,
                        address=target.address,
                    )
        except TimeoutError:
            # aiohttp's own socket timeouts; the overall deadline arrives as a
            # cancellation instead and is turned into CameraTimeoutError by fetch().
            raise CameraTimeoutError(f"{display_url(target.url)} timed out") from None
        except aiohttp.ClientConnectorCertificateError as err:
            raise CertificateError(certificate_reason(err.certificate_error)) from None
        except (aiohttp.ClientError, OSError) as err:
            # "from None": aiohttp messages can quote the full URL with its query.
            raise CannotConnectError(
                f"cannot fetch {display_url(target.url)}: {type(err).__name__}"
            ) from None

        if not location:
            raise CannotConnectError(
                f"HTTP {status} without Location from {display_url(target.url)}"
            )
        if redirects == max_redirects:
            raise CannotConnectError(f"more than {max_redirects} redirects")
        try:
            next_url = target.url.join(yarl.URL(location))
        except ValueError, TypeError:
            raise InvalidUrlError("invalid redirect location") from None
        # The redirect target is checked exactly like the original URL, before
        # any connection to it: a redirect is how a LAN host could bounce us out.
        target = await _same_host_hop(origin, next_url, status, policy)
        _LOGGER.debug("Redirected (%s) to %s", status, display_url(target.url))
    raise AssertionError("unreachable")  # pragma: no cover


async def _same_host_hop(
    origin: Target, next_url: yarl.URL, status: int, policy: NetPolicy
) -> Target:
    """Follow a redirect only to the camera's own host, at the address checked for it.

    Another host (another LAN device, this machine's own services, even a
    second name for the same address) is refused before any connection to it:
    its picture would be served as this camera's. Another path, port or scheme
    of the same host is the camera's own. The hop keeps the origin's checked
    address: a second lookup of the same name (round-robin or flapping DNS)
    must not move the connection to a device nobody checked. Another host is
    refused before it is even looked up: the camera does not get to make
    LocalCam resolve names of its choosing.
    """
    try:
        same_host = next_url.host == origin.url.host
    except ValueError, UnicodeError:  # an "xn--" label that is not valid IDNA
        same_host = False
    if not same_host:
        # Only the status: the Location may point anywhere, and is not repeated.
        raise InvalidUrlError(f"it redirects to another host (HTTP {status})")
    # The camera's own host: its URL is still checked like the original one
    # (scheme, credentials, port, where the name points now) before any
    # connection, which then goes to the address checked for the origin.
    await policy.check(next_url, schemes=HTTP_SCHEMES)
    pinned = origin.for_url(next_url)
    assert pinned is not None  # the same host, in a URL the policy accepted
    return pinned


def _credentials_go(target: Target, origin: Target) -> bool:
    """Tell whether a hop may carry the credentials typed for ``origin``.

    The origin itself (scheme, host, port), or the same host over HTTPS when
    the origin was plain HTTP: as a browser upgrading a site, the password
    then travels better protected, to the device it was typed for.
    """
    if target.host != origin.host:
        return False
    if (target.url.scheme, target.port) == (origin.url.scheme, origin.port):
        return True
    return (origin.url.scheme, target.url.scheme) == ("http", "https")


def _host_header(target: Target) -> str:
    """Return the Host header the camera expects: name as typed, port when not default."""
    host = target.host.partition("%")[0]  # a zone id is local and never sent
    if ":" in host:
        host = f"[{host}]"
    if target.port != DEFAULT_PORTS[target.url.scheme]:
        host = f"{host}:{target.port}"
    return host


def _offered_schemes(challenges: Collection[str]) -> set[str]:
    """Return the lower-case auth schemes offered by WWW-Authenticate headers."""
    return {
        match.group(1).lower()
        for challenge in challenges
        for match in _AUTH_SCHEME_RE.finditer(challenge)
    }


async def _send(
    session: aiohttp.ClientSession,
    target: Target,
    verify_ssl: bool,
    *,
    authorization: str | None = None,
    middlewares: tuple[aiohttp.DigestAuthMiddleware, ...] | None = None,
) -> aiohttp.ClientResponse:
    """Send one GET to the pinned address; the caller releases the response."""
    # The IP-literal URL means aiohttp connects to the checked address without
    # resolving anything; Host and server_hostname keep the camera's view intact.
    request_url = yarl.URL(target.pinned_url(), encoded=True)
    server_hostname = None
    if target.url.scheme == "https" and target.host != str(target.address):
        server_hostname = target.host
    headers = {hdrs.HOST: _host_header(target)}
    if authorization is not None:
        headers[hdrs.AUTHORIZATION] = authorization
    return await session.request(
        hdrs.METH_GET,
        request_url,
        headers=headers,
        allow_redirects=False,
        raise_for_status=False,
        middlewares=middlewares,
        ssl=verify_ssl,  # False skips certificate checks for self-signed cameras
        server_hostname=server_hostname,
    )


@asynccontextmanager
async def _exchange(
    session: aiohttp.ClientSession,
    target: Target,
    credentials: Credentials | None,
    verify_ssl: bool,
    memory: AuthMemory | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Do one GET, answering a 401 challenge with Digest when offered, else Basic.

    Requests per still: a remembered scheme, 1; a first contact, 2 (the bare
    request, then the answer to its challenge); no credentials needed, 1.
    """
    origin = f"{target.url.scheme}://{target.address}:{target.port}"
    response: aiohttp.ClientResponse | None = None
    if credentials is not None and memory is not None and memory.origin == origin:
        # This camera asked before: answer in its scheme straight away.
        if memory.digest is not None:
            response = await _send(session, target, verify_ssl, middlewares=(memory.digest,))
        else:
            basic = aiohttp.encode_basic_auth(credentials[0], credentials[1])
            response = await _send(session, target, verify_ssl, authorization=basic)
        if response.status == 401:
            response.release()
            response = None
            memory.forget()
    digest: aiohttp.DigestAuthMiddleware | None = None
    if response is None:
        # The first try carries no credentials. With credentials to offer it
        # goes through aiohttp's Digest middleware, which sends nothing unless
        # the camera's (first) challenge is Digest and then answers it at once:
        # a Digest camera costs two requests, not three. The password itself
        # only ever goes out as Basic to a camera that offers Basic.
        if credentials is not None:
            digest = aiohttp.DigestAuthMiddleware(credentials[0], credentials[1])
        middlewares = (digest,) if digest is not None else None
        response = await _send(session, target, verify_ssl, middlewares=middlewares)
        if digest is not None and _sent_digest(response):
            _remember(memory, origin, response, digest)
    try:
        if response.status == 401 and credentials is not None and not _sent_digest(response):
            offered = _offered_schemes(response.headers.getall(hdrs.WWW_AUTHENTICATE, ()))
            if "basic" in offered:
                # Digest was not engaged (not offered, or listed after Basic):
                # Basic is what the camera offers, so it is not a downgrade.
                response.release()
                # aiohttp 3.14 deprecates BasicAuth/auth= in favour of this header.
                basic = aiohttp.encode_basic_auth(credentials[0], credentials[1])
                response = await _send(session, target, verify_ssl, authorization=basic)
                _remember(memory, origin, response, None)
        yield response
    finally:
        response.release()


def _sent_digest(response: aiohttp.ClientResponse) -> bool:
    """Tell whether the request behind this response carried a Digest answer."""
    sent = response.request_info.headers.get(hdrs.AUTHORIZATION, "")
    return sent.lower().startswith("digest")


def _remember(
    memory: AuthMemory | None,
    origin: str,
    response: aiohttp.ClientResponse,
    digest: aiohttp.DigestAuthMiddleware | None,
) -> None:
    """Keep the scheme that just worked for this camera's origin."""
    if memory is None or response.status == 401:
        return
    memory.origin = origin
    memory.scheme = "digest" if digest is not None else "basic"
    memory.digest = digest


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the body in chunks, refusing more than max_bytes (even if compressed)."""
    too_large = f"response larger than {max_bytes} bytes"
    if response.content_length is not None and response.content_length > max_bytes:
        raise ReplyTooLargeError(too_large)
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK_SIZE):
        body += chunk
        if len(body) > max_bytes:
            raise ReplyTooLargeError(too_large)
    return bytes(body)
