"""WS-Discovery (SOAP-over-UDP, ONVIF flavour) responder for virtual cameras.

A responder answers Probe messages with ProbeMatches for the devices it announces, replying
to the sender's address and port. It binds 127.0.0.1:<port> for unicast tests; multicast
(joining 239.255.255.250 on an interface address) and any other address are allowed only
inside a named network namespace (``ip netns``), so a test can never announce on a real LAN.

Probe matching follows WS-Discovery 2005/04: every requested type must be among the device's
types and every requested scope must prefix-match (RFC 3986 segments) one of its scopes. That
makes the scope mixes real cameras send visible to scope-filtering clients the way they are in
the field (ScopeMix). A "spoof" count adds that many fake devices, each reply from the same
socket, for tests of reply flooding.

Run as a program (for network-namespace tests): python -m virtualcam.wsdiscovery --help.
"""

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
import io
import ipaddress
import logging
import os
import random
import signal
import socket
import sys
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import quote
import uuid
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from .camera import VirtualCamera

_LOGGER = logging.getLogger(__name__)

WSD_PORT: Final = 3702
MULTICAST_GROUP: Final = "239.255.255.250"
SOAP12: Final = "http://www.w3.org/2003/05/soap-envelope"
WSA: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSD: Final = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
DN: Final = "http://www.onvif.org/ver10/network/wsdl"
TDS: Final = "http://www.onvif.org/ver10/device/wsdl"
ACTION_PROBE: Final = f"{WSD}/Probe"
ACTION_PROBE_MATCHES: Final = f"{WSD}/ProbeMatches"
ANONYMOUS: Final = f"{WSA}/role/anonymous"
RFC3986: Final = f"{WSD}/rfc3986"
STRCMP0: Final = f"{WSD}/strcmp0"
#: Probes larger than this are dropped unparsed.
MAX_PROBE: Final = 16 * 1024
#: Where `ip netns add` bind-mounts named network namespaces.
NETNS_DIR: Final = "/run/netns"
#: Known type prefixes, as ONVIF devices write them.
TYPE_NAMESPACES: Final = {"dn": DN, "tds": TDS}


class ScopeMix(StrEnum):
    """Scope/type combinations seen on real cameras."""

    STREAMING = "streaming"  # NVT + Device, Profile/Streaming (what HA's discovery requires)
    T_ONLY = "t_only"  # NVT + Device, only Profile/T (newer firmwares)
    NO_PROFILE = "no_profile"  # NVT + Device, no Profile scope at all
    DEVICE_ONLY = "device_only"  # only tds:Device in Types (no NetworkVideoTransmitter)


def scopes_for(mix: ScopeMix, name: str, hardware: str) -> tuple[str, ...]:
    """The d:Scopes a camera of this mix announces."""
    base = "onvif://www.onvif.org/"
    common = (
        f"{base}type/video_encoder",
        f"{base}name/{quote(name, safe='')}",
        f"{base}hardware/{quote(hardware, safe='')}",
        f"{base}location/country/nowhere",
    )
    match mix:
        case ScopeMix.STREAMING | ScopeMix.DEVICE_ONLY:
            return (*common, f"{base}Profile/Streaming", f"{base}Profile/T")
        case ScopeMix.T_ONLY:
            return (*common, f"{base}Profile/T")
        case ScopeMix.NO_PROFILE:
            return common


def types_for(mix: ScopeMix) -> tuple[str, ...]:
    """The d:Types a camera of this mix announces."""
    if mix is ScopeMix.DEVICE_ONLY:
        return ("tds:Device",)
    return ("dn:NetworkVideoTransmitter", "tds:Device")


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one device says about itself in a ProbeMatch."""

    endpoint: str  # urn:uuid:...
    xaddrs: tuple[str, ...]
    types: tuple[str, ...] = ("dn:NetworkVideoTransmitter", "tds:Device")
    scopes: tuple[str, ...] = ()
    metadata_version: int = 1

    @classmethod
    def make(
        cls,
        name: str,
        host: str,
        http_port: int,
        *,
        mix: ScopeMix = ScopeMix.STREAMING,
        hardware: str = "VirtualCam",
        device_uuid: str | None = None,
    ) -> Self:
        """An announcement for a camera named `name` serving ONVIF on host:http_port."""
        ident = device_uuid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"virtualcam:{name}"))
        return cls(
            endpoint=f"urn:uuid:{ident}",
            xaddrs=(f"http://{host}:{http_port}/onvif/device_service",),
            types=types_for(mix),
            scopes=scopes_for(mix, name, hardware),
        )

    @classmethod
    def for_camera(cls, camera: VirtualCamera) -> Self:
        """The announcement of a running virtual camera (XAddr on its reported host)."""
        cfg = camera.config
        return cls.make(
            cfg.name,
            cfg.reported_xaddr_host or cfg.host,
            camera.http_port,
            mix=ScopeMix(cfg.scope_mix),
            hardware=cfg.model,
            device_uuid=camera.device_uuid,
        )


def probe_matches(announcements: Sequence[Announcement], relates_to: str) -> bytes:
    """A ProbeMatches message (one ProbeMatch per announcement)."""
    matches = "".join(
        "<d:ProbeMatch><a:EndpointReference>"
        f"<a:Address>{escape(item.endpoint)}</a:Address></a:EndpointReference>"
        f"<d:Types>{escape(' '.join(item.types))}</d:Types>"
        f"<d:Scopes>{escape(' '.join(item.scopes))}</d:Scopes>"
        f"<d:XAddrs>{escape(' '.join(item.xaddrs))}</d:XAddrs>"
        f"<d:MetadataVersion>{item.metadata_version}</d:MetadataVersion></d:ProbeMatch>"
        for item in announcements
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<s:Envelope xmlns:s="{SOAP12}" xmlns:a="{WSA}" xmlns:d="{WSD}" '
        f'xmlns:dn="{DN}" xmlns:tds="{TDS}"><s:Header>'
        f"<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"<a:To>{ANONYMOUS}</a:To><a:Action>{ACTION_PROBE_MATCHES}</a:Action>"
        f'<d:AppSequence InstanceId="1" MessageNumber="{random.randint(1, 1 << 30)}"/>'
        f"</s:Header><s:Body><d:ProbeMatches>{matches}</d:ProbeMatches></s:Body></s:Envelope>"
    ).encode()


@dataclass(frozen=True, slots=True)
class Probe:
    """The parts of a Probe the responder looks at."""

    message_id: str
    types: tuple[tuple[str, str], ...]  # (namespace, local name)
    scopes: tuple[str, ...]
    match_by: str = RFC3986


def parse_probe(data: bytes) -> Probe | None:
    """Parse a Probe; None for anything else (DTDs refused, size capped)."""
    if len(data) > MAX_PROBE or b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        return None
    namespaces: dict[str, str] = {}
    try:
        root = None
        for event, item in ET.iterparse(  # noqa: S314  (DTDs refused above; no entities)
            io.BytesIO(data), events=("start-ns", "start")
        ):
            if event == "start-ns":
                prefix, uri = item
                namespaces.setdefault(prefix, uri)
            elif root is None:
                root = item
    except ET.ParseError:
        return None
    if root is None or root.tag != f"{{{SOAP12}}}Envelope":
        return None
    probe = root.find(f"{{{SOAP12}}}Body/{{{WSD}}}Probe")
    message_id = (root.findtext(f"{{{SOAP12}}}Header/{{{WSA}}}MessageID") or "").strip()
    if probe is None or not message_id:
        return None
    types: list[tuple[str, str]] = []
    for qname in (probe.findtext(f"{{{WSD}}}Types") or "").split():
        prefix, _, local = qname.rpartition(":")
        types.append((namespaces.get(prefix, TYPE_NAMESPACES.get(prefix, "")), local))
    scopes_el = probe.find(f"{{{WSD}}}Scopes")
    scopes = tuple((scopes_el.text or "").split()) if scopes_el is not None else ()
    match_by = scopes_el.get("MatchBy", RFC3986) if scopes_el is not None else RFC3986
    return Probe(message_id, tuple(types), scopes, match_by)


def _scope_matches(wanted: str, scope: str, match_by: str) -> bool:
    """WS-Discovery scope matching (rfc3986 segment prefix, or strcmp0)."""
    if match_by == STRCMP0:
        return wanted == scope
    if match_by != RFC3986:
        return False
    w_scheme, _, w_rest = wanted.partition("://")
    s_scheme, _, s_rest = scope.partition("://")
    if w_scheme.lower() != s_scheme.lower():
        return False
    w_auth, _, w_path = w_rest.partition("/")
    s_auth, _, s_path = s_rest.partition("/")
    if w_auth.lower() != s_auth.lower():
        return False
    w_segments = [seg for seg in w_path.split("/") if seg]
    s_segments = [seg for seg in s_path.split("/") if seg]
    return s_segments[: len(w_segments)] == w_segments


def announcement_matches(item: Announcement, probe: Probe) -> bool:
    """Whether a device answers this probe."""
    have = set()
    for qname in item.types:
        prefix, _, local = qname.rpartition(":")
        have.add((TYPE_NAMESPACES.get(prefix, ""), local))
    if any(wanted not in have for wanted in probe.types):
        return False
    return all(
        any(_scope_matches(wanted, scope, probe.match_by) for scope in item.scopes)
        for wanted in probe.scopes
    )


def _spoofed(host: str, index: int) -> Announcement:
    """A fake device: random endpoint, XAddr on the spoofing host."""
    return Announcement(
        endpoint=f"urn:uuid:{uuid.uuid4()}",
        xaddrs=(f"http://{host}:{8000 + index % 1000}/onvif/device_service",),
        scopes=scopes_for(ScopeMix.STREAMING, f"spoof-{index}", "Spoof"),
    )


def _in_private_netns() -> bool:
    """Whether this process runs inside a named network namespace (``ip netns add``)."""
    # /proc/1/ns/net is not always readable (sandboxes), so instead of "not PID 1's" the
    # test is positive: our namespace is one of those `ip netns` created under /run/netns.
    try:
        own = os.stat("/proc/self/ns/net")
        named = [entry.stat() for entry in os.scandir(NETNS_DIR)]
    except OSError:
        return False
    return any((s.st_dev, s.st_ino) == (own.st_dev, own.st_ino) for s in named)


@dataclass(slots=True)
class ResponderStats:
    """What a responder has seen and sent."""

    probes: int = 0
    ignored: int = 0
    replies: int = 0
    senders: set[tuple[str, int]] = field(default_factory=set)


class WsDiscoveryResponder(asyncio.DatagramProtocol):
    """Answers WS-Discovery probes for a set of announced devices."""

    def __init__(
        self,
        announcements: Sequence[Announcement],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        multicast_interface: str | None = None,
        spoof: int = 0,
        spoof_host: str | None = None,
        raw_replies: Sequence[bytes] = (),
        one_reply_per_device: bool = True,
        reply_delay: float = 0.0,
        lose_probes: int = 0,
    ) -> None:
        """Configure; nothing is bound until start()."""
        # port 0 picks a free port (unicast only). multicast_interface: the address of the
        # interface to join 239.255.255.250 on. spoof: fake devices announced on spoof_host
        # (default: host or the interface address). raw_replies: sent verbatim after the
        # real ones, "{relates_to}" replaced by the probe's MessageID. one_reply_per_device:
        # a datagram per device, as real cameras send. reply_delay: the maximum random
        # delay before answering (WS-Discovery allows up to 500 ms on multicast).
        # lose_probes: the first N probes are lost on the way (a lossy link).
        self.lose_probes = lose_probes
        self.announcements = list(announcements)
        self.host = host
        self._port = port
        self.multicast_interface = multicast_interface
        self.spoof = spoof
        self.spoof_host = spoof_host or multicast_interface or host
        self.raw_replies = list(raw_replies)
        self.one_reply_per_device = one_reply_per_device
        self.reply_delay = reply_delay
        self.stats = ResponderStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The UDP port bound (after start())."""
        return self._port

    def _check_address(self) -> None:
        """Refuse any real network: loopback only, unless inside a private namespace."""
        if self.multicast_interface is None and ipaddress.ip_address(self.host).is_loopback:
            return
        if not _in_private_netns():
            raise ValueError(
                "a WS-Discovery responder binds loopback only, except inside a network "
                "namespace created for a test (ip netns)"
            )

    def _socket(self) -> socket.socket:
        """The bound (and, for multicast, joined) UDP socket."""
        self._check_address()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            if self.multicast_interface is not None:
                # Several responders share the well-known port in a namespace.
                # Never on the ephemeral unicast bind below: with SO_REUSEADDR,
                # Linux may hand two UDP sockets the same ephemeral port, and
                # one responder would never see a probe.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Bound to the wildcard so both multicast and unicast probes arrive; the
                # group is joined on the one interface inside the namespace.
                sock.bind(("0.0.0.0", self._port or WSD_PORT))
                membership = socket.inet_aton(MULTICAST_GROUP) + socket.inet_aton(
                    self.multicast_interface
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
                sock.setsockopt(
                    socket.IPPROTO_IP,
                    socket.IP_MULTICAST_IF,
                    socket.inet_aton(self.multicast_interface),
                )
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            else:
                sock.bind((self.host, self._port))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        """Bind and start answering."""
        if self._transport is not None:
            return
        sock = self._socket()
        self._port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def stop(self) -> None:
        """Close the socket and drop pending delayed replies."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> Self:
        """Start on entering `async with`."""
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop on leaving `async with`."""
        self.stop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.DatagramTransport)
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Answer a Probe to its sender."""
        probe = parse_probe(data)
        if probe is None:
            self.stats.ignored += 1
            return
        self.stats.probes += 1
        if self.stats.probes <= self.lose_probes:
            return
        sender = (str(addr[0]), int(addr[1]))
        self.stats.senders.add(sender)
        replies = self._replies(probe)
        if not replies:
            return
        if self.reply_delay > 0:
            task = asyncio.get_running_loop().create_task(self._send_later(replies, sender))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._send(replies, sender)

    def _replies(self, probe: Probe) -> list[bytes]:
        """The datagrams answering one probe."""
        matching = [item for item in self.announcements if announcement_matches(item, probe)]
        matching += [
            fake
            for fake in (_spoofed(self.spoof_host, i) for i in range(self.spoof))
            if announcement_matches(fake, probe)
        ]
        if self.one_reply_per_device:
            replies = [probe_matches([item], probe.message_id) for item in matching]
        else:
            replies = [probe_matches(matching, probe.message_id)] if matching else []
        raw = [
            reply.replace(b"{relates_to}", escape(probe.message_id).encode())
            for reply in self.raw_replies
        ]
        return replies + raw

    async def _send_later(self, replies: list[bytes], sender: tuple[str, int]) -> None:
        """Send after a random delay up to reply_delay."""
        await asyncio.sleep(random.uniform(0, self.reply_delay))
        self._send(replies, sender)

    def _send(self, replies: list[bytes], sender: tuple[str, int]) -> None:
        """Send each reply datagram to the prober."""
        if self._transport is None:
            return
        for reply in replies:
            self._transport.sendto(reply, sender)
            self.stats.replies += 1


# -- command line (used by network-namespace tests) -------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI options."""
    parser = argparse.ArgumentParser(
        prog="python -m virtualcam.wsdiscovery",
        description="Answer WS-Discovery probes (loopback, or inside a test network namespace).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="unicast bind address")
    parser.add_argument("--port", type=int, default=WSD_PORT)
    parser.add_argument("--interface", help="join 239.255.255.250 on this interface address")
    parser.add_argument("--xaddr-host", help="host in the announced XAddrs")
    parser.add_argument("--http-port", type=int, default=80, help="port in the XAddrs")
    parser.add_argument("--name", action="append", default=[], help="device name (repeatable)")
    parser.add_argument("--mix", choices=[m.value for m in ScopeMix], default="streaming")
    parser.add_argument("--spoof", type=int, default=0, help="fake devices to announce")
    parser.add_argument("--delay", type=float, default=0.0, help="max random reply delay")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Answer probes until SIGINT/SIGTERM; print READY once bound."""
    host = args.xaddr_host or args.interface or args.host
    announcements = [
        Announcement.make(name, host, args.http_port, mix=ScopeMix(args.mix)) for name in args.name
    ]
    responder = WsDiscoveryResponder(
        announcements,
        host=args.host,
        port=args.port,
        multicast_interface=args.interface,
        spoof=args.spoof,
        reply_delay=args.delay,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await responder.start()
    try:
        sys.stdout.write(f"READY {responder.port}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        responder.stop()
        sys.stdout.write(
            f"STATS probes={responder.stats.probes} replies={responder.stats.replies}\n"
        )
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    try:
        asyncio.run(run(parse_args(argv)))
    except (OSError, ValueError) as err:
        sys.stderr.write(f"virtualcam.wsdiscovery: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
