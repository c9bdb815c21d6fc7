"""Background WS-Discovery: find ONVIF cameras and offer them to the user.

Probes go out at start and every 15 minutes, while LocalCam has an entry that
is enabled, on the adapters enabled in Home Assistant's `network` integration
(multicast, TTL 1), bounded by the scanner in core.wsdiscovery (<= 3 s a scan,
a capped number of replies and of devices per source address). Each camera
found becomes an integration-discovery flow that the user confirms (at most
MAX_WAITING_OFFERS wait at once); a camera already configured is recognised by
its identity, or at its own address, in the config flow. When the entry an
offer led to is removed (the user stops ignoring it, or removes the camera),
the camera is offered again at once from what the last scan heard.

Tests, benchmarks and the demo set LOCALCAM_DISABLE_NETWORK_SCANS=1 so that
nothing is multicast on a real interface outside a test's own namespace.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
import os
from typing import Any, Final

from homeassistant.components import network
from homeassistant.config_entries import (
    SOURCE_IGNORE,
    SOURCE_INTEGRATION_DISCOVERY,
    ConfigEntry,
    signal_discovered_config_entry_removed,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import discovery_flow
from homeassistant.helpers.discovery_flow import DiscoveryKey
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.start import async_at_started
from homeassistant.util import dt as dt_util
from homeassistant.util.hass_dict import HassKey

from .const import CONF_IDENTITY, DOMAIN, LOGGER, OFFER_SOURCES
from .core.identity import Identity, normalize_mac
from .core.netpolicy import NetPolicy
from .core.wsdiscovery import WSD_PORT, DiscoveredDevice, scan
from .helpers import async_entries_addresses

SCAN_INTERVAL: Final = timedelta(minutes=15)
# A person waits on the add flow's scan: 1 s found 50 of 50 mixed cameras in
# bench/discovery; the unattended background scan takes the full 3 s.
FLOW_SCAN_TIME: Final = 1.0
BACKGROUND_SCAN_TIME: Final = 3.0
WSD_DISCOVERY_PORT = WSD_PORT  # the standard port; tests aim at their responder's
DISABLE_ENV: Final = "LOCALCAM_DISABLE_NETWORK_SCANS"
# Background offers (integration-discovery flows) waiting for the user, at most.
MAX_WAITING_OFFERS: Final = 32


@dataclass(slots=True)
class DiscoveryStatus:
    """What the background scans did (shown in diagnostics; no addresses)."""

    scans_enabled: bool
    scans: int = 0
    last_scan: datetime | None = None
    last_found: int | None = None


DATA_DISCOVERY: HassKey[DiscoveryStatus] = HassKey(f"{DOMAIN}_discovery")


def scans_disabled() -> bool:
    """Whether network scans are switched off for this process."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


async def async_multicast_interfaces(hass: HomeAssistant) -> list[str]:
    """IPv4 addresses of the adapters enabled in HA's network settings."""
    if scans_disabled():
        return []
    adapters = await network.async_get_adapters(hass)
    return [
        str(ip["address"]) for adapter in adapters if adapter["enabled"] for ip in adapter["ipv4"]
    ]


async def async_scan(
    hass: HomeAssistant,
    unicast_hosts: list[str],
    timeout: float = BACKGROUND_SCAN_TIME,
    policy: NetPolicy | None = None,
) -> list[DiscoveredDevice]:
    """One bounded scan: multicast on enabled adapters plus the given hosts.

    ``policy`` decides which replies (source and reported addresses) count:
    the LAN ranges, plus any networks the user typed into the scan form.
    """
    return await scan(
        multicast_interfaces=await async_multicast_interfaces(hass),
        unicast_hosts=unicast_hosts,
        port=WSD_DISCOVERY_PORT,
        timeout=timeout,
        policy=policy or NetPolicy(),
    )


def discovery_data(device: DiscoveredDevice) -> dict[str, Any]:
    """What an integration-discovery flow receives about one camera."""
    return {
        "host": device.host,
        "port": device.port,
        "uuid": device.device_uuid,
        "mac": device.mac,
        "name": device.name,
        "hardware": device.hardware,
    }


def offer_key(device: DiscoveredDevice) -> str:
    """The key an offer of ``device`` is made, ignored and rediscovered under.

    The flow's unique id (config_flow._async_discovered): the camera's
    identity, or its address when it announces none.
    """
    seen = Identity(mac=normalize_mac(device.mac), uuid=device.device_uuid)
    host = f"[{device.host}]" if ":" in device.host else device.host
    return seen.key or f"onvif_{host}:{device.port}"


def _offer_would_abort(
    entries: list[ConfigEntry[Any]], at: list[frozenset[str]], device: DiscoveredDevice
) -> bool:
    """Whether an offer of ``device`` could only abort (config_flow._async_discovered).

    Its camera is configured at the address it answers from (``at``: each
    entry's host, and the addresses a host name resolves to), and nothing it
    announces says it is another device; or the user ignored its offer (keyed
    as the flow keys it). A configured camera heard at another address is
    not left out: its flow follows it there.
    """
    seen = Identity(mac=normalize_mac(device.mac), uuid=device.device_uuid)
    offer_id = offer_key(device)
    for entry, addresses in zip(entries, at, strict=True):
        if entry.source == SOURCE_IGNORE:
            if entry.unique_id == offer_id:
                return True
        elif device.host in addresses and not Identity.from_dict(
            entry.data.get(CONF_IDENTITY)
        ).differs(seen):
            return True
    return False


@callback
def async_start_background_discovery(hass: HomeAssistant) -> None:
    """Scan once HA has started, then every 15 minutes."""
    status = hass.data[DATA_DISCOVERY] = DiscoveryStatus(scans_enabled=not scans_disabled())
    if not status.scans_enabled:
        LOGGER.debug("WS-Discovery scans are disabled (%s)", DISABLE_ENV)
        return

    # The cameras the last scan heard, by offer key: what an offer is made
    # from again when its entry goes (below). Bounded by the scanner's caps.
    # Cameras that share a firmware-default UUID (and announce no MAC) share a
    # key: each is kept, the flow tells which one is configured.
    heard: dict[str, list[DiscoveredDevice]] = {}

    def _waiting() -> int:
        """How many background offers wait for the user."""
        return sum(
            flow["context"].get("source") == SOURCE_INTEGRATION_DISCOVERY
            for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        )

    @callback
    def _offer(device: DiscoveredDevice) -> None:
        discovery_flow.async_create_flow(
            hass,
            DOMAIN,
            context={"source": SOURCE_INTEGRATION_DISCOVERY},
            data=discovery_data(device),
            # Home Assistant keeps this key on the entry the offer leads to
            # (added, ignored, or found already configured) and signals when
            # that entry is removed.
            discovery_key=DiscoveryKey(domain=DOMAIN, key=offer_key(device), version=1),
        )

    @callback
    def _entry_removed(entry: ConfigEntry[Any]) -> None:
        """Offer a camera again at once when the entry an offer led to is removed.

        The user stopped ignoring it, or removed the camera: as Home
        Assistant's zeroconf and dhcp do, the offer comes back from what the
        last scan heard, without waiting up to 15 minutes for the next one
        and without a packet sent. The flow checks it as any offer.
        """
        room = MAX_WAITING_OFFERS - _waiting()
        for key in entry.discovery_keys.get(DOMAIN, ()):
            if key.version == 1 and isinstance(key.key, str) and key.key in heard:
                for device in heard[key.key]:
                    if room <= 0:
                        return
                    LOGGER.debug("Offering again a camera whose entry was removed")
                    _offer(device)
                    room -= 1

    async_dispatcher_connect(hass, signal_discovered_config_entry_removed(DOMAIN), _entry_removed)

    async def _scan(*_: Any) -> None:
        if not hass.config_entries.async_entries(
            DOMAIN, include_ignore=False, include_disabled=False
        ):
            # Only while LocalCam has a camera: with the last entry removed or
            # disabled, nothing is multicast until one is added again (as after
            # a restart, which does not set LocalCam up without an entry).
            # What the last scan heard grows stale: nothing is offered from it.
            heard.clear()
            return
        devices = await async_scan(hass, [])
        status.scans += 1
        status.last_scan = dt_util.utcnow()
        status.last_found = len(devices)
        heard.clear()
        for device in devices:
            heard.setdefault(offer_key(device), []).append(device)
        # Offers waiting for the user are capped: each scan can hear up to
        # 1024 devices (256 sources x 4), and made-up UUIDs are new every time.
        # A camera already offered would only abort (already in progress): it
        # must not take a free place from a camera not offered yet.
        # Offers only: a reauth or reconfigure flow carries its entry's unique
        # id, and a camera heard at a new address must still reach the flow
        # that follows it there (config_flow._async_discovered).
        offered = {
            flow["context"].get("unique_id")
            for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
            if flow["context"].get("source") in OFFER_SOURCES
        }
        # Before the cap: cameras configured right where they answer, and
        # offers the user ignored, would only abort, and at low addresses
        # they would take every place from a new camera at a higher one.
        entries = hass.config_entries.async_entries(DOMAIN)
        # Names are looked up only when someone answered the scan.
        at = await async_entries_addresses(entries) if devices else []
        news = [
            device
            for device in devices
            if offer_key(device) not in offered and not _offer_would_abort(entries, at, device)
        ]
        for device in news[: max(0, MAX_WAITING_OFFERS - _waiting())]:
            _offer(device)

    @callback
    def _started(_hass: HomeAssistant) -> None:
        hass.async_create_background_task(_scan(), f"{DOMAIN} WS-Discovery")

    # At once when LocalCam is set up after HA started (the first camera added
    # from the UI), otherwise when HA has started.
    async_at_started(hass, _started)
    async_track_time_interval(hass, _scan, SCAN_INTERVAL, cancel_on_shutdown=True)
