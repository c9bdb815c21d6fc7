"""Which device is this? Identities of cameras and the checks that pin them.

An address is not an identity: DHCP hands a released lease to the next device
that asks, so the camera answering at 192.168.1.20 today may not be the one
that answered yesterday. An entry stores what identifies its camera (MAC,
ONVIF serial, device UUID, whichever exist) and this module is the layer that
compares what answers now with what was configured. A mismatch is an error,
so no frame from the other device is ever cached or served under this camera.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
import re
from typing import Any, Final, Self

from .errors import CameraTimeoutError, CannotConnectError, LocalCamError

ARP_TABLE: Final = Path("/proc/net/arp")
_MAC_RE: Final = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# /proc/net/arp flags: ATF_COM (0x2) marks a completed (resolved) entry.
_ATF_COM: Final = 0x2


class IdentityMismatchError(LocalCamError):
    """A different device answers at the camera's address."""

    translation_key = "identity_mismatch"

    def __init__(self, host: str, field: str) -> None:
        """Name the address and what differed (never the identity values)."""
        super().__init__(f"a different device answers at {host} ({field} differs)", host=host)
        self.host = host
        self.field = field


def normalize_mac(mac: str | None) -> str | None:
    """Lower-case colon form, or None for empty/zero/invalid MACs."""
    if not mac:
        return None
    digits = re.sub(r"[^0-9a-fA-F]", "", mac).lower()
    if len(digits) != 12 or digits == "0" * 12:
        return None
    value = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    return value if _MAC_RE.match(value) else None


@dataclass(frozen=True, slots=True)
class Identity:
    """What identifies one camera; any field may be unknown."""

    mac: str | None = None
    serial: str | None = None
    uuid: str | None = None

    @property
    def known(self) -> bool:
        """Whether anything identifies the device at all."""
        return any((self.mac, self.serial, self.uuid))

    @property
    def key(self) -> str | None:
        """The strongest identifier, as used for unique ids: MAC, serial, UUID."""
        if self.mac:
            return self.mac
        if self.serial:
            return f"serial_{self.serial}"
        if self.uuid:
            return f"uuid_{self.uuid}"
        return None

    def check(self, observed: Identity, host: str) -> None:
        """Raise IdentityMismatchError when a field known on both sides differs."""
        if (field := self._differing_field(observed)) is not None:
            raise IdentityMismatchError(host, field)

    def differs(self, observed: Identity) -> bool:
        """True when a field known on both sides differs (``check`` would raise)."""
        return self._differing_field(observed) is not None

    def _differing_field(self, observed: Identity) -> str | None:
        """The first field known on both sides whose values differ, if any."""
        for field in ("mac", "serial", "uuid"):
            mine, theirs = getattr(self, field), getattr(observed, field)
            if mine and theirs and mine.lower() != theirs.lower():
                return field
        return None

    def confirms(self, observed: Identity) -> bool:
        """True when a field known on both sides is equal and none differs."""
        common = [
            field
            for field in ("mac", "serial", "uuid")
            if getattr(self, field) and getattr(observed, field)
        ]
        return bool(common) and all(
            getattr(self, field).lower() == getattr(observed, field).lower() for field in common
        )

    def proves_move(self, claimed: Identity, link_mac: str | None) -> bool:
        """Whether the device at a new address is this camera, firmly enough to move to it.

        Stricter than ``confirms``, which is for a device already at the
        camera's address: moving an entry hands the new address its
        credentials and its place on the dashboard. The MAC and the UUID are
        in every WS-Discovery reply, so anyone on the LAN can claim them.

        - ``link_mac`` (what the kernel saw answer on the link) decides when
          this camera's MAC is known: equal moves, different never does.
        - Otherwise only the device's ``claimed`` identity remains. It must
          repeat every field stored here, each equal, and those must include
          the serial, which no broadcast carries.
        """
        if self.mac and link_mac:
            return self.mac.lower() == link_mac.lower()
        if not self.serial:
            return False
        for field in ("mac", "serial", "uuid"):
            mine, theirs = getattr(self, field), getattr(claimed, field)
            if mine and (not theirs or mine.lower() != theirs.lower()):
                return False
        return True

    def merged(self, other: Identity) -> Identity:
        """Fill unknown fields from ``other`` (after a check passed)."""
        return Identity(
            mac=self.mac or other.mac,
            serial=self.serial or other.serial,
            uuid=self.uuid or other.uuid,
        )

    def as_seen_on(self, link_mac: str | None) -> Identity:
        """This identity (an ONVIF device's own report) as LocalCam can check it on the link.

        On its link, a camera is checked by the MAC the kernel sees answer,
        after every fetch and health check (``CameraClient.check_link_identity``).
        That is the MAC the device reports only if nothing between rewrites
        it and the device reports the interface it uses. A Wi-Fi repeater
        that translates MACs, or a camera with Ethernet and Wi-Fi that
        reports the other interface's MAC (ONVIF's last enabled one), shows
        another MAC on the link: the same camera would then fail every
        check. Such a camera is checked as a routed one is: by asking it
        (serial, UUID) after each fetch; its reported MAC is not kept.
        """
        if self.mac and link_mac and self.mac.lower() != link_mac.lower():
            return Identity(serial=self.serial, uuid=self.uuid)
        return self

    def as_dict(self) -> dict[str, str]:
        """Known fields only, for config entry data."""
        return {
            k: v for k, v in (("mac", self.mac), ("serial", self.serial), ("uuid", self.uuid)) if v
        }

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Read what ``as_dict`` wrote (tolerating missing or junk data)."""
        if not isinstance(data, dict):
            return cls()
        return cls(
            mac=normalize_mac(data.get("mac")),
            serial=str(data["serial"]) if data.get("serial") else None,
            uuid=str(data["uuid"]) if data.get("uuid") else None,
        )


def neighbour_mac(address: IPv4Address | IPv6Address, table: Path = ARP_TABLE) -> str | None:
    """The MAC the kernel resolved for ``address`` (same link only), if any.

    A cheap read of /proc/net/arp, done after each connection to the camera:
    the entry is fresh because we just talked to that address. Loopback and
    routed cameras have no entry; IPv6 neighbours are not read (None).
    """
    if not isinstance(address, IPv4Address) or address.is_loopback:
        return None
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    wanted = str(address)
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == wanted:
            try:
                flags = int(parts[2], 16)
            except ValueError:
                return None
            return normalize_mac(parts[3]) if flags & _ATF_COM else None
    return None


async def touch(address: IPv4Address | IPv6Address, port: int, timeout: float) -> None:
    """Open a TCP connection to ``address`` and close it, sending nothing.

    Connecting makes the kernel resolve the address's MAC (read it with
    neighbour_mac after), so a device can be told from the camera before it
    is sent a single credential.
    """
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(str(address), port)
    except TimeoutError:
        raise CameraTimeoutError(f"no answer from {address} within {timeout:g} s") from None
    except OSError as err:
        raise CannotConnectError(f"{address}:{port} refused the connection") from err
    writer.close()
    # Already reset by the peer: it answered, which is all we asked.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
