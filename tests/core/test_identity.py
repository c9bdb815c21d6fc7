"""core.identity: MAC/serial/UUID identities and the neighbour-table lookup."""

import asyncio
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from custom_components.localcam.core.errors import CameraTimeoutError, CannotConnectError
from custom_components.localcam.core.identity import (
    Identity,
    IdentityMismatchError,
    neighbour_mac,
    normalize_mac,
    touch,
)

ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.1.20     0x1         0x2         AA:BB:CC:00:11:22     *        eth0
192.168.1.21     0x1         0x0         00:00:00:00:00:00     *        eth0
192.168.1.22     0x1         0x2         00:00:00:00:00:00     *        eth0
192.168.1.23     0x1         0xZZ        aa:bb:cc:00:11:23     *        eth0
192.168.1.24     0x1         0x0         aa:bb:cc:00:11:24     *        eth0
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "arp"
    path.write_text(ARP)
    return path


@pytest.mark.parametrize(
    ("address", "mac"),
    [
        (IPv4Address("192.168.1.20"), "aa:bb:cc:00:11:22"),
        (IPv4Address("192.168.1.21"), None),  # incomplete entry
        (IPv4Address("192.168.1.22"), None),  # zero MAC
        (IPv4Address("192.168.1.23"), None),  # junk flags
        # Not resolved now (incomplete or failed), yet still showing the MAC of
        # whoever answered there before: no evidence of who answers now.
        (IPv4Address("192.168.1.24"), None),
        (IPv4Address("192.168.1.99"), None),  # not on the link
        (IPv4Address("127.0.0.1"), None),  # loopback has no neighbour
        (IPv6Address("fd00::1"), None),  # IPv6 neighbours are not read
    ],
)
def test_neighbour_mac(table: Path, address: IPv4Address | IPv6Address, mac: str | None) -> None:
    """Only complete, non-zero entries of the same link count."""
    assert neighbour_mac(address, table) == mac


def test_neighbour_mac_without_table(tmp_path: Path) -> None:
    """A machine without /proc/net/arp yields no MAC, not an error."""
    assert neighbour_mac(IPv4Address("192.168.1.20"), tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("raw", "mac"),
    [
        ("AA-BB-CC-00-11-22", "aa:bb:cc:00:11:22"),
        ("aabbcc001122", "aa:bb:cc:00:11:22"),
        ("00:00:00:00:00:00", None),
        ("aa:bb", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_mac(raw: str | None, mac: str | None) -> None:
    """Every spelling of a MAC becomes one form; junk becomes None."""
    assert normalize_mac(raw) == mac


def test_key_prefers_mac_then_serial_then_uuid() -> None:
    """The unique id comes from the strongest identifier known."""
    assert Identity(mac="aa:bb:cc:00:11:22", serial="S1").key == "aa:bb:cc:00:11:22"
    assert Identity(serial="S1", uuid="u").key == "serial_S1"
    assert Identity(uuid="u").key == "uuid_u"
    assert Identity().key is None
    assert not Identity().known


def test_check_compares_only_known_fields() -> None:
    """A field unknown on either side is no evidence; a differing one is."""
    configured = Identity(mac="aa:bb:cc:00:11:22", serial="S1")
    configured.check(Identity(serial="S1"), "cam")
    configured.check(Identity(), "cam")
    configured.check(Identity(mac="AA:BB:CC:00:11:22"), "cam")
    with pytest.raises(IdentityMismatchError) as err:
        configured.check(Identity(mac="aa:bb:cc:00:11:99"), "192.168.1.20")
    assert err.value.field == "mac"
    assert err.value.placeholders == {"host": "192.168.1.20"}
    assert "aa:bb" not in str(err.value)
    with pytest.raises(IdentityMismatchError):
        configured.check(Identity(serial="S2"), "cam")


@pytest.mark.parametrize("field", ["mac", "serial", "uuid"])
def test_each_field_alone_tells_devices_apart(field: str) -> None:
    """A difference in any one field known on both sides is a different device."""
    values = {"mac": ("aa:bb:cc:00:11:22", "aa:bb:cc:00:11:99"), "serial": ("S1", "S2")}
    mine, theirs = values.get(field, ("uuid-1", "uuid-2"))
    configured = Identity(**{field: mine})
    observed = Identity(**{field: theirs})
    assert configured.differs(observed)
    with pytest.raises(IdentityMismatchError) as err:
        configured.check(observed, "cam")
    assert err.value.field == field
    assert not configured.differs(Identity(**{field: mine.upper()}))


def test_round_trip_and_merge() -> None:
    """Entry data round-trips; merging fills only unknown fields."""
    identity = Identity(mac="aa:bb:cc:00:11:22", serial="S1")
    assert Identity.from_dict(identity.as_dict()) == identity
    assert Identity.from_dict("junk") == Identity()
    assert Identity.from_dict({"mac": "zz"}) == Identity()
    assert Identity(serial="S1").merged(Identity(mac="aa:bb:cc:00:11:22", serial="S9")) == identity


def test_confirms_needs_positive_evidence() -> None:
    """Moving an entry needs a matching field, not just the absence of a mismatch."""
    configured = Identity(mac="aa:bb:cc:00:11:22", serial="S1")
    assert configured.confirms(Identity(serial="S1"))
    assert not configured.confirms(Identity())
    assert not configured.confirms(Identity(uuid="u"))
    assert not configured.confirms(Identity(mac="aa:bb:cc:00:11:22", serial="S2"))


def test_proves_move_takes_the_link_mac_or_every_field_with_the_serial() -> None:
    """What a device says of itself moves an entry only when it could not have copied it."""
    mac = "aa:bb:cc:00:11:22"
    full = Identity(mac=mac, serial="S1", uuid="u1")
    # The link's MAC decides where the camera's MAC is known, whatever is claimed.
    assert full.proves_move(Identity(), mac.upper())
    assert not full.proves_move(full, "aa:bb:cc:00:11:99")
    # No link MAC: every stored field, each equal; the broadcast ones alone are not enough.
    assert full.proves_move(Identity(mac=mac, serial="s1", uuid="U1"), None)
    assert not full.proves_move(Identity(uuid="u1"), None)
    assert not full.proves_move(Identity(mac=mac, uuid="u1"), None)
    assert not full.proves_move(Identity(mac=mac, serial="S1"), None)
    # Without a stored serial nothing but the link can prove it.
    assert not Identity(mac=mac, uuid="u1").proves_move(Identity(mac=mac, uuid="u1"), None)
    # A camera without a MAC: its serial (and UUID) it must repeat, link or not.
    no_mac = Identity(serial="S1", uuid="u1")
    assert no_mac.proves_move(Identity(serial="S1", uuid="u1"), mac)
    assert not no_mac.proves_move(Identity(serial="S1"), mac)


def test_differs_only_on_a_field_known_on_both_sides() -> None:
    """differs is check's question without the raise: a conflict, not a lack of evidence."""
    configured = Identity(mac="aa:bb:cc:00:11:22", serial="S1")
    assert not configured.differs(Identity())
    assert not configured.differs(Identity(uuid="u"))
    assert not configured.differs(Identity(serial="s1"))
    assert configured.differs(Identity(serial="S2", uuid="u"))
    assert configured.differs(Identity(mac="aa:bb:cc:00:11:99"))


def test_as_seen_on_keeps_a_mac_only_where_the_link_shows_it() -> None:
    """A reported MAC the link contradicts is dropped; serial and UUID then identify."""
    reported = Identity(mac="02:00:00:00:00:01", serial="SN1", uuid="u-1")
    # Routed, loopback or IPv6: the link shows nothing, the report stands.
    assert reported.as_seen_on(None) is reported
    # The interface the camera uses, however the kernel spells it.
    assert reported.as_seen_on("02:00:00:00:00:01") is reported
    assert reported.as_seen_on("02:00:00:00:00:01".upper()) is reported
    # A repeater's MAC, or the camera's other interface: not what is checked.
    seen = reported.as_seen_on("02:00:00:00:00:99")
    assert seen == Identity(serial="SN1", uuid="u-1")
    assert seen.key == "serial_SN1"
    # Nothing else to go by: unidentified (keyed by its URL, as a routed camera without one).
    assert not Identity(mac="02:00:00:00:00:01").as_seen_on("02:00:00:00:00:99").known
    # A device that reports no MAC keeps what it has.
    assert Identity(serial="SN1").as_seen_on("02:00:00:00:00:99") == Identity(serial="SN1")


async def test_touch_connects_and_sends_nothing(socket_enabled: None) -> None:
    """touch opens a connection and closes it without a byte; refusals are core errors."""
    heard: list[bytes] = []

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(listen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await touch(IPv4Address("127.0.0.1"), port, 5.0)
        for _ in range(50):  # bounded: the close reaches the server
            if heard:
                break
            await asyncio.sleep(0.01)
        assert heard == [b""]
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(CannotConnectError):
        await touch(IPv4Address("127.0.0.1"), port, 5.0)  # nobody listens any more
    with pytest.raises(CameraTimeoutError):
        await touch(IPv4Address("127.0.0.1"), port, 0)  # no time at all
