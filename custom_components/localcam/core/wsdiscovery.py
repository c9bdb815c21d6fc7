"""WS-Discovery (ONVIF) scanning: probes, a hardened ProbeMatches parser and a bounded scan.

Home Assistant's ONVIF discovery sends one probe with an AND-ed Profile/Streaming scope and
misses cameras that announce only Profile/T, no profile or only the Device type. LocalCam
probes ``dn:NetworkVideoTransmitter`` and ``tds:Device`` separately, with no scope filter.

Safety guarantees of this layer (replies come from anyone on the LAN):

* A reply is parsed only when it is at most ``MAX_REPLY_SIZE`` bytes, by expat with no DTD
  at all: a DOCTYPE or ENTITY declaration rejects the datagram before any entity exists, so
  neither entity expansion nor external entities can happen. Element count and depth, the
  number of namespace declarations and the length of a namespace URI are capped, and an
  element keeps only the prefixes it declares itself (prefixes resolve up the chain of its
  ancestors, never through copied maps), so work and memory per reply grow linearly with
  its size and are bounded.
* A match with a wrong namespace, a missing or duplicated field, or no acceptable XAddr is
  dropped and the rest of the datagram kept. An XAddr is acceptable only as http(s) to an IP
  literal with a valid port that ``NetPolicy.classify`` allows; host names are not resolved
  during discovery (that would let any host make LocalCam send DNS queries). Scopes may hold
  any Unicode text (cameras send UTF-8 names and locations); a scope with a control
  character drops its match, and control characters never reach a name or hardware model.
* ``parse_probe_matches`` never raises. ``scan`` is bounded in time (<= 3 s), in reply
  datagrams parsed, in datagrams and endpoints accepted per source address (not per
  socket: one host has thousands of source ports) and in hosts probed; it logs one line
  per misbehaving source and scan, never one per packet.
* With no interfaces given nothing is multicast; multicast goes out on the given interface
  addresses only, with TTL 1.
"""

import asyncio
from collections.abc import Collection, Iterable, Sequence
import contextlib
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
import logging
import re
import socket
import time
from typing import Final, override
from urllib.parse import unquote
import uuid
from xml.parsers import expat

import yarl

from .errors import InvalidUrlError, NotLocalError
from .netpolicy import NetPolicy, is_loopback_literal

_LOGGER = logging.getLogger(__name__)

WSD_PORT: Final = 3702
MULTICAST_GROUP: Final = "239.255.255.250"
MAX_SCAN_TIME: Final = 3.0
MAX_REPLY_SIZE: Final = 64 * 1024
MAX_UNICAST_HOSTS: Final = 256
MAX_REPLIES_LIMIT: Final = 4096
MAX_MATCHES_PER_REPLY: Final = 64
MAX_ELEMENTS: Final = 4096
MAX_DEPTH: Final = 32
# Namespace declarations per reply and the length of one namespace URI: a real reply
# declares a few dozen namespaces, none of them with a URI of more than about 100 characters.
MAX_NAMESPACES: Final = 256
MAX_NAMESPACE_LENGTH: Final = 256
MAX_XADDRS: Final = 8
MAX_SCOPES: Final = 64
MAX_TYPES: Final = 16
MAX_FIELD_LENGTH: Final = 512
MAX_NAME_LENGTH: Final = 64
# Datagrams one source address may send per endpoint it may list, before the rest of what
# it sends is ignored unparsed: a camera answers each of our probes once (twice if it
# repeats), a spoofer floods, from as many source ports as it likes.
PACKETS_PER_ENDPOINT: Final = 4
RECEIVE_BUFFER: Final = 1024 * 1024
# Unicast scans end early once every host answered and the air has been quiet this long.
QUIET_PERIOD: Final = 0.2
# When unanswered probes go out again (seconds after the first, for a full-length scan).
REPEAT_AFTER: Final = (0.25, 0.75, 1.5)

SOAP12: Final = "http://www.w3.org/2003/05/soap-envelope"
SOAP11: Final = "http://schemas.xmlsoap.org/soap/envelope/"
WSA_2004: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSA_2005: Final = "http://www.w3.org/2005/08/addressing"
WSD_2005: Final = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSD_2009: Final = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
DN: Final = "http://www.onvif.org/ver10/network/wsdl"
TDS: Final = "http://www.onvif.org/ver10/device/wsdl"
_SOAP_NAMESPACES: Final = frozenset({SOAP12, SOAP11})
_WSA_NAMESPACES: Final = frozenset({WSA_2004, WSA_2005})
_WSD_NAMESPACES: Final = frozenset({WSD_2005, WSD_2009})
#: Prefixes used for well-known types in DiscoveredDevice.types.
KNOWN_TYPE_PREFIXES: Final = {DN: "dn", TDS: "tds"}
PROBE_TYPES: Final = ("dn:NetworkVideoTransmitter", "tds:Device")
_PROBE_TYPE_NAMESPACES: Final = {"dn": DN, "tds": TDS}

_SCOPE_PREFIX: Final = "onvif://www.onvif.org/"
_ENDPOINT_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[\x21-\x7e]{1,250}$")
_MAC_RE: Final = re.compile(r"^[0-9a-f]{12}$")
_ZONE_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# Control characters (C0, DEL and C1); any other character may appear in a scope.
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    """One device from a ProbeMatch that passed every check."""

    endpoint: str  # "urn:uuid:<uuid>" when the device uses a UUID (almost all do)
    xaddrs: tuple[str, ...]
    scopes: tuple[str, ...]
    types: tuple[str, ...]
    host: str  # IP literal of the chosen XAddr (IPv6 without brackets)
    port: int
    name: str | None
    hardware: str | None
    mac: str | None = None  # from an onvif://www.onvif.org/MAC/ scope, if announced

    @property
    def device_uuid(self) -> str | None:
        """The UUID of a urn:uuid: endpoint reference, else None."""
        if self.endpoint.startswith("urn:uuid:"):
            return self.endpoint.removeprefix("urn:uuid:")
        return None


# -- probes -----------------------------------------------------------------------------------


def build_probe(probe_type: str, message_id: str | None = None) -> tuple[str, bytes]:
    """A Probe for one type ("dn:NetworkVideoTransmitter" or "tds:Device"), no scopes."""
    prefix, _, local = probe_type.partition(":")
    namespace = _PROBE_TYPE_NAMESPACES.get(prefix)
    if namespace is None or not local.isidentifier():
        raise ValueError(f"unknown probe type {probe_type!r}")
    message_id = message_id or f"urn:uuid:{uuid.uuid4()}"
    message = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<s:Envelope xmlns:s="{SOAP12}" xmlns:a="{WSA_2004}" xmlns:d="{WSD_2005}" '
        f'xmlns:{prefix}="{namespace}"><s:Header>'
        f'<a:Action s:mustUnderstand="1">{WSD_2005}/Probe</a:Action>'
        f"<a:MessageID>{message_id}</a:MessageID>"
        f"<a:ReplyTo><a:Address>{WSA_2004}/role/anonymous</a:Address></a:ReplyTo>"
        f'<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        f"</s:Header><s:Body><d:Probe><d:Types>{probe_type}</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    )
    return message_id, message.encode()


def build_probes() -> list[tuple[str, bytes]]:
    """One probe per type in PROBE_TYPES, each with a fresh MessageID."""
    return [build_probe(probe_type) for probe_type in PROBE_TYPES]


# -- parsing ----------------------------------------------------------------------------------


class _RejectedError(Exception):
    """The datagram as a whole is refused (DTD, limits)."""


@dataclass(frozen=True, slots=True)
class _Prefixes:
    """The prefixes one element declares, linked to those of its nearest declaring ancestor."""

    declared: dict[str, str | None]  # None: the default namespace undeclared (xmlns="")
    outer: _Prefixes | None

    def get(self, prefix: str) -> str | None:
        """The namespace bound to `prefix` here ("" is the default), None if unbound."""
        # At most MAX_DEPTH links up: one per element on the way to the root.
        prefixes: _Prefixes | None = self
        while prefixes is not None:
            if prefix in prefixes.declared:
                return prefixes.declared[prefix]
            prefixes = prefixes.outer
        return None


@dataclass(slots=True)
class _Node:
    """A parsed element: namespace, local name, children, text, in-scope prefixes."""

    namespace: str
    local: str
    prefixes: _Prefixes | None
    children: list[_Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    length: int = 0

    @property
    def text(self) -> str:
        """Character data directly inside this element."""
        return "".join(self.parts).strip()

    def only(self, local: str, namespaces: Collection[str]) -> _Node | None:
        """The one child with this name, None if absent; _InvalidMatchError if duplicated."""
        found = [c for c in self.children if c.local == local and c.namespace in namespaces]
        if len(found) > 1:
            raise _InvalidMatchError(f"duplicate {local}")
        return found[0] if found else None


class _InvalidMatchError(Exception):
    """One ProbeMatch (or the envelope around it) is unusable."""


def _parse_xml(data: bytes) -> _Node:
    """Parse with expat, refusing any DTD, and build a small bounded tree."""
    # With the DOCTYPE refused no entity can ever be declared, so every entity reference
    # other than the five predefined ones is a well-formedness error, never a lookup.
    parser = expat.ParserCreate(namespace_separator=" ")
    # Never read external DTDs or parameter entities, whatever the document says.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True
    stack: list[_Node] = []
    pending: dict[str, str | None] = {}
    root: list[_Node] = []
    count = 0
    declarations = 0

    def refuse(*_args: object) -> None:
        raise _RejectedError("DTD or entity declaration")

    def start_ns(prefix: str | None, uri: str | None) -> None:
        # Refused before expat expands a name with it: a long URI is copied into the name
        # of every element and attribute that uses its prefix.
        nonlocal declarations
        declarations += 1
        if declarations > MAX_NAMESPACES or len(uri or "") > MAX_NAMESPACE_LENGTH:
            raise _RejectedError("too many or too long namespace declarations")
        pending[prefix or ""] = uri

    def start(name: str, _attrs: dict[str, str]) -> None:
        nonlocal count, pending
        count += 1
        if count > MAX_ELEMENTS or len(stack) >= MAX_DEPTH:
            raise _RejectedError("too many or too deeply nested elements")
        namespace, _, local = name.rpartition(" ")
        prefixes = stack[-1].prefixes if stack else None
        if pending:
            # The element's own declarations only, linked to the outer prefixes: no copies.
            prefixes = _Prefixes(pending, prefixes)
            pending = {}
        node = _Node(namespace, local, prefixes)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def characters(text: str) -> None:
        # Text beyond what any field may hold is dropped (the field checks then fail).
        if stack and stack[-1].length < MAX_FIELD_LENGTH * MAX_SCOPES:
            stack[-1].parts.append(text)
            stack[-1].length += len(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.StartNamespaceDeclHandler = start_ns
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.Parse(data, True)
    if not root:
        raise _RejectedError("no root element")
    return root[0]


def _split_field(node: _Node, limit: int, what: str) -> list[str]:
    """Whitespace-separated items of a field, bounded in count and length."""
    items = node.text.split()
    if len(items) > limit or any(len(item) > MAX_FIELD_LENGTH for item in items):
        raise _InvalidMatchError(f"too many or too long {what}")
    return items


def _endpoint(match: _Node) -> str:
    """The endpoint reference address, normalized to urn:uuid:<lower uuid> where possible."""
    reference = match.only("EndpointReference", _WSA_NAMESPACES)
    if reference is None:
        raise _InvalidMatchError("missing EndpointReference")
    address = reference.only("Address", {reference.namespace})
    text = address.text if address is not None else ""
    if not text:
        raise _InvalidMatchError("missing EndpointReference address")
    lowered = text.lower()
    for prefix in ("urn:uuid:", "uuid:"):
        if lowered.startswith(prefix):
            try:
                return f"urn:uuid:{uuid.UUID(text[len(prefix) :])}"
            except ValueError:
                raise _InvalidMatchError("malformed uuid endpoint") from None
    if not _ENDPOINT_RE.match(text):
        raise _InvalidMatchError("malformed endpoint")
    return text


def _xaddr(text: str, policy: NetPolicy, source: str) -> tuple[str, str, int]:
    """(clean URL, host, port) of one acceptable XAddr; ValueError with a reason otherwise.

    An XAddr on loopback is this machine's own service: only a reply that
    itself came from loopback may name one (the kernel drops packets from
    the LAN that claim a loopback source). A reply is an unauthenticated
    datagram that any device on the LAN can send; naming 127.0.0.1 in one
    would aim LocalCam's identity checks (and a camera's credentials) at
    this machine's own services, Home Assistant's included.
    """
    try:
        url = yarl.URL(text)
        port = url.port
        host = url.host
    except (ValueError, TypeError) as err:
        raise ValueError("malformed xaddr") from err
    if url.scheme not in ("http", "https") or not url.absolute:
        raise ValueError("xaddr scheme not http(s)")
    if url.raw_user is not None or url.raw_password is not None:
        raise ValueError("xaddr with credentials")
    if port is None or not 1 <= port <= 65535:
        raise ValueError("xaddr port out of range")
    try:
        # The whole host: "192.168.1.20%x" is no IP literal (IPv4 has no zone).
        address = ip_address(host or "")
    except ValueError:
        raise ValueError("xaddr host is not an IP address") from None
    # As NetPolicy.check accepts a zone: a plain name, on a link-local address only.
    if (
        isinstance(address, IPv6Address)
        and address.scope_id is not None
        and (not address.is_link_local or not _ZONE_RE.match(address.scope_id))
    ):
        raise ValueError("xaddr with an invalid zone id")
    if (reason := policy.classify(address)) is not None:
        raise ValueError(f"xaddr {reason}")
    if is_loopback_literal(str(address)) and not is_loopback_literal(source):
        raise ValueError("xaddr on loopback, in a reply from the LAN")
    return str(url.with_fragment(None)), (host or ""), port


def _resolve_type(qname: str, prefixes: _Prefixes | None) -> str:
    """A d:Types QName as "dn:Local"/"tds:Local" for known namespaces, else "{ns}Local"."""
    prefix, _, local = qname.rpartition(":")
    namespace = prefixes.get(prefix) if prefixes is not None else None
    if namespace is None:
        return qname  # unresolvable prefix: kept verbatim, it is informational only
    known = KNOWN_TYPE_PREFIXES.get(namespace)
    return f"{known}:{local}" if known else f"{{{namespace}}}{local}"


def _scope_value(scopes: Sequence[str], kind: str) -> str | None:
    """The decoded value of an onvif://www.onvif.org/<kind>/<value> scope."""
    prefix = f"{_SCOPE_PREFIX}{kind}/"
    for scope in scopes:
        # The prefix is compared as a slice: lower() may change the length of non-ASCII text.
        if scope[: len(prefix)].lower() == prefix.lower():
            value = _CONTROL_RE.sub("", unquote(scope[len(prefix) :])).strip()
            return value[:MAX_NAME_LENGTH] or None
    return None


def _scope_mac(scopes: Sequence[str]) -> str | None:
    """A MAC announced in an onvif://www.onvif.org/MAC/ scope."""
    value = _scope_value(scopes, "MAC")
    digits = re.sub(r"[\s:.\-]", "", value or "").lower()
    if not _MAC_RE.match(digits) or digits in ("000000000000", "ffffffffffff"):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _match(match: _Node, source: str, policy: NetPolicy) -> DiscoveredDevice:
    """Validate one ProbeMatch; raises _InvalidMatchError with a short reason."""
    if any(child.namespace not in _WSD_NAMESPACES | _WSA_NAMESPACES for child in match.children):
        raise _InvalidMatchError("unexpected element namespace")
    endpoint = _endpoint(match)
    wsd = {match.namespace}
    types_node = match.only("Types", wsd)
    scopes_node = match.only("Scopes", wsd)
    xaddrs_node = match.only("XAddrs", wsd)
    version_node = match.only("MetadataVersion", wsd)
    if version_node is not None and not version_node.text.isdigit():
        raise _InvalidMatchError("bad MetadataVersion")
    if xaddrs_node is None:
        raise _InvalidMatchError("missing XAddrs")
    scopes = _split_field(scopes_node, MAX_SCOPES, "scopes") if scopes_node is not None else []
    # Non-ASCII is fine (a camera named "Küche"); whitespace already separates scopes.
    if any(_CONTROL_RE.search(scope) for scope in scopes):
        raise _InvalidMatchError("control character in scope")
    types: list[str] = []
    if types_node is not None:
        qnames = _split_field(types_node, MAX_TYPES, "types")
        types = [_resolve_type(qname, types_node.prefixes) for qname in qnames]
    accepted: list[tuple[str, str, int]] = []
    first_reason = "no xaddrs"
    for text in _split_field(xaddrs_node, MAX_XADDRS, "xaddrs"):
        try:
            accepted.append(_xaddr(text, policy, source))
        except ValueError as err:
            first_reason = str(err)
    if not accepted:
        raise _InvalidMatchError(first_reason)
    # Prefer the XAddr on the address the reply came from: a multi-homed camera lists
    # several, and the one we heard from is the one that reaches us.
    chosen = next((a for a in accepted if a[1] == source), accepted[0])
    return DiscoveredDevice(
        endpoint=endpoint,
        xaddrs=tuple(url for url, _, _ in accepted),
        scopes=tuple(scopes),
        types=tuple(types),
        host=chosen[1],
        port=chosen[2],
        name=_scope_value(scopes, "name"),
        hardware=_scope_value(scopes, "hardware"),
        mac=_scope_mac(scopes),
    )


def _probe_matches(
    data: bytes,
    source: str,
    policy: NetPolicy,
    relates_to: Collection[str] | None,
    problems: list[str],
) -> list[DiscoveredDevice]:
    """The parser proper; may raise (parse_probe_matches catches everything)."""
    if len(data) > MAX_REPLY_SIZE:
        problems.append("reply too large")
        return []
    try:
        source_address = ip_address(source.partition("%")[0])
    except ValueError:
        problems.append("invalid source address")
        return []
    if (reason := policy.classify(source_address)) is not None:
        problems.append(f"reply from {reason}")
        return []
    try:
        envelope = _parse_xml(data)
    except _RejectedError as err:
        problems.append(str(err))
        return []
    except expat.ExpatError as err:
        problems.append(f"malformed xml ({expat.ErrorString(err.code)})")
        return []
    if envelope.local != "Envelope" or envelope.namespace not in _SOAP_NAMESPACES:
        problems.append("not a SOAP envelope")
        return []
    soap = {envelope.namespace}
    try:
        header = envelope.only("Header", soap)
        body = envelope.only("Body", soap)
        if relates_to is not None:
            related = header.only("RelatesTo", _WSA_NAMESPACES) if header is not None else None
            if related is None or related.text not in relates_to:
                problems.append("reply to a probe we did not send")
                return []
        matches_node = body.only("ProbeMatches", _WSD_NAMESPACES) if body is not None else None
    except _InvalidMatchError as err:
        problems.append(str(err))
        return []
    if matches_node is None:
        problems.append("no ProbeMatches")
        return []
    devices: list[DiscoveredDevice] = []
    seen: set[str] = set()
    wsd = {matches_node.namespace}
    for node in matches_node.children[:MAX_MATCHES_PER_REPLY]:
        if node.local != "ProbeMatch" or node.namespace not in wsd:
            problems.append("unexpected element in ProbeMatches")
            continue
        try:
            device = _match(node, str(source_address), policy)
        except _InvalidMatchError as err:
            problems.append(str(err))
            continue
        if device.endpoint not in seen:
            seen.add(device.endpoint)
            devices.append(device)
    if len(matches_node.children) > MAX_MATCHES_PER_REPLY:
        problems.append("too many matches in one reply")
    return devices


def parse_probe_matches(
    data: bytes,
    source: str,
    *,
    policy: NetPolicy | None = None,
    relates_to: Collection[str] | None = None,
    problems: list[str] | None = None,
) -> list[DiscoveredDevice]:
    """Parse a ProbeMatches datagram from `source` (an IP address); never raises."""
    # Unusable matches are skipped and why is appended to `problems` (the caller decides
    # how often to log). With `relates_to`, replies to other MessageIDs are ignored.
    found: list[str] = []
    try:
        return _probe_matches(data, source, policy or NetPolicy(), relates_to, found)
    except Exception as err:  # noqa: BLE001
        # Replies come from anyone on the LAN: a parser bug must cost one reply, not the
        # scan (or the background task that runs it).
        found.append(f"unparseable reply ({type(err).__name__})")
        return []
    finally:
        if problems is not None:
            problems.extend(found[:16])


# -- unicast targets --------------------------------------------------------------------------


def unicast_range(text: str, *, policy: NetPolicy | None = None) -> list[str]:
    """Hosts from "192.168.1.10", "192.168.1.0/28" or "192.168.1.10-20" (comma separated)."""
    # At most MAX_UNICAST_HOSTS in all, every one allowed by the policy: InvalidUrlError for
    # bad syntax or too many hosts, NotLocalError for a refused address.
    policy = policy or NetPolicy()
    hosts: list[str] = []
    for item in re.split(r"[\s,;]+", text.strip()):
        if not item:
            continue
        for address in _expand(item):
            if (reason := policy.classify(address)) is not None:
                raise NotLocalError(str(address), reason)
            if str(address) not in hosts:
                hosts.append(str(address))
            if len(hosts) > MAX_UNICAST_HOSTS:
                raise InvalidUrlError(f"more than {MAX_UNICAST_HOSTS} hosts")
    if not hosts:
        raise InvalidUrlError("no host given")
    return hosts


def _expand(item: str) -> list[IPv4Address | IPv6Address]:
    """The addresses one range item stands for (bounded before expansion)."""
    try:
        if "/" in item:
            network: IPv4Network | IPv6Network = ip_network(item, strict=False)
            if network.num_addresses > MAX_UNICAST_HOSTS + 2:
                raise InvalidUrlError(f"more than {MAX_UNICAST_HOSTS} hosts")
            hosts: list[IPv4Address | IPv6Address] = [*network.hosts()]
            return hosts or [network.network_address]
        if "-" in item:
            first_text, _, last_text = item.partition("-")
            first = ip_address(first_text)
            if last_text.isdigit() and isinstance(first, IPv4Address):
                # "192.168.1.10-20": the last octet runs from 10 to 20.
                if len(last_text) > 3 or int(last_text) > 255:
                    raise InvalidUrlError("range end is not an octet")
                last: IPv4Address | IPv6Address = IPv4Address((int(first) & ~0xFF) | int(last_text))
            else:
                last = ip_address(last_text)
            if last.version != first.version or int(last) < int(first):
                raise InvalidUrlError("range end before its start")
            if int(last) - int(first) >= MAX_UNICAST_HOSTS:
                raise InvalidUrlError(f"more than {MAX_UNICAST_HOSTS} hosts")
            return [ip_address(n) for n in range(int(first), int(last) + 1)]
        return [ip_address(item)]
    except ValueError:
        raise InvalidUrlError("not an address, range or network") from None


def _target(text: str, default_port: int) -> tuple[IPv4Address | IPv6Address, int]:
    """(address, port) from "host", "host:port" or "[v6]:port"; ValueError otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        if rest and not rest.startswith(":"):
            raise ValueError("bad target")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, default_port
    if not 1 <= port <= 65535:
        raise ValueError("port out of range")
    return ip_address(host), port


# -- scanning ---------------------------------------------------------------------------------


def _unzoned(host: str) -> str:
    """The address without its IPv6 zone: "fe80::1%eth0" -> "fe80::1"."""
    # Replies name the zone as the kernel does (an interface name), a typed target may use
    # an index or another name: the zone is dropped on both sides before they are compared.
    return host.partition("%")[0]


@dataclass(slots=True)
class _Source:
    """What one source address (any of its ports) has sent during a scan."""

    packets: int = 0
    endpoints: set[str] = field(default_factory=set)
    dropped: int = 0
    problems: list[str] = field(default_factory=list)
    bad_replies: int = 0


class _Scan(asyncio.DatagramProtocol):
    """State of one scan; receives on every socket of the scan."""

    def __init__(
        self,
        policy: NetPolicy,
        message_ids: set[str],
        max_replies: int,
        max_per_host: int,
        targets: set[tuple[str, int]],
    ) -> None:
        """Remember the limits and our probes' MessageIDs."""
        self.policy = policy
        self.message_ids = message_ids
        self.max_replies = max_replies
        self.max_per_host = max_per_host
        self.targets = {(_unzoned(host), port) for host, port in targets}
        self.answered: set[tuple[str, int]] = set()
        # By endpoint and address: two cameras that share a firmware-default
        # UUID (cheap cameras do) are two devices; see devices_found.
        self.devices: dict[tuple[str, str], DiscoveredDevice] = {}
        # Who told us about each device: a reply from the device's own address
        # wins over one another host sent first naming that address.
        self.told_by: dict[tuple[str, str], str] = {}
        # Keyed by address alone: limits per socket would let one host that sends from
        # many source ports register fake devices without bound and use up the budget.
        self.sources: dict[str, _Source] = {}
        self.parsed = 0
        self.over_budget = False
        self.last_reply = time.monotonic()
        self.full = asyncio.Event()

    @override
    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Account, bound and parse one reply."""
        host = _unzoned(str(addr[0]))
        source = self.sources.get(host)
        if source is None:
            if len(self.sources) >= self.max_replies:
                self.over_budget = True
                return
            source = self.sources[host] = _Source()
        source.packets += 1
        # A flood from one host, whatever its source ports, is dropped before parsing and
        # does not use up the datagram budget, so it cannot push real cameras out.
        if source.packets > self.max_per_host * PACKETS_PER_ENDPOINT:
            source.dropped += 1
            return
        if self.parsed >= self.max_replies:
            self.over_budget = True
            self.full.set()
            return
        self.parsed += 1
        problems: list[str] = []
        found = parse_probe_matches(
            data, host, policy=self.policy, relates_to=self.message_ids, problems=problems
        )
        if problems:
            source.bad_replies += 1
            if len(source.problems) < 4:
                source.problems.extend(problems[: 4 - len(source.problems)])
        for device in found:
            key = (device.endpoint, device.host)
            if key in self.devices:
                if _unzoned(device.host) == host and self.told_by[key] != host:
                    # The device itself answers: what another host claimed for it goes.
                    self.devices[key] = device
                    self.told_by[key] = host
                continue
            if device.endpoint in source.endpoints:
                continue
            if len(source.endpoints) >= self.max_per_host:
                source.dropped += 1
                continue
            source.endpoints.add(device.endpoint)
            self.devices[key] = device
            self.told_by[key] = host
        if found:
            self.answered.add((host, int(addr[1])))
            self.last_reply = time.monotonic()

    @override
    def error_received(self, exc: Exception) -> None:
        """ICMP errors (a closed port on a probed host) are expected; nothing to do."""

    def answered_by(self, destination: tuple[str, int]) -> bool:
        """Whether the host probed at `destination` has answered (zone ignored)."""
        return (_unzoned(destination[0]), destination[1]) in self.answered

    def unicast_done(self) -> bool:
        """Whether every probed host answered and the replies have died down."""
        return self.targets <= self.answered and time.monotonic() - self.last_reply > QUIET_PERIOD

    def log_summary(self) -> None:
        """One line per misbehaving source, never one per packet."""
        for host, source in self.sources.items():
            if source.bad_replies:
                _LOGGER.info(
                    "WS-Discovery: ignored %d bad replies from %s (%s)",
                    source.bad_replies,
                    host,
                    "; ".join(dict.fromkeys(source.problems)),
                )
            if source.dropped:
                _LOGGER.info(
                    "WS-Discovery: %s sent more than %d devices or replies; %d were ignored",
                    host,
                    self.max_per_host,
                    source.dropped,
                )
        if self.over_budget:
            _LOGGER.info("WS-Discovery: reply limit of %d reached", self.max_replies)


def _receive_buffer(sock: socket.socket) -> None:
    """Ask for a large receive buffer, so a burst of replies is not dropped by the kernel."""
    with contextlib.suppress(OSError):  # capped by net.core.rmem_max; a hint only
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _multicast_socket(interface: IPv4Address) -> socket.socket:
    """A UDP socket that multicasts on one interface only, with TTL 1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        _receive_buffer(sock)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface.packed)
        # TTL 1: probes never leave the link, whatever routers are configured to do.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.bind((str(interface), 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _unicast_socket(family: socket.AddressFamily) -> socket.socket:
    """An unconnected UDP socket on an ephemeral port (replies come back to it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        _receive_buffer(sock)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _unicast_targets(
    hosts: Sequence[str], port: int, policy: NetPolicy
) -> list[tuple[IPv4Address | IPv6Address, int]]:
    """Valid, allowed, de-duplicated unicast targets (at most MAX_UNICAST_HOSTS)."""
    targets: dict[tuple[IPv4Address | IPv6Address, int], None] = {}
    refused = 0
    for text in hosts:
        if len(targets) >= MAX_UNICAST_HOSTS:
            _LOGGER.info(
                "WS-Discovery: only the first %d unicast targets are probed", MAX_UNICAST_HOSTS
            )
            break
        try:
            address, target_port = _target(text, port)
        except ValueError:
            refused += 1
            continue
        if policy.classify(address) is not None:
            refused += 1
            continue
        targets[address, target_port] = None
    if refused:
        _LOGGER.info("WS-Discovery: %d unicast targets are invalid or not local", refused)
    return list(targets)


async def scan(
    *,
    multicast_interfaces: Sequence[str] = (),
    unicast_hosts: Sequence[str] = (),
    port: int = WSD_PORT,
    timeout: float = MAX_SCAN_TIME,
    max_replies: int = 256,
    max_per_host: int = 4,
    policy: NetPolicy,
) -> list[DiscoveredDevice]:
    """Probe for ONVIF devices; at most `timeout` (<= 3 s) and `max_replies` datagrams."""
    # `multicast_interfaces`: IPv4 addresses of local interfaces to multicast on (none:
    # nothing is multicast). `unicast_hosts`: "host" or "host:port" IP literals. Devices
    # are de-duplicated by endpoint reference, at most `max_per_host` kept per address.
    timeout = min(max(timeout, 0.0), MAX_SCAN_TIME)
    max_replies = min(max(max_replies, 1), MAX_REPLIES_LIMIT)
    max_per_host = min(max(max_per_host, 1), MAX_MATCHES_PER_REPLY)
    if not 1 <= port <= 65535:
        raise InvalidUrlError(f"port {port} is out of range")
    interfaces: list[IPv4Address] = []
    for text in multicast_interfaces:
        try:
            interfaces.append(IPv4Address(text))
        except ValueError:
            _LOGGER.info("WS-Discovery: %r is not an IPv4 interface address", text[:64])
    targets = _unicast_targets(unicast_hosts, port, policy)
    if timeout == 0 or (not interfaces and not targets):
        return []

    probes = build_probes()
    state = _Scan(
        policy,
        {message_id for message_id, _ in probes},
        max_replies,
        max_per_host,
        {(str(address), target_port) for address, target_port in targets},
    )
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    deadline = loop.time() + timeout
    try:
        sends: list[tuple[asyncio.DatagramTransport, tuple[str, int]]] = []
        for interface in interfaces:
            try:
                sock = _multicast_socket(interface)
            except OSError as err:
                _LOGGER.info("WS-Discovery: cannot multicast on %s: %s", interface, err.strerror)
                continue
            transport, _ = await loop.create_datagram_endpoint(lambda: state, sock=sock)
            transports.append(transport)
            sends.append((transport, (MULTICAST_GROUP, port)))
        for family in (socket.AF_INET, socket.AF_INET6):
            family_targets = [
                t for t in targets if (t[0].version == 6) == (family == socket.AF_INET6)
            ]
            if not family_targets:
                continue
            try:
                sock = _unicast_socket(family)
            except OSError as err:
                _LOGGER.info("WS-Discovery: cannot open a unicast socket: %s", err.strerror)
                continue
            transport, _ = await loop.create_datagram_endpoint(lambda: state, sock=sock)
            transports.append(transport)
            sends.extend((transport, (str(address), p)) for address, p in family_targets)
        await _send_and_wait(loop, state, probes, sends, deadline, multicast=bool(interfaces))
    finally:
        for transport in transports:
            transport.close()
    state.log_summary()
    return devices_found(state.devices.values())


def devices_found(devices: Iterable[DiscoveredDevice]) -> list[DiscoveredDevice]:
    """One entry per device, in a stable order.

    An endpoint heard at two IPv4 addresses is two devices (a firmware-default
    UUID shared by cheap cameras). One heard over IPv4 and IPv6 is one
    dual-stack camera: its IPv6 replies are dropped.
    """
    devices = list(devices)
    over_ipv4 = {d.endpoint for d in devices if ":" not in d.host}
    kept = [d for d in devices if ":" not in d.host or d.endpoint not in over_ipv4]
    return sorted(kept, key=_sort_key)


async def _send_and_wait(
    loop: asyncio.AbstractEventLoop,
    state: _Scan,
    probes: list[tuple[str, bytes]],
    sends: list[tuple[asyncio.DatagramTransport, tuple[str, int]]],
    deadline: float,
    *,
    multicast: bool,
) -> None:
    """Send every probe and collect replies until done.

    UDP may drop a probe or its reply (Wi-Fi, or a kernel buffer a flood from
    another host filled): the multicast probes go out twice, and a unicast
    host that has not answered is probed again at each of REPEAT_AFTER,
    while time remains. Bounded: at most 1 + len(REPEAT_AFTER) sends each.
    """
    start = loop.time()
    span = max(deadline - start, 0)
    # Scaled down for short scans, so every repeat fits inside the deadline.
    repeats = [start + min(offset, span * offset / MAX_SCAN_TIME) for offset in REPEAT_AFTER]
    for _, message in probes:
        for transport, destination in sends:
            with contextlib.suppress(OSError):  # no route, buffer full
                transport.sendto(message, destination)
    sent_repeats = 0
    while (remaining := deadline - loop.time()) > 0:
        if sent_repeats < len(repeats) and loop.time() >= repeats[sent_repeats]:
            first_repeat = sent_repeats == 0
            sent_repeats += 1
            for _, message in probes:
                for transport, destination in sends:
                    if state.answered_by(destination):
                        continue
                    if destination[0] == MULTICAST_GROUP and not first_repeat:
                        continue  # multicast: one repeat only, no noise on the LAN
                    with contextlib.suppress(OSError):  # no route, buffer full
                        transport.sendto(message, destination)
        if state.full.is_set() or (not multicast and state.unicast_done()):
            return
        try:
            async with asyncio.timeout(min(remaining, 0.05)):
                await state.full.wait()
        except TimeoutError:
            pass


def _sort_key(device: DiscoveredDevice) -> tuple[int, int, int, str]:
    """Order by address, port and endpoint, for stable results."""
    address = ip_address(device.host.partition("%")[0])
    return (address.version, int(address), device.port, device.endpoint)
