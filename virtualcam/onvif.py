"""ONVIF Device and Media (ver10) SOAP services of a virtual camera.

Served on the camera's HTTP server at /onvif/device_service and /onvif/media_service. Every
operation except GetSystemDateAndTime needs a WS-Security UsernameToken with a PasswordDigest
(base64(sha1(nonce + created + password))) whose Created lies within CLOCK_SKEW seconds of the
camera's own clock (real time + clock_offset), like a strict real camera. Faults set on the
camera apply here too (REFUSE, HANG, SLOW, UNAUTHORIZED, DROP; TRUNCATED_JPEG truncates the
SOAP reply and WRONG_CONTENT_TYPE answers an HTML page).
"""

import asyncio
import base64
import binascii
from collections.abc import Callable
import contextlib
from datetime import UTC, datetime
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Final
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from .camera import Fault, OnvifProfileSpec
from .rtsp import reset_connection
from .wsdiscovery import ScopeMix, scopes_for

if TYPE_CHECKING:
    from .camera import VirtualCamera

_LOGGER = logging.getLogger(__name__)

SOAP12: Final = "http://www.w3.org/2003/05/soap-envelope"
SOAP11: Final = "http://schemas.xmlsoap.org/soap/envelope/"
TDS: Final = "http://www.onvif.org/ver10/device/wsdl"
TRT: Final = "http://www.onvif.org/ver10/media/wsdl"
TT: Final = "http://www.onvif.org/ver10/schema"
TER: Final = "http://www.onvif.org/ver10/error"
WSSE: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
#: Largest Created offset (seconds) from the camera clock that a token may have.
CLOCK_SKEW: Final = 30.0
#: Requests larger than this are refused (a real camera has a small buffer too).
MAX_REQUEST: Final = 64 * 1024
#: Operations a client may call without credentials.
UNAUTHENTICATED: Final = frozenset({"GetSystemDateAndTime"})

_NAMESPACES: Final = (
    f'xmlns:s="{SOAP12}" xmlns:tds="{TDS}" xmlns:trt="{TRT}" xmlns:tt="{TT}" xmlns:ter="{TER}"'
)


def envelope(body: str) -> bytes:
    """A SOAP 1.2 envelope around a body fragment."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<s:Envelope {_NAMESPACES}>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault(code: str, subcode: str, reason: str) -> bytes:
    """A SOAP 1.2 fault (code s:Sender or s:Receiver, subcode ter:...)."""
    return envelope(
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{escape(reason)}</s:Text>'
        "</s:Reason></s:Fault>"
    )


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security PasswordDigest: base64(sha1(nonce + created + password))."""
    raw = hashlib.sha1(nonce + created.encode() + password.encode(), usedforsecurity=False)
    return base64.b64encode(raw.digest()).decode()


def parse_created(text: str) -> float | None:
    """UNIX time of a WS-Security Created value (UTC when no offset is given)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def check_username_token(
    header: ET.Element | None, username: str, password: str, camera_time: float
) -> str | None:
    """None when the header carries a valid digest token, else why it does not."""
    if header is None:
        return "no SOAP header"
    token = header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if token is None:
        return "no UsernameToken"
    user = token.findtext(f"{{{WSSE}}}Username") or ""
    password_el = token.find(f"{{{WSSE}}}Password")
    nonce_text = token.findtext(f"{{{WSSE}}}Nonce") or ""
    created = token.findtext(f"{{{WSU}}}Created") or ""
    if password_el is None or password_el.get("Type", PASSWORD_DIGEST) != PASSWORD_DIGEST:
        return "not a PasswordDigest"
    try:
        nonce = base64.b64decode(nonce_text.strip(), validate=True)
    except binascii.Error, ValueError:
        return "bad nonce"
    created_at = parse_created(created)
    if not nonce or created_at is None:
        return "missing nonce or created"
    # The camera judges freshness by its own clock: this is what breaks clients that do
    # not read GetSystemDateAndTime on a camera whose clock is off.
    if abs(created_at - camera_time) > CLOCK_SKEW:
        return "created outside the allowed clock skew"
    expected = password_digest(nonce, created.strip(), password)
    if not hmac.compare_digest(user.encode(), username.encode()):
        return "wrong user"
    if not hmac.compare_digest((password_el.text or "").strip().encode(), expected.encode()):
        return "wrong digest"
    return None


def _date_time(when: float) -> str:
    """A tt:DateTime (Time then Date, as the schema orders them)."""
    moment = datetime.fromtimestamp(when, UTC)
    return (
        f"<tt:Time><tt:Hour>{moment.hour}</tt:Hour><tt:Minute>{moment.minute}</tt:Minute>"
        f"<tt:Second>{moment.second}</tt:Second></tt:Time>"
        f"<tt:Date><tt:Year>{moment.year}</tt:Year><tt:Month>{moment.month}</tt:Month>"
        f"<tt:Day>{moment.day}</tt:Day></tt:Date>"
    )


def _text(tag: str, value: object) -> str:
    """One element with escaped text."""
    return f"<{tag}>{escape(str(value))}</{tag}>"


class OnvifService:
    """The ONVIF SOAP endpoints of one camera (device_service, media_service)."""

    def __init__(self, camera: VirtualCamera, closing: asyncio.Event) -> None:
        """Serve for this camera; `closing` is set when the HTTP server stops."""
        self.camera = camera
        self._closing = closing

    # -- addresses the camera reports ------------------------------------------------------

    def _xaddr(self, service: str) -> str:
        """The XAddr of one service, on the host the camera believes it has."""
        cfg = self.camera.config
        host = cfg.reported_xaddr_host or cfg.host
        return f"http://{host}:{self.camera.http_port}/onvif/{service}"

    def _reported(self, scheme: str, port: int, path: str) -> str:
        """A stream or snapshot URI as the camera reports it (maybe wrong host, credentials)."""
        cfg = self.camera.config
        userinfo = f"{cfg.reported_userinfo}@" if cfg.reported_userinfo else ""
        host = cfg.reported_host or cfg.host
        return f"{scheme}://{userinfo}{host}:{port}{path}"

    def profiles(self) -> list[tuple[OnvifProfileSpec, str, int, int]]:
        """(spec, encoding, width, height) for each configured profile."""
        cfg = self.camera.config
        out = []
        for spec in cfg.profiles:
            encoding = "H265" if cfg.hevc_only else spec.encoding
            width = spec.width or cfg.width // max(spec.divisor, 1)
            height = spec.height or cfg.height // max(spec.divisor, 1)
            out.append((spec, encoding, width, height))
        return out

    # -- request handling ------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """POST /onvif/<service>: apply faults, parse, authenticate, dispatch."""
        cam = self.camera
        service = request.path.removeprefix("/onvif/")
        if service not in ("device_service", "media_service"):
            return web.Response(status=404, text="404 Not Found")
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        cam.stats.onvif_requests += 1
        fault_mode = cam.fault
        if fault_mode in (Fault.REFUSE, Fault.DROP):
            return self._reset(request)
        if fault_mode is Fault.HANG:
            await self._closing.wait()
            return self._reset(request)
        if fault_mode is Fault.SLOW:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cam.config.slow_delay):
                    await self._closing.wait()
            if self._closing.is_set():
                return self._reset(request)
        if fault_mode is Fault.WRONG_CONTENT_TYPE:
            return web.Response(text="<html><body>Error</body></html>", content_type="text/html")

        status, body = await self._answer(request, service)
        if fault_mode is Fault.TRUNCATED_JPEG:
            body = body[: len(body) // 2]
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": 'application/soap+xml; charset="utf-8"'},
        )

    def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        """Reset the connection; the response returned afterwards is never sent."""
        if request.transport is not None:
            reset_connection(request.transport)
        return web.Response(status=503)

    async def _answer(self, request: web.BaseRequest, service: str) -> tuple[int, bytes]:
        """(HTTP status, SOAP envelope) for one request."""
        cam = self.camera
        data = await request.content.read(MAX_REQUEST + 1)
        if len(data) > MAX_REQUEST:
            return 400, fault("s:Sender", "ter:WellFormed", "Request too large")
        # A test device, but it still refuses DTDs: nothing here needs them.
        if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
            return 400, fault("s:Sender", "ter:WellFormed", "DTD not allowed")
        try:
            root = ET.fromstring(data)  # noqa: S314  (DTDs refused above; no entities)
        except ET.ParseError:
            return 400, fault("s:Sender", "ter:WellFormed", "Malformed XML")
        soap = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
        if soap not in (SOAP12, SOAP11) or root.tag.rpartition("}")[2] != "Envelope":
            return 400, fault("s:Sender", "ter:WellFormed", "Not a SOAP envelope")
        body = root.find(f"{{{soap}}}Body")
        operation = body[0] if body is not None and len(body) else None
        if operation is None:
            return 400, fault("s:Sender", "ter:WellFormed", "Empty body")
        name = operation.tag.rpartition("}")[2]
        method = (_DEVICE_OPS if service == "device_service" else _MEDIA_OPS).get(name)
        if method is None:
            return 500, fault("s:Receiver", "ter:ActionNotSupported", "Action Not Implemented")
        if name not in UNAUTHENTICATED and not self._authorized(root.find(f"{{{soap}}}Header")):
            cam.stats.onvif_auth_failures += 1
            return 400, fault("s:Sender", "ter:NotAuthorized", "Sender not Authorized")
        handler: Callable[[ET.Element], tuple[int, bytes]] = getattr(self, method)
        return handler(operation)

    def _authorized(self, header: ET.Element | None) -> bool:
        """Whether the request may run (no username configured: everyone may)."""
        cfg = self.camera.config
        path = f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken"
        if header is not None and header.find(path) is not None:
            self.camera.stats.credentialed_requests += 1
        if self.camera.fault is Fault.UNAUTHORIZED:
            return False
        if not cfg.username:
            return True
        reason = check_username_token(header, cfg.username, cfg.password or "", self.camera.clock)
        if reason is not None:
            _LOGGER.debug("%s: ONVIF request refused: %s", cfg.name, reason)
        return reason is None

    # -- device service --------------------------------------------------------------------

    def _get_system_date_and_time(self, _op: ET.Element) -> tuple[int, bytes]:
        """The camera's clock, in UTC."""
        now = _date_time(self.camera.clock)
        return 200, envelope(
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false"
            "</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{now}</tt:UTCDateTime><tt:LocalDateTime>{now}</tt:LocalDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _get_device_information(self, _op: ET.Element) -> tuple[int, bytes]:
        """Manufacturer, model, firmware and serial."""
        cfg = self.camera.config
        return 200, envelope(
            "<tds:GetDeviceInformationResponse>"
            + _text("tds:Manufacturer", cfg.manufacturer)
            + _text("tds:Model", cfg.model)
            + _text("tds:FirmwareVersion", cfg.firmware)
            + _text("tds:SerialNumber", cfg.serial or "")
            + _text("tds:HardwareId", cfg.model)
            + "</tds:GetDeviceInformationResponse>"
        )

    def _get_network_interfaces(self, _op: ET.Element) -> tuple[int, bytes]:
        """One enabled interface, with the MAC when the camera has one."""
        cfg = self.camera.config
        info = ""
        if cfg.mac:
            info = (
                "<tt:Info><tt:Name>eth0</tt:Name>"
                f"{_text('tt:HwAddress', cfg.mac)}<tt:MTU>1500</tt:MTU></tt:Info>"
            )
        return 200, envelope(
            '<tds:GetNetworkInterfacesResponse><tds:NetworkInterfaces token="eth0">'
            f"<tt:Enabled>true</tt:Enabled>{info}"
            "<tt:IPv4><tt:Enabled>true</tt:Enabled><tt:Config><tt:Manual>"
            f"{_text('tt:Address', cfg.reported_host or cfg.host)}"
            "<tt:PrefixLength>24</tt:PrefixLength></tt:Manual><tt:DHCP>false</tt:DHCP>"
            "</tt:Config></tt:IPv4></tds:NetworkInterfaces></tds:GetNetworkInterfacesResponse>"
        )

    def _get_capabilities(self, _op: ET.Element) -> tuple[int, bytes]:
        """Device and Media XAddrs (the pre-GetServices way)."""
        return 200, envelope(
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device>{_text('tt:XAddr', self._xaddr('device_service'))}</tt:Device>"
            f"<tt:Media>{_text('tt:XAddr', self._xaddr('media_service'))}"
            "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
            "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
            "</tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    def _get_services(self, _op: ET.Element) -> tuple[int, bytes]:
        """The Device and Media services with their XAddrs."""
        services = "".join(
            "<tds:Service>"
            + _text("tds:Namespace", namespace)
            + _text("tds:XAddr", self._xaddr(path))
            + "<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version>"
            "</tds:Service>"
            for namespace, path in ((TDS, "device_service"), (TRT, "media_service"))
        )
        return 200, envelope(f"<tds:GetServicesResponse>{services}</tds:GetServicesResponse>")

    def _get_scopes(self, _op: ET.Element) -> tuple[int, bytes]:
        """The same scopes the WS-Discovery responder announces."""
        cfg = self.camera.config
        items = "".join(
            f"<tds:Scopes><tt:ScopeDef>Fixed</tt:ScopeDef>{_text('tt:ScopeItem', scope)}"
            "</tds:Scopes>"
            for scope in scopes_for(ScopeMix(cfg.scope_mix), cfg.name, cfg.model)
        )
        return 200, envelope(f"<tds:GetScopesResponse>{items}</tds:GetScopesResponse>")

    def _get_endpoint_reference(self, _op: ET.Element) -> tuple[int, bytes]:
        """The device UUID, as WS-Discovery announces it."""
        guid = f"urn:uuid:{self.camera.device_uuid}"
        return 200, envelope(
            f"<tds:GetEndpointReferenceResponse>{_text('tds:GUID', guid)}"
            "</tds:GetEndpointReferenceResponse>"
        )

    # -- media service ---------------------------------------------------------------------

    def _get_profiles(self, _op: ET.Element) -> tuple[int, bytes]:
        """Every configured profile with its video source and encoder configuration."""
        cfg = self.camera.config
        parts = []
        for spec, encoding, width, height in self.profiles():
            token = quoteattr(spec.token)
            codec = ""
            if encoding == "H264":
                codec = "<tt:H264><tt:GovLength>10</tt:GovLength>"
                codec += "<tt:H264Profile>Main</tt:H264Profile></tt:H264>"
            parts.append(
                f'<trt:Profiles token={token} fixed="true">{_text("tt:Name", spec.name)}'
                '<tt:VideoSourceConfiguration token="vsc"><tt:Name>source</tt:Name>'
                f"<tt:UseCount>2</tt:UseCount>{_text('tt:SourceToken', spec.source)}"
                f'<tt:Bounds x="0" y="0" width="{cfg.width}" height="{cfg.height}"/>'
                "</tt:VideoSourceConfiguration>"
                f"<tt:VideoEncoderConfiguration token={quoteattr('enc_' + spec.token)}>"
                f"{_text('tt:Name', spec.name)}<tt:UseCount>1</tt:UseCount>"
                f"{_text('tt:Encoding', encoding)}"
                f"<tt:Resolution><tt:Width>{width}</tt:Width><tt:Height>{height}</tt:Height>"
                "</tt:Resolution><tt:Quality>5</tt:Quality>"
                f"<tt:RateControl><tt:FrameRateLimit>{int(cfg.fps)}</tt:FrameRateLimit>"
                "<tt:EncodingInterval>1</tt:EncodingInterval>"
                "<tt:BitrateLimit>1024</tt:BitrateLimit></tt:RateControl>"
                f"{codec}<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>"
                "<tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address><tt:Port>0</tt:Port>"
                "<tt:TTL>1</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>"
                "<tt:SessionTimeout>PT60S</tt:SessionTimeout></tt:VideoEncoderConfiguration>"
                "</trt:Profiles>"
            )
        return 200, envelope(f"<trt:GetProfilesResponse>{''.join(parts)}</trt:GetProfilesResponse>")

    def _profile(self, op: ET.Element) -> OnvifProfileSpec | None:
        """The profile named by the request's ProfileToken."""
        token = (op.findtext(f"{{{TRT}}}ProfileToken") or "").strip()
        return next((spec for spec in self.camera.config.profiles if spec.token == token), None)

    @staticmethod
    def _media_uri(element: str, uri: str) -> bytes:
        """A GetStreamUri/GetSnapshotUri response."""
        return envelope(
            f"<trt:{element}><trt:MediaUri>{_text('tt:Uri', uri)}"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
            f"<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:{element}>"
        )

    def _get_stream_uri(self, op: ET.Element) -> tuple[int, bytes]:
        """rtsp(s)://host:port/<path> for the profile."""
        spec = self._profile(op)
        if spec is None:
            return 400, fault("s:Sender", "ter:InvalidArgVal", "No such profile")
        uri = self._reported(self.camera.rtsp_scheme, self.camera.rtsp_port, spec.path)
        return 200, self._media_uri("GetStreamUriResponse", uri)

    def _get_snapshot_uri(self, op: ET.Element) -> tuple[int, bytes]:
        """http://host:port/snapshot.jpg, or a fault when the camera has no snapshot."""
        spec = self._profile(op)
        if spec is None:
            return 400, fault("s:Sender", "ter:InvalidArgVal", "No such profile")
        if not self.camera.config.http_snapshot:
            return 500, fault("s:Receiver", "ter:ActionNotSupported", "No snapshot")
        uri = self._reported(
            "http",
            self.camera.http_port,
            spec.snapshot_path or self.camera.config.reported_snapshot_path,
        )
        return 200, self._media_uri("GetSnapshotUriResponse", uri)

    def _get_service_capabilities(self, _op: ET.Element) -> tuple[int, bytes]:
        """Media capabilities (SnapshotUri tells clients whether to ask for one)."""
        snapshot = "true" if self.camera.config.http_snapshot else "false"
        return 200, envelope(
            f'<trt:GetServiceCapabilitiesResponse><trt:Capabilities SnapshotUri="{snapshot}">'
            '<trt:ProfileCapabilities MaximumNumberOfProfiles="4"/>'
            '<trt:StreamingCapabilities RTP_TCP="true" RTP_RTSP_TCP="true"/>'
            "</trt:Capabilities></trt:GetServiceCapabilitiesResponse>"
        )


#: SOAP operation -> OnvifService method, per service.
_DEVICE_OPS: Final = {
    "GetSystemDateAndTime": "_get_system_date_and_time",
    "GetDeviceInformation": "_get_device_information",
    "GetNetworkInterfaces": "_get_network_interfaces",
    "GetCapabilities": "_get_capabilities",
    "GetServices": "_get_services",
    "GetScopes": "_get_scopes",
    "GetEndpointReference": "_get_endpoint_reference",
}
_MEDIA_OPS: Final = {
    "GetProfiles": "_get_profiles",
    "GetStreamUri": "_get_stream_uri",
    "GetSnapshotUri": "_get_snapshot_uri",
    "GetServiceCapabilities": "_get_service_capabilities",
}
