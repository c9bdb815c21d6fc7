"""Read an ONVIF camera: identity, media profiles and the URIs it reports.

Safety guarantees of this layer:

* The configured host passes ``NetPolicy.check`` before anything is sent, and every SOAP
  request goes to that checked address (the library is given the literal address, and the
  Media service XAddr the camera reports is re-aimed at it), so a camera cannot steer
  LocalCam to another host. HTTP redirects are never followed: a 3xx is a ProtocolError.
* Every URI the camera reports (service XAddr, stream, snapshot) is parsed, stripped of
  embedded credentials and checked by the policy. A refused URI is dropped, never fetched,
  and listed in ``OnvifDevice.refused_uris``. A LAN URI on another host than the configured
  one (NAT, a stale self-address) is re-aimed at the configured host and listed in
  ``OnvifDevice.rewritten_uris``.
* Only ``core.errors`` escape. Messages and logs carry hosts and reasons, never credentials
  or full URIs (``netpolicy.display_url``). The onvif-zeep-async transport itself logs
  whole SOAP bodies at DEBUG on the ``onvif.zeep_aiohttp`` logger: during LocalCam's reads
  their WS-Security header (user, password digest, nonce) and the credentials a camera
  writes into its URIs are masked there (``_MaskedSoap``).
* The whole read is bounded by ``timeout``.
"""

import asyncio
from collections.abc import Iterable
import contextlib
import contextvars
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
import logging
import re
from typing import Any, Final, override
import uuid

import aiohttp
from onvif import ONVIFCamera  # type: ignore[import-untyped]
from onvif.exceptions import (  # type: ignore[import-untyped]
    ONVIFAuthError,
    ONVIFError,
    ONVIFTimeoutError,
)
import yarl
from zeep.exceptions import Error as ZeepError, Fault, TransportError

from .errors import (
    CameraTimeoutError,
    CannotConnectError,
    InvalidAuthError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
    ProtocolError,
)
from .identity import Identity, normalize_mac
from .netpolicy import CREDENTIAL_PARAMS, NetPolicy, display_url, mask_credential_pairs

_LOGGER = logging.getLogger(__name__)

# Set while LocalCam reads a device (read_device): zeep's traceback for a value
# it cannot convert (an hour of "12h") is then a debug line. The read goes on
# without that value, and the identity check repeats it at every health check:
# an ERROR with a traceback each minute, which nobody could act on. HA's own
# onvif integration, sharing the logger, is left as it is.
_READING: Final[contextvars.ContextVar[bool]] = contextvars.ContextVar(
    "localcam_onvif_reading", default=False
)
_ZEEP_VALUES_LOGGER: Final = "zeep.xsd.types.simple"
# The time limit of the read under way in this task (read_device), which the
# profiles' requests extend by PROFILE_READ_SECONDS each (_read_profiles).
_DEADLINE: Final[contextvars.ContextVar[asyncio.Timeout | None]] = contextvars.ContextVar(
    "localcam_onvif_deadline", default=None
)


class _QuietValueErrors(logging.Filter):
    """Turn zeep's per-value tracebacks during LocalCam's reads into one debug line."""

    @override
    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        if not _READING.get() or record.levelno < logging.ERROR:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        quiet = logging.makeLogRecord(record.__dict__)
        quiet.levelno, quiet.levelname = logging.DEBUG, "DEBUG"
        quiet.exc_info = quiet.exc_text = None
        return quiet


_zeep_values = logging.getLogger(_ZEEP_VALUES_LOGGER)
if not any(isinstance(f, _QuietValueErrors) for f in _zeep_values.filters):
    _zeep_values.addFilter(_QuietValueErrors())

_TRANSPORT_LOGGER: Final = "onvif.zeep_aiohttp"
# The WS-Security header of a request: the user name, and a digest of the
# password that can be guessed offline from the nonce and time beside it.
_WS_SECURITY: Final = re.compile(
    r"<(?:[\w.-]+:)?Security\b.*?</(?:[\w.-]+:)?Security\s*>", re.DOTALL | re.IGNORECASE
)
# A URI's credentials, as many cameras write them into the URIs they report
# (in its userinfo here; in name=value pairs, netpolicy.mask_credential_pairs).
_URI_USERINFO: Final = re.compile(r"([a-z][a-z0-9+.-]*://)[^\s/@<>\"'?#]*@", re.IGNORECASE)


class _MaskedSoap(logging.Filter):
    """Mask credentials in the SOAP bodies the ONVIF transport logs at DEBUG.

    During LocalCam's reads only; HA's own onvif integration shares the logger.
    """

    @override
    def filter(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        if not _READING.get():
            return True
        text = _WS_SECURITY.sub("<Security>(masked)</Security>", record.getMessage())
        text = mask_credential_pairs(_URI_USERINFO.sub(r"\1****:****@", text))
        masked = logging.makeLogRecord(record.__dict__)
        masked.msg, masked.args = text, None
        return masked


_transport = logging.getLogger(_TRANSPORT_LOGGER)
if not any(isinstance(f, _MaskedSoap) for f in _transport.filters):
    _transport.addFilter(_MaskedSoap())

MEDIA_NAMESPACE: Final = "http://www.onvif.org/ver10/media/wsdl"
DEFAULT_TIMEOUT: Final = 10.0
#: Profiles beyond this are ignored: real cameras have 2-6, an NVR a main and a sub stream
#: (sometimes a third) per channel, so a 32-channel NVR reports 64-96; a hostile device could
#: send 10 000. Each profile costs two requests (stream and snapshot URI), within the read's
#: timeout.
MAX_PROFILES: Final = 128
#: What each profile a device reports adds to the read's time limit: its two
#: URI requests, one after the other, at a slow camera's pace.
PROFILE_READ_SECONDS: Final = 0.25
#: ONVIF ReferenceToken is at most 64 characters; tokens end up in entity unique ids.
MAX_TOKEN_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 128
MAX_URI_LENGTH: Final = 2048
#: Largest SOAP reply read from a camera (after decompression); real ones are a few KiB, an
#: NVR's GetProfiles a few hundred.
MAX_SOAP_REPLY: Final = 2 * 1024 * 1024
#: Most XML tags (every "<": start, end and empty-element tags, comments) in one SOAP reply.
#: MAX_SOAP_REPLY bounds memory, not CPU: zeep parses the whole reply into objects in the
#: event loop, at about 4.5 us per tag (measured with GetProfiles replies through
#: read_device), so a 2 MiB reply of small elements (~110 000 tags) stalled the loop for
#: ~0.5 s. This cap holds a reply to about 0.15 s of zeep work (a 16 363-tag, 300 KB
#: GetProfiles took 76-131 ms). A camera's GetProfiles has a few hundred tags; an NVR's
#: has a few hundred per channel profile, so a 64-channel NVR with two rich profiles per
#: channel (PTZ, analytics: ~200 tags each) needs ~26 000: it must still be added.
MAX_SOAP_TAGS: Final = 32768
#: Most "=" between one "<" and the next (so most attributes and namespace declarations of
#: one tag). lxml reads an element's attributes in time quadratic in their number, and
#: zeep reads every element's attributes, more than once: one tag of 200 000 attributes
#: (a 2 MB reply) held the event loop for minutes. A real Envelope declares a few dozen
#: namespaces; an element has a handful of attributes.
MAX_TAG_ATTRIBUTES: Final = 256
HTTP_SCHEMES: Final = frozenset({"http", "https"})
STREAM_SCHEMES: Final = frozenset({"rtsp", "rtsps"})
# Fault subcodes (ONVIF ter: and WS-Security wsse:) that mean "wrong credentials".
_AUTH_SUBCODES: Final = frozenset(
    {"NotAuthorized", "FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken"}
)
#: What may come before the first "<" of an XML reply: BOMs (UTF-8/16), UTF-16 NULs, blanks.
_XML_LEAD: Final = b"\xef\xbb\xbf\xfe\xff\x00 \t\r\n"
_AUTH_MESSAGE_RE: Final = re.compile(r"(?i)not\s*authori[sz]ed|unauthori[sz]ed|authenticat")
_MAC_RE: Final = re.compile(r"^[0-9a-f]{12}$")
_PRINTABLE_RE: Final = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


class UriKind(StrEnum):
    """What a camera-reported URI is for."""

    SERVICE = "service"
    STREAM = "stream"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class RefusedUri:
    """A URI the camera reported that the policy refused; it was never fetched."""

    kind: UriKind
    profile_token: str | None
    uri: str  # display form: no userinfo, no query values
    reason: str


@dataclass(frozen=True, slots=True)
class RewrittenUri:
    """A LAN URI on another host than the configured one, re-aimed at the configured host."""

    kind: UriKind
    profile_token: str | None
    reported: str  # display form
    rewritten: str  # display form


@dataclass(frozen=True, slots=True)
class OnvifProfile:
    """One media profile with its checked, credential-free URIs."""

    token: str
    name: str
    encoding: str  # "H264", "H265", "JPEG", "MPEG4", ...
    width: int
    height: int
    stream_uri: str
    snapshot_uri: str | None


@dataclass(frozen=True, slots=True)
class OnvifDevice:
    """What an ONVIF camera says about itself, after policy checks."""

    manufacturer: str | None
    model: str | None
    firmware: str | None
    serial: str | None
    mac: str | None  # lower-case, colon separated
    profiles: tuple[OnvifProfile, ...]
    snapshot_supported: bool
    device_uuid: str | None = None  # from GetEndpointReference, lower-case, no urn: prefix
    refused_uris: tuple[RefusedUri, ...] = ()
    rewritten_uris: tuple[RewrittenUri, ...] = ()
    clock_offset: float | None = None  # camera clock minus ours, seconds; None if unknown

    @property
    def identity(self) -> str | None:
        """The MAC, else "serial:<serial>", else "uuid:<device uuid>", else None."""
        if self.mac:
            return self.mac
        if self.serial:
            return f"serial:{self.serial}"
        if self.device_uuid:
            return f"uuid:{self.device_uuid}"
        return None

    @property
    def device_identity(self) -> Identity:
        """What pins this device: its MAC (normalised), serial and UUID."""
        return Identity(mac=normalize_mac(self.mac), serial=self.serial, uuid=self.device_uuid)

    @property
    def h265_only(self) -> bool:
        """Whether the camera offers H.265 video but no H.264 profile."""
        encodings = {profile.encoding for profile in self.profiles}
        return "H265" in encodings and "H264" not in encodings

    @property
    def primary_profile(self) -> OnvifProfile | None:
        """The first H.264 profile (the camera's own order puts the main stream first)."""
        return next(
            (p for p in self.profiles if p.encoding == "H264"),
            self.profiles[0] if self.profiles else None,
        )


def format_mac(value: object) -> str | None:
    """Lower-case colon MAC from any common spelling; None for junk or all-zero."""
    if not isinstance(value, str):
        return None
    digits = re.sub(r"[\s:.\-]", "", value).lower()
    if not _MAC_RE.match(digits) or digits in ("000000000000", "ffffffffffff"):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _clean_text(value: object, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A camera-supplied string made printable and short; None when empty."""
    if value is None:
        return None
    text = _PRINTABLE_RE.sub("", str(value)).strip()[:limit]
    return text or None


def _clean_uuid(value: object) -> str | None:
    """A device UUID from "urn:uuid:...", "uuid:..." or a bare UUID."""
    text = _clean_text(value)
    if text is None:
        return None
    text = text.lower().removeprefix("urn:").removeprefix("uuid:")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _field(obj: object, name: str) -> Any:
    """An attribute of a zeep object, or None (cameras omit "required" elements)."""
    try:
        return getattr(obj, name, None)
    except AttributeError, KeyError, TypeError:
        return None


def _is_auth_fault(fault: Fault) -> bool:
    """Whether a SOAP fault means the credentials (or their timestamp) were refused."""
    for qname in fault.subcodes or ():
        local = getattr(qname, "localname", None) or str(qname).rpartition("}")[2]
        if local.rpartition(":")[2] in _AUTH_SUBCODES:
            return True
    code = str(fault.code or "").rpartition(":")[2]
    return code in _AUTH_SUBCODES or bool(_AUTH_MESSAGE_RE.search(str(fault.message or "")))


def _translate(err: BaseException, where: str) -> LocalCamError:
    """Map a library or transport error to a core error (no URLs, bodies or secrets)."""
    match err:
        case LocalCamError():
            return err
        case Fault() if _is_auth_fault(err):
            return InvalidAuthError(f"the camera refused the credentials ({where})")
        case Fault():
            return ProtocolError(f"the camera answered {where} with a SOAP fault")
        case TransportError() if err.status_code in (401, 403):
            return InvalidAuthError(f"the camera answered {where} with HTTP {err.status_code}")
        case TransportError() if 300 <= err.status_code < 400:
            return ProtocolError(
                f"the camera answered {where} with a redirect (HTTP {err.status_code}),"
                " which is not followed"
            )
        case _NotXmlError():
            return ProtocolError(
                f"the camera answered {where} with HTTP {err.status_code} but no XML"
            )
        case TransportError():
            return ProtocolError(f"the camera answered {where} with HTTP {err.status_code}")
        case ONVIFAuthError():
            return InvalidAuthError(f"the camera refused the credentials ({where})")
        case ONVIFTimeoutError() | TimeoutError():
            return CameraTimeoutError(f"the camera did not answer {where} in time")
        case ONVIFError() if err.__cause__ is not None and err.__cause__ is not err:
            return _translate(err.__cause__, where)
        case aiohttp.ClientConnectionError() | OSError():
            return CannotConnectError(f"cannot connect for {where}: {type(err).__name__}")
        case aiohttp.ClientError():
            return ProtocolError(f"HTTP error during {where}: {type(err).__name__}")
        case _:
            # zeep parse errors, ONVIFError and the AttributeError/TypeError a malformed
            # reply produces deep in zeep: the camera spoke, but nothing usable.
            return ProtocolError(f"unusable answer to {where}: {type(err).__name__}")


class _UriVetter:
    """Checks, cleans and re-aims the URIs one camera reports."""

    def __init__(self, policy: NetPolicy, host: str, address: IPv4Address | IPv6Address) -> None:
        """Remember the configured host and the address it was checked to."""
        self._policy = policy
        self._host = host.strip("[]").lower()
        self._address = address
        self.refused: list[RefusedUri] = []
        self.rewritten: list[RewrittenUri] = []

    def _refuse(self, kind: UriKind, token: str | None, shown: str, reason: str) -> None:
        """Record a refused URI (and log it once, without secrets)."""
        _LOGGER.debug("Refused %s URI %s reported by %s: %s", kind, shown, self._host, reason)
        self.refused.append(RefusedUri(kind, token, shown, reason))

    def _is_configured(self, host: str) -> bool:
        """Whether a URI host is the configured host or the address it resolved to."""
        if host.lower() == self._host:
            return True
        try:
            return ip_address(host.partition("%")[0]) == self._address
        except ValueError:
            return False

    async def vet(
        self, raw: object, kind: UriKind, token: str | None, schemes: frozenset[str]
    ) -> yarl.URL | None:
        """The cleaned, checked URI, or None (refusals are recorded)."""
        if not isinstance(raw, str) or not raw.strip():
            return None
        text = _fix_doubled_port(raw.strip())
        shown = display_url(text)
        if len(text) > MAX_URI_LENGTH:
            self._refuse(kind, token, shown[:120], "uri too long")
            return None
        try:
            url = yarl.URL(text)
        except ValueError, TypeError:
            self._refuse(kind, token, shown, "malformed url")
            return None
        if not url.absolute or not url.raw_host:
            self._refuse(kind, token, shown, "not an absolute url")
            return None
        url = _strip_credentials(url)
        if url.scheme not in schemes:
            self._refuse(kind, token, shown, "scheme not allowed here")
            return None
        try:
            await self._policy.check(url, schemes=schemes)
        except (InvalidUrlError, NotLocalError, CannotConnectError, CameraTimeoutError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            self._refuse(kind, token, shown, str(reason))
            return None
        if self._is_configured(url.host or ""):
            return url
        # A LAN address, but not the one we were told to use: behind NAT, or after a DHCP
        # change the camera has not noticed. The configured host is the one we trust.
        rewritten = url.with_host(self._host)
        try:
            await self._policy.check(rewritten, schemes=schemes)
        except (InvalidUrlError, NotLocalError, CannotConnectError, CameraTimeoutError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            self._refuse(kind, token, shown, str(reason))
            return None
        self.rewritten.append(RewrittenUri(kind, token, shown, display_url(rewritten)))
        _LOGGER.debug("Rewrote %s URI %s to the configured host", kind, shown)
        return rewritten


def _fix_doubled_port(text: str) -> str:
    """Repair "http://h:80:80/x", which some firmwares report (HA issue 92603)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if "[" not in hostport and hostport.count(":") > 1:
        hostport = hostport.rsplit(":", 1)[0]
    return f"{scheme}://{userinfo}{at}{hostport}{slash}{path}"


def _strip_credentials(url: yarl.URL) -> yarl.URL:
    """Drop userinfo and credential-named query parameters the camera embedded."""
    url = url.with_user(None)
    if url.raw_query_string:
        kept = [(k, v) for k, v in url.query.items() if k.lower() not in CREDENTIAL_PARAMS]
        if len(kept) != len(url.query):
            url = url.with_query(kept)
    return url


def _bracket(host: str) -> str:
    """Bracket a bare IPv6 literal for use in a URL."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _clock_offset(reply: object) -> timedelta | None:
    """Camera UTC clock minus ours, from a GetSystemDateAndTime reply."""
    utc = _field(reply, "UTCDateTime")
    date, time_ = _field(utc, "Date"), _field(utc, "Time")
    try:
        camera_now = datetime(
            int(_field(date, "Year")),
            int(_field(date, "Month")),
            int(_field(date, "Day")),
            int(_field(time_, "Hour")),
            int(_field(time_, "Minute")),
            int(_field(time_, "Second")),
            tzinfo=UTC,
        )
    except TypeError, ValueError, OverflowError:
        return None
    return camera_now - datetime.now(UTC)


def _last_enabled_mac(interfaces: object) -> str | None:
    """The MAC of the last enabled interface (HA's ONVIF rule, so unique ids agree)."""
    # Some cameras list a dummy interface first that has the same MAC on every unit.
    mac = None
    if not isinstance(interfaces, Iterable):
        return None
    for interface in list(interfaces)[:16]:
        if _field(interface, "Enabled"):
            mac = format_mac(_field(_field(interface, "Info"), "HwAddress")) or mac
    return mac


def _normalize_encoding(value: object) -> str:
    """H.264/H.265 spelled the way LocalCam compares them."""
    text = (_clean_text(value, 16) or "unknown").upper().replace(".", "")
    return "H265" if text == "HEVC" else text


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, or ProtocolError once it passes MAX_SOAP_REPLY or MAX_SOAP_TAGS.

    This is the layer that bounds what zeep parses in the event loop: in bytes
    (memory) and in tags (CPU). Counting "<" runs at C speed.
    """
    if (response.content_length or 0) > MAX_SOAP_REPLY:
        response.close()
        raise ProtocolError("the camera's reply is too large")
    chunks: list[bytes] = []
    size = tags = 0
    while chunk := await response.content.readany():
        size += len(chunk)
        tags += chunk.count(b"<")
        if size > MAX_SOAP_REPLY or tags > MAX_SOAP_TAGS:
            response.close()
            raise ProtocolError(
                "the camera's reply is too large"
                + ("" if size > MAX_SOAP_REPLY else f" (over {MAX_SOAP_TAGS} XML tags)")
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    # An attribute value holds no "<", so each tag's attributes lie between one "<" and
    # the next (with the text after the tag: an upper bound). At most MAX_SOAP_TAGS parts.
    if max(map(_count_equals, body.split(b"<"))) > MAX_TAG_ATTRIBUTES:
        raise ProtocolError(
            f"the camera's reply has a tag with over {MAX_TAG_ATTRIBUTES} attributes"
        )
    return body


def _count_equals(part: bytes) -> int:
    """How many "=" ``part`` holds."""
    return part.count(b"=")


# Encodings in which "<" is the byte _read_capped counts (UTF-16 and UTF-32
# declare themselves in their own encoding, where this pattern cannot match).
_TAG_COUNTED_ENCODINGS: Final = frozenset(
    {"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1", "iso-8859-15", "windows-1252"}
)
_XML_ENCODING_RE: Final = re.compile(rb"""\bencoding\s*=\s*["']([^"']*)["']""")
# An XML declaration is short; whitespace may pad it as long as the sender likes.
_MAX_XML_DECLARATION: Final = 4096


def _check_encoding(body: bytes) -> None:
    """Refuse a reply whose declared encoding writes "<" otherwise (UTF-7: "+ADw-").

    libxml2 decodes such a document, so its tags would escape the count that
    bounds what zeep parses in the event loop (_read_capped). The whole
    declaration is read, however much whitespace pads it.
    """
    head = body[: 2 * _MAX_XML_DECLARATION].lstrip(_XML_LEAD)[:_MAX_XML_DECLARATION]
    if not head.startswith(b"<?xml"):
        return
    end = head.find(b"?>")
    if end < 0:
        raise ProtocolError("the camera's reply has an XML declaration LocalCam does not read")
    declared = _XML_ENCODING_RE.search(head[:end])
    if declared is not None and declared[1].decode("ascii", "replace").lower() not in (
        _TAG_COUNTED_ENCODINGS
    ):
        raise ProtocolError("the camera's reply is in an encoding LocalCam does not read")


class _NotXmlError(TransportError):
    """A SOAP reply whose body is not XML at all (plain text, blank)."""


def _is_xml(body: bytes) -> bool:
    """Whether a reply body could be XML: "<" first, after any BOM and blanks."""
    return body[:4096].lstrip(_XML_LEAD).startswith(b"<")


def _is_soap(body: bytes) -> bool:
    """Whether a reply body looks like a SOAP envelope (not an HTML or text error page)."""
    return _is_xml(body) and b"Envelope" in body[:4096]


class _CappedResponse:
    """An aiohttp response whose body was already read, within the cap."""

    def __init__(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        """Keep the response for its status and headers."""
        self._response = response
        self._body = body

    async def read(self) -> bytes:
        """The body read by _read_capped."""
        return self._body

    def __getattr__(self, name: str) -> Any:
        """Everything else (status, headers, charset, ...) from the real response."""
        return getattr(self._response, name)


class _CappedSession:
    """The library's own session, but every reply body is read within _read_capped's caps."""

    # onvif-zeep-async reads whole bodies into memory (AIOHTTPTransport._post_internal):
    # without this a camera could answer with gigabytes until the timeout.

    def __init__(self, session: aiohttp.ClientSession) -> None:
        """Wrap the session the library created for one service."""
        self._session = session

    async def post(self, *args: Any, **kwargs: Any) -> _CappedResponse:
        """POST without redirects, read the body with the cap, refuse non-SOAP answers."""
        # A redirect would re-send the request, WS-Security token included, to a host the
        # policy never checked; aiohttp follows them unless told not to.
        kwargs["allow_redirects"] = False
        response = await self._session.post(*args, **kwargs)
        body = await _read_capped(response)
        _check_encoding(body)
        status = response.status
        if 300 <= status < 400 or (status in (401, 403) and not _is_soap(body)):
            # A 401/403 without a SOAP fault (text, HTML) refuses the credentials; one
            # with a fault goes to zeep, whose subcode tells an auth refusal from an
            # operation this account may not use. _translate and _optional know these.
            raise TransportError(status_code=status)  # type: ignore[no-untyped-call]
        if not _is_xml(body):
            # The library runs zeep with strict=False: "Internal Error" parses to None and
            # fails later as an AttributeError, which _optional cannot tell from a bug.
            raise _NotXmlError(status_code=status, content=body)  # type: ignore[no-untyped-call]
        return _CappedResponse(response, body)

    async def get(self, *args: Any, **kwargs: Any) -> _CappedResponse:
        """GET without redirects, then read the body with the cap."""
        kwargs["allow_redirects"] = False  # same reason as in post
        response = await self._session.get(*args, **kwargs)
        body = await _read_capped(response)
        _check_encoding(body)
        return _CappedResponse(response, body)

    def __getattr__(self, name: str) -> Any:
        """Everything else (closed, timeout, ...) from the real session."""
        return getattr(self._session, name)


def _capped(service: Any) -> Any:
    """Put a library service's transport behind _CappedSession."""
    transport = service.transport
    if not isinstance(transport.session, _CappedSession):
        transport.session = _CappedSession(transport.session)
    return service


class _Calls:
    """A library service whose operations are sent with WS-Security, or without it."""

    def __init__(self, service: Any, *, anonymous: bool) -> None:
        """Wrap the service; anonymous when no username was given."""
        self._service = service
        self._anonymous = anonymous

    def __getattr__(self, name: str) -> Any:
        """The operation, as the library's authless_ variant when anonymous."""
        # Without credentials the library would still build a UsernameToken (and fail on
        # the None password); cameras with authentication off expect no token at all.
        return getattr(self._service, f"authless_{name}" if self._anonymous else name)


async def _recreate_devicemgmt(camera: Any, service: Any) -> Any:
    """Rebuild the device service so its WS-Security tokens carry the new clock offset."""
    await service.close()
    camera.services.pop(service.binding_key, None)
    return _capped(await camera.create_devicemgmt_service())


# What zeep raises for an answer it cannot use: its own errors, and plain
# Python ones for some malformed SOAP (a fault whose Subcode has no Value:
# AttributeError; "a:b:c" as a QName: ValueError; an empty Body: IndexError;
# an Envelope without a Body: TypeError). Caught only around one query's
# call, so they cannot hide a bug elsewhere.
_UNUSABLE_ANSWER: Final = (ZeepError, AttributeError, IndexError, TypeError, ValueError)


async def _read_clock(camera: Any, devicemgmt: Any, *, anonymous: bool) -> tuple[Any, float | None]:
    """Learn the camera clock and authenticate with the camera's time, as HA does."""
    # The clock only helps tokens; a fault, an HTTP error or a non-XML answer leaves it
    # unknown, and the queries that follow show whether the camera is usable.
    try:
        reply = await devicemgmt.authless_GetSystemDateAndTime()
    except _UNUSABLE_ANSWER:
        if anonymous:
            return devicemgmt, None
        # Some firmwares want credentials even for the time; then tokens use our clock.
        try:
            reply = await devicemgmt.GetSystemDateAndTime()
        except _UNUSABLE_ANSWER:
            return devicemgmt, None
    offset = _clock_offset(reply)
    if offset is None:
        return devicemgmt, None
    camera.dt_diff = offset
    return await _recreate_devicemgmt(camera, devicemgmt), offset.total_seconds()


async def _optional(call: Any, where: str) -> Any:
    """Run an optional query: a non-auth fault or a bad reply means "not available" (None)."""
    try:
        return await call
    except Fault as err:
        if _is_auth_fault(err):
            raise
        _LOGGER.debug("Camera does not support %s", where)
    except TransportError as err:
        if err.status_code in (401, 403):
            raise
        _LOGGER.debug("Camera answered %s with HTTP %s", where, err.status_code)
    except _UNUSABLE_ANSWER as err:
        # Some firmwares put invalid UTF-8 or broken XML in optional answers (HA sees
        # this on GetDeviceInformation); the rest of the device is still usable.
        _LOGGER.debug("Camera sent an unusable answer to %s: %s", where, type(err).__name__)
    return None


async def _media_xaddr(devicemgmt: Any) -> object:
    """The Media (ver10) service XAddr, from GetServices or else GetCapabilities."""
    services = await _optional(devicemgmt.GetServices({"IncludeCapability": False}), "GetServices")
    if isinstance(services, Iterable):
        for service in list(services)[:64]:
            if _field(service, "Namespace") == MEDIA_NAMESPACE:
                return _field(service, "XAddr")
    capabilities = await devicemgmt.GetCapabilities({"Category": "Media"})
    return _field(_field(capabilities, "Media"), "XAddr")


async def _read_profiles(media: Any, vetter: _UriVetter) -> tuple[list[OnvifProfile], bool]:
    """Each video profile with its checked stream and snapshot URIs."""
    result = await media.GetProfiles()
    raw_profiles = list(result)[: MAX_PROFILES + 1] if isinstance(result, Iterable) else []
    if len(raw_profiles) > MAX_PROFILES:
        _LOGGER.debug("Camera reports more than %d profiles; the rest are ignored", MAX_PROFILES)
        raw_profiles = raw_profiles[:MAX_PROFILES]
    if (deadline := _DEADLINE.get()) is not None and (when := deadline.when()) is not None:
        # An NVR's 64 profiles are 128 requests: the read's limit grows with them.
        deadline.reschedule(when + PROFILE_READ_SECONDS * len(raw_profiles))
    profiles: list[OnvifProfile] = []
    snapshot_supported = False
    seen: set[str] = set()
    sources: dict[str, str | None] = {}  # token -> its video source (SourceToken)
    for raw in raw_profiles:
        token = _clean_text(_field(raw, "token"), MAX_TOKEN_LENGTH + 1)
        encoder = _field(raw, "VideoEncoderConfiguration")
        if not token or len(token) > MAX_TOKEN_LENGTH or token in seen or encoder is None:
            continue  # audio/metadata-only, unnamed or duplicate profiles carry no stream
        seen.add(token)
        resolution = _field(encoder, "Resolution")
        reply = await _optional(
            media.GetStreamUri(
                {
                    "ProfileToken": token,
                    "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                }
            ),
            "GetStreamUri",
        )
        stream = await vetter.vet(_field(reply, "Uri"), UriKind.STREAM, token, STREAM_SCHEMES)
        reply = await _optional(media.GetSnapshotUri({"ProfileToken": token}), "GetSnapshotUri")
        snapshot = await vetter.vet(_field(reply, "Uri"), UriKind.SNAPSHOT, token, HTTP_SCHEMES)
        snapshot_supported = snapshot_supported or snapshot is not None
        if stream is None:
            continue  # no usable stream: the refusal (if any) is already recorded
        source = _clean_text(
            _field(_field(raw, "VideoSourceConfiguration"), "SourceToken"), MAX_TOKEN_LENGTH
        )
        sources[token] = source
        profiles.append(
            OnvifProfile(
                token=token,
                name=_clean_text(_field(raw, "Name")) or token,
                encoding=_normalize_encoding(_field(encoder, "Encoding")),
                width=_positive_int(_field(resolution, "Width")),
                height=_positive_int(_field(resolution, "Height")),
                stream_uri=str(stream),
                snapshot_uri=str(snapshot) if snapshot is not None else None,
            )
        )
    return _own_snapshots(profiles, sources), snapshot_supported


def _own_snapshots(
    profiles: list[OnvifProfile], sources: dict[str, str | None]
) -> list[OnvifProfile]:
    """Leave out a snapshot URI that profiles of different video sources report.

    One URI shows one picture: reported for two sources (an NVR firmware that
    gives every channel channel 1's URI), it is another channel's still for
    at least one of them, and nothing tells which. Those profiles' stills
    come from their own streams. Profiles of one source (a channel's main
    and sub stream) may share one; a profile whose source is unknown
    does not count.
    """
    seen: dict[str, set[str]] = {}
    for profile in profiles:
        if profile.snapshot_uri and (source := sources.get(profile.token)):
            seen.setdefault(profile.snapshot_uri, set()).add(source)
    shared = {uri for uri, owners in seen.items() if len(owners) > 1}
    if shared:
        _LOGGER.debug("%d snapshot URI(s) reported for several video sources", len(shared))
    return [
        replace(profile, snapshot_uri=None) if profile.snapshot_uri in shared else profile
        for profile in profiles
    ]


def _positive_int(value: object) -> int:
    """A sane picture dimension, else 0 (unknown)."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except TypeError, ValueError:
        return 0
    return number if 0 < number <= 100_000 else 0


async def _read(
    host: str,
    port: int,
    address: IPv4Address | IPv6Address,
    username: str | None,
    password: str | None,
    policy: NetPolicy,
    with_media: bool = True,
    only_serial: bool = False,
) -> OnvifDevice:
    """Talk to the camera at its checked address; errors are translated by the caller."""
    camera = ONVIFCamera(str(address), port, username, password, no_cache=True)
    vetter = _UriVetter(policy, host, address)
    anonymous = not username
    step = "GetSystemDateAndTime"
    try:
        devicemgmt = _capped(await camera.create_devicemgmt_service())
        devicemgmt, offset = await _read_clock(camera, devicemgmt, anonymous=anonymous)
        device = _Calls(devicemgmt, anonymous=anonymous)
        step = "GetDeviceInformation"
        info = await _optional(device.GetDeviceInformation(), step)
        interfaces = reference = None
        if not only_serial:
            step = "GetNetworkInterfaces"
            interfaces = await _optional(device.GetNetworkInterfaces(), step)
            step = "GetEndpointReference"
            reference = await _optional(device.GetEndpointReference(), step)
        profiles: list[OnvifProfile] = []
        snapshot_supported = False
        step = "GetServices"
        raw_media = await _media_xaddr(device) if with_media else None
        media_url = await vetter.vet(raw_media, UriKind.SERVICE, None, HTTP_SCHEMES)
        if with_media and media_url is None and not vetter.refused:
            raise ProtocolError("the camera reports no media service")
        if media_url is not None:
            # Aim the library at the checked address, whatever name the XAddr carries.
            camera.xaddrs[MEDIA_NAMESPACE] = str(media_url.with_host(str(address)))
            step = "GetProfiles"
            media = _Calls(_capped(await camera.create_media_service()), anonymous=anonymous)
            profiles, snapshot_supported = await _read_profiles(media, vetter)
    except Exception as err:  # noqa: BLE001  (only core errors may escape; see _translate)
        # "from None": library errors can quote reply bodies, which may hold credentials.
        raise _translate(err, step) from None
    finally:
        with contextlib.suppress(Exception):
            await camera.close()
    return OnvifDevice(
        manufacturer=_clean_text(_field(info, "Manufacturer")),
        model=_clean_text(_field(info, "Model")),
        firmware=_clean_text(_field(info, "FirmwareVersion")),
        serial=_clean_text(_field(info, "SerialNumber")),
        mac=_last_enabled_mac(interfaces),
        profiles=tuple(profiles),
        snapshot_supported=snapshot_supported,
        device_uuid=_clean_uuid(_field(reference, "GUID")),
        refused_uris=tuple(vetter.refused),
        rewritten_uris=tuple(vetter.rewritten),
        clock_offset=offset,
    )


async def read_device(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    *,
    policy: NetPolicy,
    timeout: float = DEFAULT_TIMEOUT,
    with_media: bool = True,
    only_serial: bool = False,
) -> OnvifDevice:
    """Read identity and media profiles from the ONVIF camera at host:port.

    With ``with_media=False`` only who the device is (information, interfaces,
    endpoint reference): no profiles and no URIs, a few light requests. With
    ``only_serial`` too, the clock and the device information alone (two
    requests): enough to tell a camera whose serial is known from any other.
    """
    base = _device_url(host, port)
    shown = display_url(base)
    reading = _READING.set(True)
    limit = _DEADLINE.set(None)
    try:
        async with asyncio.timeout(timeout) as deadline:
            _DEADLINE.set(deadline)
            target = await policy.check(base, schemes=HTTP_SCHEMES)
            return await _read(
                host, port, target.address, username, password, policy, with_media, only_serial
            )
    except TimeoutError:
        raise CameraTimeoutError(
            f"ONVIF camera at {shown} did not answer within {timeout:g} s", host=host
        ) from None
    finally:
        _DEADLINE.reset(limit)
        _READING.reset(reading)


def _device_url(host: str, port: int) -> str:
    """http://host:port/ for a bare host, refusing anything that smuggles in more."""
    if not 1 <= port <= 65535:
        raise InvalidUrlError(f"port {port} is out of range")
    base = f"http://{_bracket(host.strip())}:{port}/"
    try:
        url = yarl.URL(base)
    except ValueError, TypeError:
        raise InvalidUrlError("invalid host") from None
    # "10.0.0.5/x?" or "a@b" would otherwise slip a path, query or userinfo in.
    if (
        (url.raw_host or "").lower() != host.strip().strip("[]").lower()
        or url.explicit_port != port
        or url.raw_path_qs != "/"
        or url.raw_user is not None
    ):
        raise InvalidUrlError("invalid host")
    return base
