"""core.wsdiscovery: probes, the hardened ProbeMatches parser and unicast scans on 127.0.0.0/8."""

import asyncio
from collections.abc import AsyncIterator, Iterator
import contextlib
from dataclasses import replace
import ipaddress
import logging
from pathlib import Path
import socket
import time
import tracemalloc
from typing import override

import pytest
import pytest_socket

from custom_components.localcam.core.errors import InvalidUrlError, NotLocalError
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.onvif import read_device
from custom_components.localcam.core.wsdiscovery import (
    MAX_NAMESPACE_LENGTH,
    MAX_NAMESPACES,
    MAX_REPLY_SIZE,
    PROBE_TYPES,
    DiscoveredDevice,
    _multicast_socket,
    _parse_xml,
    _Prefixes,
    _Scan,
    _send_and_wait,
    _target,
    build_probe,
    build_probes,
    devices_found,
    parse_probe_matches,
    scan,
    unicast_range,
)
from virtualcam import CameraConfig, CameraFarm, VirtualCamera, color_for
from virtualcam.wsdiscovery import (
    Announcement,
    ScopeMix,
    WsDiscoveryResponder,
    parse_probe,
    probe_matches,
)

POLICY = NetPolicy()
SOURCE = "192.168.1.20"
WSD_NS = 'xmlns:s="http://www.w3.org/2003/05/soap-envelope" ' + (
    'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
    'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" '
    'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"'
)
GOOD_MATCH = (
    "<d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:{uuid}</a:Address>"
    "</a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types>"
    "<d:Scopes>onvif://www.onvif.org/name/Front%20door onvif://www.onvif.org/hardware/X1"
    " onvif://www.onvif.org/MAC/AA-BB-CC-DD-EE-01</d:Scopes>"
    "<d:XAddrs>{xaddr}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch>"
)
DN_NS = "http://www.onvif.org/ver10/network/wsdl"
UUID_A = "6f0e5a54-0000-4000-8000-00000000000a"
UUID_B = "6f0e5a54-0000-4000-8000-00000000000b"


def reply(*matches: str, relates_to: str = "urn:uuid:probe", namespaces: str = WSD_NS) -> bytes:
    """A ProbeMatches envelope around match fragments."""
    return (
        f"<s:Envelope {namespaces}><s:Header><a:RelatesTo>{relates_to}</a:RelatesTo>"
        f"</s:Header><s:Body><d:ProbeMatches>{''.join(matches)}</d:ProbeMatches></s:Body>"
        "</s:Envelope>"
    ).encode()


def good(uuid: str = UUID_A, xaddr: str = f"http://{SOURCE}/onvif/device_service") -> str:
    """One valid ProbeMatch."""
    return GOOD_MATCH.format(uuid=uuid, xaddr=xaddr)


@contextlib.asynccontextmanager
async def responders(*items: WsDiscoveryResponder) -> AsyncIterator[list[WsDiscoveryResponder]]:
    """Start responders on 127.0.0.1 and always stop them."""
    started: list[WsDiscoveryResponder] = []
    try:
        for item in items:
            await item.start()
            started.append(item)
        yield started
    finally:
        for item in started:
            item.stop()


def targets(items: list[WsDiscoveryResponder]) -> list[str]:
    """unicast_hosts entries for responders."""
    return [f"{item.host}:{item.port}" for item in items]


def lan(index: int) -> str:
    """A loopback address of camera `index`'s own: scan limits are per address, as on a LAN."""
    return f"127.0.0.{10 + index}"


# -- probes -----------------------------------------------------------------------------------


def test_probes_are_separate_unfiltered_and_fresh() -> None:
    """One probe per type, no scope filter, a new MessageID every time."""
    probes = build_probes()
    again = build_probes()
    assert len(probes) == len(PROBE_TYPES) == 2
    ids = {message_id for message_id, _ in probes + again}
    assert len(ids) == 4
    parsed = [parse_probe(message) for _, message in probes]
    assert [p.types for p in parsed if p] == [
        (("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter"),),
        (("http://www.onvif.org/ver10/device/wsdl", "Device"),),
    ]
    assert all(p is not None and p.scopes == () for p in parsed)
    assert all(b"Scopes" not in message for _, message in probes)
    with pytest.raises(ValueError, match="unknown probe type"):
        build_probe("x:Printer")


# -- parser -----------------------------------------------------------------------------------


def test_parse_good_reply() -> None:
    """Endpoint, types, scopes, name, hardware and MAC are read from a ProbeMatch."""
    devices = parse_probe_matches(reply(good()), SOURCE)
    assert devices == [
        DiscoveredDevice(
            endpoint=f"urn:uuid:{UUID_A}",
            xaddrs=(f"http://{SOURCE}/onvif/device_service",),
            scopes=(
                "onvif://www.onvif.org/name/Front%20door",
                "onvif://www.onvif.org/hardware/X1",
                "onvif://www.onvif.org/MAC/AA-BB-CC-DD-EE-01",
            ),
            types=("dn:NetworkVideoTransmitter",),
            host=SOURCE,
            port=80,
            name="Front door",
            hardware="X1",
            mac="aa:bb:cc:dd:ee:01",
        )
    ]
    assert devices[0].device_uuid == UUID_A


def test_parse_other_endpoint_forms() -> None:
    """ "uuid:" endpoints are normalised; other URI endpoints are kept, without a UUID."""
    upper = UUID_A.upper()
    data = reply(good(uuid=upper).replace(f"urn:uuid:{upper}", f"uuid:{upper}"))
    (device,) = parse_probe_matches(data, SOURCE)
    assert device.endpoint == f"urn:uuid:{UUID_A}"
    data = reply(good().replace(f"urn:uuid:{UUID_A}", "http://192.168.1.20/device"))
    (device,) = parse_probe_matches(data, SOURCE)
    assert device.endpoint == "http://192.168.1.20/device"
    assert device.device_uuid is None


def test_unicast_target_syntax() -> None:
    """Targets are "host", "host:port" or "[v6]:port"; anything else is refused."""
    assert _target("192.168.1.5", 3702) == (ipaddress.ip_address("192.168.1.5"), 3702)
    assert _target("192.168.1.5:4000", 3702) == (ipaddress.ip_address("192.168.1.5"), 4000)
    assert _target("[fe80::1]:4000", 3702) == (ipaddress.ip_address("fe80::1"), 4000)
    assert _target("[fd00::5]", 3702) == (ipaddress.ip_address("fd00::5"), 3702)
    assert _target("fd00::5", 3702) == (ipaddress.ip_address("fd00::5"), 3702)
    for text in ("[fd00::5]x", "host:port", "1.2.3.4:0", "cam.local", "[::1]:99999"):
        with pytest.raises(ValueError):  # noqa: PT011  (the reason does not matter here)
            _target(text, 3702)


def test_parse_prefers_the_xaddr_of_the_sender() -> None:
    """A multi-homed camera lists several XAddrs; the one we heard from is chosen."""
    xaddrs = "http://10.0.0.9:8080/onvif/device_service http://192.168.1.20:8899/onvif/ds"
    (device,) = parse_probe_matches(reply(good(xaddr=xaddrs)), SOURCE)
    assert (device.host, device.port) == (SOURCE, 8899)
    assert len(device.xaddrs) == 2


@pytest.mark.parametrize(
    "xaddr",
    [
        "http://192.168.1.20%25x/onvif/device_service",  # IPv4 has no zone
        "http://192.168.1.20%25.evil.example:80/onvif/device_service",
        "http://[fd00::20%25eth0]:80/onvif/device_service",  # a zone off link-local
        "http://[fe80::20%25a%2Fb]:80/onvif/device_service",  # a zone that is no name
    ],
)
def test_an_xaddr_host_that_is_no_ip_literal_is_refused(xaddr: str) -> None:
    """Only the part before "%" was checked: such a host passed as the address before it.

    It matched no configured camera, and its offer failed later with invalid_host.
    A zone on a link-local address, as NetPolicy takes it, still passes.
    """
    problems: list[str] = []
    assert parse_probe_matches(reply(good(xaddr=xaddr)), SOURCE, problems=problems) == []
    assert problems
    linked = "http://[fe80::20%25eth0]:80/onvif/device_service"
    (device,) = parse_probe_matches(reply(good(xaddr=linked)), SOURCE)
    assert device.host == "fe80::20%eth0"


def test_a_reply_from_another_host_cannot_stand_in_for_the_camera() -> None:
    """Another LAN host answers the probe first, naming the camera's address and UUID.

    Its reply was kept and the camera's own dropped: with a configured
    camera's MAC in it, the new camera was hidden from the add flow and
    from offers for as long as the other host answered first.
    """
    state = _Scan(POLICY, {"urn:uuid:probe"}, 256, 4, set())
    camera = "http://192.168.1.20:80/onvif/device_service"
    claimed = good(xaddr=camera).replace("AA-BB-CC-DD-EE-01", "02-00-00-00-00-99")
    state.datagram_received(reply(claimed), ("192.168.1.66", 3702))
    state.datagram_received(reply(good(xaddr=camera)), (SOURCE, 3702))
    (device,) = devices_found(state.devices.values())
    assert (device.host, device.mac) == (SOURCE, "aa:bb:cc:dd:ee:01")
    # Not the other way round: a later claim from another host changes nothing.
    state.datagram_received(reply(claimed), ("192.168.1.67", 3702))
    (device,) = devices_found(state.devices.values())
    assert device.mac == "aa:bb:cc:dd:ee:01"


def _nested(depth: int) -> bytes:
    """A valid envelope with a deeply nested element."""
    return reply(good()).replace(b"<d:ProbeMatches>", b"<d:ProbeMatches>" + b"<x>" * depth)


def _declaring(root: int, children: int) -> bytes:
    """A good reply, `root` extra namespaces on the envelope, `children` header elements each
    declaring one more (the reviewer's datagram cost 100 MiB and 60 ms when each element
    with a declaration copied its parent's prefix map)."""
    extra = " ".join(f'xmlns:n{i:x}="urn:x"' for i in range(root))
    data = reply(good(), namespaces=f"{WSD_NS} {extra}")
    return data.replace(b"</s:Header>", b'<x xmlns:z="urn:x"/>' * children + b"</s:Header>")


def _long_namespace(length: int, uses: int) -> bytes:
    """A good reply whose header declares one namespace URI `length` long and uses it `uses`
    times (expat copies the URI into the name of every element that uses it)."""
    uri = "urn:" + "u" * (length - 4)
    return reply(good()).replace(
        b"</s:Header>", f'<p:x xmlns:p="{uri}">'.encode() + b"<p:y/>" * uses + b"</p:x></s:Header>"
    )


# (case, datagram, endpoints expected to survive)
BAD_INPUT: list[tuple[str, bytes, set[str]]] = [
    ("empty", b"", set()),
    ("truncated", reply(good())[:200], set()),
    ("not xml", b"\x00\xff\xfe garbage", set()),
    ("oversized", reply(good(), good(UUID_B)) + b" " * MAX_REPLY_SIZE, set()),
    ("ten megabytes", b"<a>" + b"x" * 10_000_000 + b"</a>", set()),
    (
        "billion laughs",
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)
        )
        + b"]><l>&j;</l>",
        set(),
    ),
    (
        "entity in a reply",
        b'<!DOCTYPE s:Envelope [<!ENTITY u "' + UUID_A.encode() + b'">]>' + reply(good(uuid="&u;")),
        set(),
    ),
    ("undefined entity", reply(good(uuid="&u;")), set()),
    (
        "parameter entity",
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><x/>',
        set(),
    ),
    ("wrong envelope namespace", reply(good()).replace(b"2003/05/soap-envelope", b"1999/x"), set()),
    (
        "wrong discovery namespace",
        reply(good()).replace(b"ws/2005/04/discovery", b"ws/2099/01/discovery"),
        set(),
    ),
    (
        "wrong addressing namespace on the EPR",
        reply(
            good(),
            good(UUID_B)
            .replace("<a:EndpointReference>", "<d:EndpointReference>")
            .replace("</a:EndpointReference>", "</d:EndpointReference>"),
        ),
        {f"urn:uuid:{UUID_A}"},
    ),
    ("not a reply to our probe", reply(good(), relates_to="urn:uuid:other"), set()),
    ("no ProbeMatches", reply().replace(b"<d:ProbeMatches></d:ProbeMatches>", b""), set()),
    ("duplicate body", reply(good()).replace(b"</s:Body>", b"</s:Body><s:Body/>"), set()),
    (
        "missing EPR",
        reply(
            good(),
            good(UUID_B).replace(
                f"<a:EndpointReference><a:Address>urn:uuid:{UUID_B}"
                "</a:Address></a:EndpointReference>",
                "",
            ),
        ),
        {f"urn:uuid:{UUID_A}"},
    ),
    (
        "missing XAddrs",
        reply(
            good(),
            good(UUID_B).replace(f"<d:XAddrs>http://{SOURCE}/onvif/device_service</d:XAddrs>", ""),
        ),
        {f"urn:uuid:{UUID_A}"},
    ),
    (
        "duplicate XAddrs",
        reply(
            good(UUID_B).replace(
                "<d:MetadataVersion>", "<d:XAddrs>http://10.0.0.1/</d:XAddrs><d:MetadataVersion>"
            ),
            good(),
        ),
        {f"urn:uuid:{UUID_A}"},
    ),
    (
        "duplicate EPR",
        reply(
            good(UUID_B).replace(
                "<d:Types>",
                "<a:EndpointReference><a:Address>urn:uuid:"
                f"{UUID_A}</a:Address></a:EndpointReference><d:Types>",
            ),
            good(),
        ),
        {f"urn:uuid:{UUID_A}"},
    ),
    ("same endpoint twice", reply(good(), good()), {f"urn:uuid:{UUID_A}"}),
    (
        "EPR without an address",
        reply(good().replace(f"<a:Address>urn:uuid:{UUID_A}</a:Address>", ""), good(UUID_B)),
        {f"urn:uuid:{UUID_B}"},
    ),
    ("endpoint that is not a URI", reply(good(uuid="x").replace("urn:uuid:x", "just text")), set()),
    (
        "stray element in ProbeMatches",
        reply("<d:Other/>", good()),
        {f"urn:uuid:{UUID_A}"},
    ),
    (
        "65 matches in one reply",
        reply(*(good(f"6f0e5a54-0000-4000-8000-{i:012x}") for i in range(65))),
        {f"urn:uuid:6f0e5a54-0000-4000-8000-{i:012x}" for i in range(64)},
    ),
    ("malformed uuid", reply(good(uuid="not-a-uuid"), good(UUID_B)), {f"urn:uuid:{UUID_B}"}),
    ("bad MetadataVersion", reply(good().replace(">1</d:Meta", ">x</d:Meta")), set()),
    (
        "port zero",
        reply(good(xaddr="http://192.168.1.20:0/x"), good(UUID_B)),
        {f"urn:uuid:{UUID_B}"},
    ),
    (
        "port 70000",
        reply(good(xaddr="http://192.168.1.20:70000/x"), good(UUID_B)),
        {f"urn:uuid:{UUID_B}"},
    ),
    ("ftp scheme", reply(good(xaddr="ftp://192.168.1.20/x"), good(UUID_B)), {f"urn:uuid:{UUID_B}"}),
    ("file scheme", reply(good(xaddr="file:///etc/passwd"), good(UUID_B)), {f"urn:uuid:{UUID_B}"}),
    ("public xaddr", reply(good(xaddr="http://8.8.8.8/x"), good(UUID_B)), {f"urn:uuid:{UUID_B}"}),
    ("metadata xaddr", reply(good(xaddr="http://169.254.169.254/x")), set()),
    ("host name xaddr", reply(good(xaddr="http://cam.example.com/x")), set()),
    ("ambiguous numeric host", reply(good(xaddr="http://0x7f.1/x")), set()),
    ("credentials in xaddr", reply(good(xaddr="http://u:p@192.168.1.20/x")), set()),
    ("too many xaddrs", reply(good(xaddr=" ".join(["http://192.168.1.20/"] * 50))), set()),
    ("endless scope", reply(good().replace("X1", "X" * 5000)), set()),
    ("control characters in endpoint", reply(good(uuid="a\x01b")), set()),
    ("deep nesting", _nested(5000), set()),
    ("many elements", reply(good()).replace(b"<d:Types>", b"<x/>" * 10_000 + b"<d:Types>"), set()),
    ("namespace declarations on every element", _declaring(1600, 1600), set()),
    ("one namespace too many", _declaring(MAX_NAMESPACES - 4 + 1, 0), set()),
    ("long namespace URI used everywhere", _long_namespace(40_000, 3000), set()),
    ("namespace URI one character too long", _long_namespace(MAX_NAMESPACE_LENGTH + 1, 1), set()),
    (
        "control character in a scope",
        reply(good().replace("hardware/X1", "hardware/X\x9b1"), good(UUID_B)),
        {f"urn:uuid:{UUID_B}"},
    ),
    (
        "DEL in a scope",
        reply(good().replace("hardware/X1", "hardware/X\x7f1"), good(UUID_B)),
        {f"urn:uuid:{UUID_B}"},
    ),
    ("utf-16", reply(good()).decode().encode("utf-16"), {f"urn:uuid:{UUID_A}"}),
    (
        "latin-1 declared",
        b'<?xml version="1.0" encoding="ISO-8859-1"?>' + reply(good()),
        {f"urn:uuid:{UUID_A}"},
    ),
    ("unknown encoding", b'<?xml version="1.0" encoding="x-klingon"?>' + reply(good()), set()),
]


@pytest.mark.parametrize(("case", "data", "survivors"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_parser_survives_bad_input(case: str, data: bytes, survivors: set[str]) -> None:
    """Each bad match is dropped, good ones kept; nothing raises, memory stays small."""
    problems: list[str] = []
    tracemalloc.start()
    try:
        start = time.perf_counter()
        devices = parse_probe_matches(
            data, SOURCE, policy=POLICY, relates_to={"urn:uuid:probe"}, problems=problems
        )
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert {d.endpoint for d in devices} == survivors
    if case not in ("same endpoint twice", "utf-16", "latin-1 declared"):
        assert problems, case
    assert len(problems) <= 16
    assert elapsed < 0.5
    assert peak < 8 * 1024 * 1024, peak  # the 10 MB input itself is the caller's


def test_namespace_limits_reject_the_whole_reply() -> None:
    """Past either namespace limit the datagram is refused as a whole, with its reason."""
    for data in (
        _declaring(1600, 1600),
        _declaring(MAX_NAMESPACES - 4, 1),
        _long_namespace(40_000, 3000),
        _long_namespace(MAX_NAMESPACE_LENGTH + 1, 1),
    ):
        assert len(data) <= MAX_REPLY_SIZE
        problems: list[str] = []
        assert parse_probe_matches(data, SOURCE, problems=problems) == []
        assert problems == ["too many or too long namespace declarations"]


def test_namespaces_up_to_the_limits_are_kept() -> None:
    """A reply with exactly MAX_NAMESPACES declarations (WSD_NS has 4), on the root and on
    elements, and a URI of MAX_NAMESPACE_LENGTH, is a normal reply."""
    for data in (
        _declaring(MAX_NAMESPACES - 4, 0),
        _declaring(MAX_NAMESPACES - 4 - 100, 100),
        _long_namespace(MAX_NAMESPACE_LENGTH, 3000),
    ):
        problems: list[str] = []
        (device,) = parse_probe_matches(data, SOURCE, problems=problems)
        assert problems == []
        assert device.types == ("dn:NetworkVideoTransmitter",)


def test_elements_hold_only_their_own_namespace_declarations() -> None:
    """Memory for prefixes is linear: the mappings all elements hold add up to the
    declarations in the document, whatever the nesting (no per-element copies)."""
    root = _parse_xml(_declaring(150, 100))
    links: dict[int, _Prefixes] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        link = node.prefixes
        while link is not None:
            links[id(link)] = link
            link = link.outer
    assert sum(len(link.declared) for link in links.values()) == 4 + 150 + 100


def test_type_prefixes_resolve_through_nested_declarations() -> None:
    """A prefix resolves to its nearest declaration: on the Types element, on an ancestor in
    between, or shadowing the envelope's; an unbound or undeclared prefix stays verbatim."""
    other = "urn:example:other"
    cases = [
        # (Types element, ProbeMatch attributes, expected types)
        ("<d:Types>dn:NetworkVideoTransmitter</d:Types>", "", ("dn:NetworkVideoTransmitter",)),
        (
            '<d:Types xmlns:t="http://www.onvif.org/ver10/device/wsdl">t:Device</d:Types>',
            "",
            ("tds:Device",),
        ),
        (
            "<d:Types>q:Device</d:Types>",
            ' xmlns:q="http://www.onvif.org/ver10/device/wsdl"',
            ("tds:Device",),
        ),
        ("<d:Types>dn:Camera</d:Types>", f' xmlns:dn="{other}"', (f"{{{other}}}Camera",)),
        (
            f'<d:Types xmlns:dn="{DN_NS}">dn:Camera</d:Types>',
            f' xmlns:dn="{other}"',
            ("dn:Camera",),
        ),
        ("<d:Types>zz:Camera Device</d:Types>", "", ("zz:Camera", "Device")),
        ('<d:Types xmlns="">Device</d:Types>', f' xmlns="{DN_NS}"', ("Device",)),
        ("<d:Types>Device</d:Types>", f' xmlns="{DN_NS}"', ("dn:Device",)),
    ]
    for types, attributes, expected in cases:
        match = good().replace("<d:Types>dn:NetworkVideoTransmitter</d:Types>", types)
        match = match.replace("<d:ProbeMatch>", f"<d:ProbeMatch{attributes}>", 1)
        problems: list[str] = []
        (device,) = parse_probe_matches(reply(match), SOURCE, problems=problems)
        assert (device.types, problems) == (expected, []), types


@pytest.mark.parametrize(
    ("scope", "name"),
    [
        ("onvif://www.onvif.org/name/Küche", "Küche"),
        ("onvif://www.onvif.org/name/门口", "门口"),
        ("onvif://www.onvif.org/location/门口", None),
        ("onvif://www.onvif.org/name/K%C3%BCche", "Küche"),
        ("onvif://www.onvif.org/name/Caf%C2%9Be", "Cafe"),  # a C1 control is left out
    ],
)
def test_non_ascii_scopes_keep_the_camera(scope: str, name: str | None) -> None:
    """Cameras send UTF-8 names and locations, raw or percent-encoded: the device is listed
    with its scopes as sent, and its name is read from them."""
    hardware = "onvif://www.onvif.org/hardware/X1"
    mac = "onvif://www.onvif.org/MAC/AA-BB-CC-DD-EE-01"
    match = good().replace(
        f"<d:Scopes>onvif://www.onvif.org/name/Front%20door {hardware}",
        f"<d:Scopes>{scope} {hardware}",
    )
    for data in (reply(match), reply(match).decode().encode("utf-16")):
        problems: list[str] = []
        (device,) = parse_probe_matches(data, SOURCE, problems=problems)
        assert problems == []
        assert device.scopes == (scope, hardware, mac)
        assert (device.name, device.hardware, device.mac) == (name, "X1", "aa:bb:cc:dd:ee:01")


def test_external_entity_is_never_read(tmp_path: Path) -> None:
    """SYSTEM entities (a local file here) are refused before anything is opened."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    for data in (
        f'<!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]><x>&e;</x>'.encode(),
        f'<!DOCTYPE x SYSTEM "file://{secret}"><x/>'.encode(),
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + reply(good(uuid="&e;")),
    ):
        problems: list[str] = []
        assert parse_probe_matches(data, SOURCE, problems=problems) == []
        assert problems == ["DTD or entity declaration"]
        assert "TOPSECRET" not in repr(problems)


def test_parser_rejects_non_local_and_invalid_sources() -> None:
    """Replies from public or invalid source addresses are ignored as a whole."""
    problems: list[str] = []
    assert parse_probe_matches(reply(good()), "8.8.8.8", problems=problems) == []  # refused
    assert parse_probe_matches(reply(good()), "not-an-ip", problems=problems) == []
    assert problems == ["reply from public address 8.8.8.8", "invalid source address"]


def test_injected_policy_decides_what_is_local() -> None:
    """An extra network in the policy admits its XAddrs; the default policy refuses them."""
    data = reply(good(xaddr="http://100.64.1.5:80/onvif/device_service"))
    assert parse_probe_matches(data, SOURCE) == []
    wider = NetPolicy(extra_networks=(ipaddress.ip_network("100.64.0.0/10"),))
    (device,) = parse_probe_matches(data, SOURCE, policy=wider)
    assert device.host == "100.64.1.5"


def test_parser_fuzz_never_raises() -> None:
    """Random mutations of a good reply (hypothesis if installed) never raise."""
    hypothesis = pytest.importorskip("hypothesis")
    strategies = pytest.importorskip("hypothesis.strategies")
    base = reply(good(), good(UUID_B))

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(
        cut=strategies.integers(0, len(base)),
        insert=strategies.binary(max_size=64),
        where=strategies.integers(0, len(base)),
        junk=strategies.binary(max_size=512),
    )
    def check(cut: int, insert: bytes, where: int, junk: bytes) -> None:
        for data in (base[:cut], base[:where] + insert + base[where:], junk):
            result = parse_probe_matches(data, SOURCE)
            assert isinstance(result, list)
            assert all(isinstance(device, DiscoveredDevice) for device in result)

    check()


def test_parse_rate() -> None:
    """A typical one-camera reply parses in well under a millisecond."""
    data = probe_matches([Announcement.make("cam", SOURCE, 80)], "urn:uuid:probe")
    count = 2000
    start = time.perf_counter()
    for _ in range(count):
        assert len(parse_probe_matches(data, SOURCE)) == 1
    rate = count / (time.perf_counter() - start)
    print(f"parse rate: {rate:.0f} replies/s")
    assert rate > 2000


# -- unicast range ----------------------------------------------------------------------------


def test_unicast_range() -> None:
    """Single hosts, CIDR and last-octet ranges, bounded and policy-checked."""
    assert unicast_range("192.168.1.10") == ["192.168.1.10"]
    assert unicast_range("192.168.1.0/30") == ["192.168.1.1", "192.168.1.2"]
    assert unicast_range("192.168.1.10-12, 10.0.0.1") == [
        "192.168.1.10",
        "192.168.1.11",
        "192.168.1.12",
        "10.0.0.1",
    ]
    assert unicast_range("10.0.0.5-10.0.0.6") == ["10.0.0.5", "10.0.0.6"]
    assert len(unicast_range("192.168.1.0/24")) == 254
    assert len(unicast_range("192.168.1.0-255")) == 256
    for text in ("192.168.0.0/23", "10.0.0.0/8", "192.168.1.0/24 192.168.2.1-3"):
        with pytest.raises(InvalidUrlError, match="more than 256"):
            unicast_range(text)
    for text in ("", "cam.local", "192.168.1.20-10", "192.168.1.1-300", "1.2.3.4/99", "-"):
        with pytest.raises(InvalidUrlError):
            unicast_range(text)
    with pytest.raises(NotLocalError):
        unicast_range("8.8.8.0/30")


# -- scans on 127.0.0.1 -----------------------------------------------------------------------


@pytest.mark.usefixtures("socket_enabled")
async def test_unicast_scan_finds_fifty_cameras_within_a_second() -> None:
    """50 responders with mixed scope sets (incl. Device-only): all found in under 1 s."""
    mixes = list(ScopeMix)
    items = [
        WsDiscoveryResponder(
            [Announcement.make(f"cam-{i:02d}", lan(i), 8000 + i, mix=mixes[i % len(mixes)])],
            host=lan(i),
        )
        for i in range(50)
    ]
    async with responders(*items) as running:
        start = time.monotonic()
        found = await scan(unicast_hosts=targets(running), policy=POLICY)
        elapsed = time.monotonic() - start
    print(f"50 cameras by unicast in {elapsed:.3f} s")
    assert sorted(d.name or "" for d in found) == [f"cam-{i:02d}" for i in range(50)]
    assert elapsed < 1.0
    by_name = {d.name: d for d in found}
    assert by_name["cam-03"].types == ("tds:Device",)  # Device-only: found by the second probe
    assert "onvif://www.onvif.org/Profile/Streaming" not in by_name["cam-01"].scopes  # T only
    assert by_name["cam-07"].port == 8007


@pytest.mark.usefixtures("socket_enabled")
async def test_spoofed_flood_cannot_push_real_cameras_out(caplog: pytest.LogCaptureFixture) -> None:
    """200 fake devices from one host: at most max_per_host kept, every real camera listed."""
    caplog.set_level(logging.INFO, logger="custom_components.localcam.core.wsdiscovery")
    real = [
        WsDiscoveryResponder([Announcement.make(f"real-{i}", lan(i), 9000 + i)], host=lan(i))
        for i in range(20)
    ]
    spoofer = WsDiscoveryResponder([], host="127.0.0.2", spoof=200)
    async with responders(spoofer, *real) as running:
        start = time.monotonic()
        found = await scan(unicast_hosts=targets(running), max_replies=256, policy=POLICY)
        elapsed = time.monotonic() - start
    names = [d.name for d in found]
    spoofed = [name for name in names if name and name.startswith("spoof-")]
    print(f"spoofer sent {spoofer.stats.replies} replies; {len(spoofed)} kept; {elapsed:.2f} s")
    assert spoofer.stats.replies >= 400  # 200 fakes for each of the two probes
    assert sorted(n for n in names if n and n.startswith("real-")) == sorted(
        f"real-{i}" for i in range(20)
    )
    assert len(spoofed) <= 4
    assert elapsed <= 3.0
    lines = [r for r in caplog.records if "127.0.0.2 " in r.getMessage()]
    assert len(lines) == 1  # one line for the flooding source, not one per packet


class PortFlooder(asyncio.DatagramProtocol):
    """A LAN host that answers each probe from many source ports, four fakes per reply."""

    def __init__(self, host: str, ports: int) -> None:
        """Configure; nothing is bound until start()."""
        self.host = host
        self.ports = ports
        self.port = 0
        self.sent = 0
        self._senders: list[socket.socket] = []
        self._listener: asyncio.DatagramTransport | None = None
        self._answered: set[str] = set()

    async def start(self) -> None:
        """Bind the probe listener and one socket per source port (loopback only)."""
        loop = asyncio.get_running_loop()
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, 0)
        )
        self.port = self._listener.get_extra_info("sockname")[1]
        for _ in range(self.ports):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._senders.append(sock)
            sock.bind((self.host, 0))  # a new ephemeral source port each

    def stop(self) -> None:
        """Close every socket."""
        if self._listener is not None:
            self._listener.close()
        for sock in self._senders:
            sock.close()

    @override
    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Flood once per probe MessageID (repeats of a probe reuse it)."""
        probe = parse_probe(data)
        if probe is None or probe.message_id in self._answered:
            return
        self._answered.add(probe.message_id)
        # All at once, as a flooder would: the whole wave is queued at the scan's socket
        # before any camera answers (the scan's 1 MB receive buffer holds it).
        for index, sock in enumerate(self._senders):
            fakes = [
                Announcement.make(f"flood-{probe.message_id}-{index}-{n}", self.host, 8000 + index)
                for n in range(4)
            ]
            sock.sendto(probe_matches(fakes, probe.message_id), (str(addr[0]), int(addr[1])))
            self.sent += 1


@pytest.mark.usefixtures("socket_enabled")
async def test_flood_from_many_source_ports_is_bounded_per_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """260 source ports on one host, four fakes each: max_per_host kept, the camera listed."""
    caplog.set_level(logging.INFO, logger="custom_components.localcam.core.wsdiscovery")
    flooder = PortFlooder("127.0.0.2", ports=260)
    # The camera misses the first two probes and answers their first repeat, so its reply
    # comes after the whole flood, when a per-socket budget would already be spent.
    camera = WsDiscoveryResponder(
        [Announcement.make("real", "127.0.0.3", 8080)], host="127.0.0.3", lose_probes=2
    )
    try:
        await flooder.start()
        async with responders(camera):
            found = await scan(
                unicast_hosts=[f"127.0.0.2:{flooder.port}", f"127.0.0.3:{camera.port}"],
                timeout=1.0,
                max_replies=256,
                max_per_host=4,
                policy=POLICY,
            )
    finally:
        flooder.stop()
    assert [d.name for d in found if d.host == "127.0.0.3"] == ["real"]
    assert len([d for d in found if d.host == "127.0.0.2"]) == 4
    assert len(found) == 5
    # More source ports than max_replies really flooded (one wave per probe type).
    assert flooder.sent == 2 * 260
    lines = [r.getMessage() for r in caplog.records if "127.0.0.2 " in r.getMessage()]
    assert len(lines) == 1  # one line for the flooding host, whatever its port count
    assert "127.0.0.2 sent more than 4 devices or replies" in lines[0]


class RecordingTransport(asyncio.DatagramTransport):
    """Records what a scan sends, instead of sending it."""

    def __init__(self) -> None:
        """Start with nothing sent."""
        super().__init__()
        self.sent: list[tuple[str, int]] = []

    @override
    def sendto(self, data: bytes, addr: object = None) -> None:
        """Record the destination only."""
        assert isinstance(addr, tuple)
        self.sent.append(addr)


async def test_zoned_link_local_target_counts_as_answered() -> None:
    """A link-local target with a zone is answered by a reply whose zone is spelt otherwise."""
    # No real link-local traffic in tests: the scan's protocol is fed the datagram as the
    # kernel would hand it over (zone as an interface name), the sends are recorded.
    probes = build_probes()
    target = ("fe80::1%2", 3702)  # typed with an interface index
    state = _Scan(POLICY, {mid for mid, _ in probes}, 256, 4, {target})
    data = reply(good(xaddr="http://[fe80::1]/onvif/device_service"), relates_to=probes[0][0])
    state.datagram_received(data, ("fe80::1%eth0", 3702, 0, 2))
    assert [d.host for d in state.devices.values()] == ["fe80::1"]
    transport = RecordingTransport()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await _send_and_wait(loop, state, probes, [(transport, target)], start + 3.0, multicast=False)
    assert loop.time() - start < 1.0  # ends after the quiet period, not at the deadline
    assert transport.sent == [target, target]  # no repeats to a host that answered


@pytest.mark.usefixtures("socket_enabled")
async def test_invalid_reply_ignored_rest_listed(caplog: pytest.LogCaptureFixture) -> None:
    """A match with an invalid port is ignored; other devices and responders are listed."""
    caplog.set_level(logging.INFO, logger="custom_components.localcam.core.wsdiscovery")
    broken = Announcement(
        endpoint=f"urn:uuid:{UUID_A}", xaddrs=("http://127.0.0.1:99999/onvif/device_service",)
    )
    same_datagram = WsDiscoveryResponder(
        [broken, Announcement.make("neighbour", lan(0), 8080)],
        host=lan(0),
        one_reply_per_device=False,
    )
    garbage = WsDiscoveryResponder(
        [Announcement.make("noisy", lan(1), 8081)],
        host=lan(1),
        raw_replies=[b"<not xml", reply(good(UUID_B), relates_to="{relates_to}")],
    )
    plain = WsDiscoveryResponder([Announcement.make("plain", lan(2), 8082)], host=lan(2))
    async with responders(same_datagram, garbage, plain) as running:
        found = await scan(unicast_hosts=targets(running), timeout=1.0, policy=POLICY)
    # The raw reply (XAddr on 192.168.1.20, "Front door") is valid and answers our probe.
    assert sorted(d.name or "" for d in found) == ["Front door", "neighbour", "noisy", "plain"]
    assert f"urn:uuid:{UUID_A}" not in {d.endpoint for d in found}
    bad_lines = [r.getMessage() for r in caplog.records if "bad replies" in r.getMessage()]
    assert len(bad_lines) == 2  # one per misbehaving source, whatever the packet count
    assert any("malformed xaddr" in line or "port" in line for line in bad_lines)


@pytest.mark.usefixtures("socket_enabled")
async def test_scan_bounds_and_no_targets() -> None:
    """No interfaces and no hosts: nothing sent; public and malformed targets are skipped."""
    start = time.monotonic()
    assert await scan(policy=POLICY) == []
    assert await scan(unicast_hosts=["8.8.8.8", "nonsense", "127.0.0.1:0"], policy=POLICY) == []
    assert time.monotonic() - start < 0.1
    with pytest.raises(InvalidUrlError):
        await scan(unicast_hosts=["127.0.0.1"], port=0, policy=POLICY)
    # An address that is not ours cannot be multicast from: skipped, nothing sent.
    assert await scan(multicast_interfaces=["192.0.2.1", "eth0"], policy=POLICY) == []
    assert await scan(unicast_hosts=["127.0.0.1"], timeout=0, policy=POLICY) == []
    silent = WsDiscoveryResponder([])
    async with responders(silent) as running:
        start = time.monotonic()
        assert await scan(unicast_hosts=targets(running), timeout=60, policy=POLICY) == []
        assert time.monotonic() - start <= 3.2  # clamped to 3 s
        # Both probe types, sent once and repeated three times while unanswered.
        assert silent.stats.probes == 8


@pytest.mark.usefixtures("socket_enabled")
async def test_lossy_link_camera_found_by_the_repeats() -> None:
    """A camera whose first six probes are lost (a bad Wi-Fi link) is still listed."""
    lossy = WsDiscoveryResponder([Announcement.make("lossy", "127.0.0.1", 8090)], lose_probes=6)
    async with responders(lossy) as running:
        found = await scan(unicast_hosts=targets(running), policy=POLICY)
    assert [device.name for device in found] == ["lossy"]
    assert lossy.stats.probes == 8  # the last repeat got through
    short = WsDiscoveryResponder([], lose_probes=0)
    async with responders(short) as running:
        start = time.monotonic()
        await scan(unicast_hosts=targets(running), timeout=1.0, policy=POLICY)
        # A short scan still repeats three times, inside its own deadline.
        assert short.stats.probes == 8
        assert time.monotonic() - start <= 1.2


@pytest.mark.usefixtures("socket_enabled")
async def test_max_replies_bounds_the_scan() -> None:
    """Once max_replies datagrams are parsed the scan ends."""
    items = [
        WsDiscoveryResponder([Announcement.make(f"c{i}", lan(i), 7000 + i)], host=lan(i))
        for i in range(10)
    ]
    async with responders(*items) as running:
        found = await scan(unicast_hosts=targets(running), max_replies=3, policy=POLICY)
    assert 1 <= len(found) <= 3


@pytest.fixture
async def discoverable_camera(socket_enabled: None) -> AsyncIterator[VirtualCamera]:
    """A virtual ONVIF camera with its own unicast WS-Discovery responder."""
    cam = VirtualCamera(
        CameraConfig(
            "discoverable",
            color_for(5),
            onvif=True,
            username="admin",
            password="pw-123",
            serial="SER-9",
            wsdiscovery_port=0,
            scope_mix="t_only",
        )
    )
    await cam.start()
    yield cam
    await cam.stop()


async def test_discovered_camera_reads_over_onvif(discoverable_camera: VirtualCamera) -> None:
    """Discovery -> ONVIF: the XAddr found leads to the same device UUID."""
    cam = discoverable_camera
    (device,) = await scan(
        unicast_hosts=[f"127.0.0.1:{cam.wsdiscovery_port}"], timeout=1.0, policy=POLICY
    )
    assert device.xaddrs == (cam.onvif_url,)
    assert device.name == "discoverable"
    onvif = await read_device(device.host, device.port, "admin", "pw-123", policy=POLICY)
    assert onvif.device_uuid == device.device_uuid
    assert onvif.identity == "serial:SER-9"


def test_responder_refuses_real_networks() -> None:
    """The emulator binds loopback only (outside a test network namespace)."""
    with pytest.raises(ValueError, match="loopback only"):
        WsDiscoveryResponder([], host="0.0.0.0")._socket()  # refused
    with pytest.raises(ValueError, match="loopback only"):
        WsDiscoveryResponder([], multicast_interface="127.0.0.1")._socket()


@pytest.fixture(autouse=True)
def _no_stray_tracemalloc() -> Iterator[None]:
    """Leave tracemalloc as found even when a test fails half-way."""
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()


@pytest.mark.usefixtures("socket_enabled")
async def test_farm_cameras_are_discovered_with_distinct_identities() -> None:
    """A CameraFarm with ONVIF and responders: each camera found once, each its own MAC."""
    farm = CameraFarm(3, base_name="wsd", onvif=True, wsdiscovery_port=0, http_snapshot=False)
    async with farm:
        found = await scan(unicast_hosts=farm.wsdiscovery_targets, timeout=1.0, policy=POLICY)
        assert sorted(d.name or "" for d in found) == ["wsd-00", "wsd-01", "wsd-02"]
        devices = [await read_device(d.host, d.port, None, None, policy=POLICY) for d in found]
    assert len({device.identity for device in devices}) == 3
    assert all(device.mac and device.mac.startswith("02:4c:43:") for device in devices)
    assert all(not device.snapshot_supported for device in devices)


@pytest.mark.usefixtures("socket_enabled")
def test_multicast_socket_is_pinned_to_its_interface_with_ttl_one() -> None:
    """The multicast socket's options, checked without sending anything."""
    sock = _multicast_socket(ipaddress.IPv4Address("127.0.0.1"))
    try:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4) == bytes(
            [127, 0, 0, 1]
        )
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


@pytest.mark.usefixtures("socket_enabled")
async def test_two_cameras_sharing_a_firmware_uuid_are_both_found() -> None:
    """Cheap cameras ship with one UUID: two addresses answering with it are two devices.

    Before, whichever reply came first was kept and the other dropped, so
    one of the two was missing from every scan (a different one each time).
    """
    pytest_socket.socket_allow_hosts(["127.0.0.11", "127.0.0.12"])
    shared = "11111111-2222-4333-8444-555555555555"
    a = WsDiscoveryResponder(
        [Announcement.make("cam-a", "127.0.0.11", 8080, device_uuid=shared)], host="127.0.0.11"
    )
    b = WsDiscoveryResponder(
        [Announcement.make("cam-b", "127.0.0.12", 8080, device_uuid=shared)], host="127.0.0.12"
    )
    async with responders(a, b) as running:
        found = await scan(unicast_hosts=targets(running), timeout=1.0, policy=NetPolicy())
    assert [(d.name, d.host) for d in found] == [("cam-a", "127.0.0.11"), ("cam-b", "127.0.0.12")]


def test_a_dual_stack_camera_is_listed_once_at_its_ipv4_address() -> None:
    """One endpoint heard over IPv4 and IPv6 is one camera; two IPv4 addresses are two."""
    v4 = DiscoveredDevice(
        endpoint="urn:uuid:a",
        xaddrs=(),
        scopes=(),
        types=(),
        host="192.168.1.20",
        port=80,
        name="Porch",
        hardware=None,
    )
    v6 = replace(v4, host="fd00::20")
    twin = replace(v4, host="192.168.1.21")
    alone = replace(v4, endpoint="urn:uuid:b", host="fd00::30")
    assert devices_found([v6, alone, twin, v4]) == [v4, twin, alone]


@pytest.mark.parametrize(
    "xaddr",
    [
        "http://127.0.0.1:8123/onvif/device_service",
        "http://127.0.0.5:11984/onvif/device_service",
        "http://[::1]:8123/onvif/device_service",
        "http://[::ffff:127.0.0.1]:8123/onvif/device_service",
    ],
)
def test_a_reply_from_the_lan_cannot_name_this_machines_loopback(xaddr: str) -> None:
    """A LAN device's reply naming a loopback XAddr gives no camera there.

    Any device on the LAN can send a ProbeMatch; one naming 127.0.0.1 aimed
    LocalCam (and, following a camera's UUID, its credentials) at this
    machine's own services. Only a reply from loopback may name loopback.
    """
    problems: list[str] = []
    assert parse_probe_matches(reply(good(xaddr=xaddr)), SOURCE, problems=problems) == []
    assert problems == ["xaddr on loopback, in a reply from the LAN"]
    # The same reply with a LAN XAddr beside it: that one is the camera.
    lan = f"http://{SOURCE}:8000/onvif/device_service"
    (device,) = parse_probe_matches(reply(good(xaddr=f"{xaddr} {lan}")), SOURCE)
    assert (device.host, device.port) == (SOURCE, 8000)
    # A camera on this machine (the demo's, the tests') is still found.
    (device,) = parse_probe_matches(reply(good(xaddr=xaddr)), "127.0.0.1")
    assert device.host in ("127.0.0.1", "127.0.0.5", "::1", "::ffff:127.0.0.1")
