"""Background WS-Discovery glue (discovery.py).

The scanner itself (core.wsdiscovery) is tested against real responders on
127.0.0.1 and in network namespaces; here the network edge, the scan, is
replaced so that no test multicasts on a real interface.
"""

from dataclasses import replace
from typing import Any
from unittest.mock import AsyncMock, patch

from homeassistant.config_entries import SOURCE_IGNORE, SOURCE_INTEGRATION_DISCOVERY, SOURCE_REAUTH
from homeassistant.const import EVENT_HOMEASSISTANT_STARTED
from homeassistant.core import CoreState, HomeAssistant
from homeassistant.helpers.discovery_flow import DiscoveryKey
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.localcam import config_flow, discovery
from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_STREAM_URL,
    DOMAIN,
)
from custom_components.localcam.core.identity import Identity
from custom_components.localcam.core.wsdiscovery import DiscoveredDevice
from custom_components.localcam.helpers import Observation, device_is_configured

DEVICE = DiscoveredDevice(
    endpoint="urn:uuid:1b6f0a3e-0000-4000-8000-000000000001",
    xaddrs=("http://192.168.1.50/onvif/device_service",),
    scopes=("onvif://www.onvif.org/name/Porch",),
    types=("dn:NetworkVideoTransmitter",),
    host="192.168.1.50",
    port=80,
    name="Porch",
    hardware="VC-1",
)


def _url_data(last_octet: int) -> dict[str, Any]:
    """Entry data of a camera added by its RTSP URL at 192.168.1.<last_octet>."""
    stream_url = f"rtsp://192.168.1.{last_octet}:554/stream"
    return {CONF_STREAM_URL: stream_url, CONF_CAMERA_ID: f"cam{last_octet}", CONF_IDENTITY: {}}


@pytest.fixture
def an_entry(hass: HomeAssistant) -> MockConfigEntry:
    """A LocalCam entry (a camera added by URL): background scans run only while there is one."""
    entry = MockConfigEntry(domain=DOMAIN, unique_id="02:00:00:00:00:01", data=_url_data(60))
    entry.add_to_hass(hass)
    return entry


def test_scans_are_off_in_tests() -> None:
    """The suite switches LocalCam's own scans off (conftest)."""
    assert discovery.scans_disabled()


async def test_no_multicast_interfaces_when_disabled(hass: HomeAssistant) -> None:
    """Disabled scans name no interface to multicast on."""
    assert await discovery.async_multicast_interfaces(hass) == []


async def test_multicast_only_on_enabled_adapters(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the adapters enabled in HA's network settings are used."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    adapters = [
        {"enabled": True, "ipv4": [{"address": "192.168.1.2", "network_prefix": 24}]},
        {"enabled": False, "ipv4": [{"address": "10.0.0.2", "network_prefix": 8}]},
    ]
    with patch.object(discovery.network, "async_get_adapters", AsyncMock(return_value=adapters)):
        assert await discovery.async_multicast_interfaces(hass) == ["192.168.1.2"]


async def test_background_scan_offers_cameras(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """After HA starts, each camera found becomes an integration-discovery flow."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[DEVICE])) as scan,
    ):
        # LocalCam set up after HA started (the first camera added from the
        # UI): the first scan comes at once, not 15 minutes later.
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert scan.await_count == 1
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == [SOURCE_INTEGRATION_DISCOVERY]
    assert flows[0]["step_id"] == "discovery_confirm"
    status = hass.data[discovery.DATA_DISCOVERY]  # what diagnostics show
    assert (status.scans_enabled, status.scans, status.last_found) == (True, 1, 1)
    assert status.last_scan is not None


async def test_background_scan_waits_for_start_then_runs_once(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """Set up while HA starts: the first scan comes when HA has started, not before."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    hass.set_state(CoreState.starting)
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[])) as scan,
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert scan.await_count == 0
        hass.set_state(CoreState.running)
        hass.bus.async_fire(EVENT_HOMEASSISTANT_STARTED)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert scan.await_count == 1


async def test_background_scans_only_while_there_is_an_entry(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """The last entry removed: the 15-minute scans stop multicasting; a new entry restarts them."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[])) as scan,
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert scan.await_count == 1
        assert await hass.config_entries.async_remove(an_entry.entry_id)
        for n in range(1, 4):
            async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL * n)
            await hass.async_block_till_done(wait_background_tasks=True)
        assert scan.await_count == 1
        another = MockConfigEntry(domain=DOMAIN, unique_id="02:00:00:00:00:02", data=_url_data(61))
        another.add_to_hass(hass)
        async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL * 4)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert scan.await_count == 2


async def test_background_offers_are_capped(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """Made-up UUIDs, new every scan, never queue more than MAX_WAITING_OFFERS offers."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")

    def devices(first: int) -> list[DiscoveredDevice]:
        return [
            replace(
                DEVICE,
                endpoint=f"urn:uuid:1b6f0a3e-0000-4000-8000-{n:012d}",
                host=f"10.0.{n // 250}.{n % 250 + 1}",
            )
            for n in range(first, first + 40)
        ]

    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(side_effect=[devices(0), devices(40)])),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        offers = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert len(offers) == discovery.MAX_WAITING_OFFERS
        async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert len(hass.config_entries.flow.async_progress_by_handler(DOMAIN)) == (
        discovery.MAX_WAITING_OFFERS
    )


async def _ignore_the_offer(hass: HomeAssistant, ws: Any) -> MockConfigEntry:
    """Ignore the one waiting offer the way the frontend does; return the ignored entry."""
    [offer] = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    await ws.send_json_auto_id(
        {"type": "config_entries/ignore_flow", "flow_id": offer["flow_id"], "title": "Porch"}
    )
    assert (await ws.receive_json())["success"]
    await hass.async_block_till_done()
    assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    [ignored] = [
        entry for entry in hass.config_entries.async_entries(DOMAIN) if entry.source == "ignore"
    ]
    return ignored


async def test_an_offer_comes_back_at_once_when_no_longer_ignored(
    hass: HomeAssistant,
    hass_ws_client: WebSocketGenerator,
    monkeypatch: pytest.MonkeyPatch,
    an_entry: MockConfigEntry,
) -> None:
    """Ignored by mistake, then no longer ignored: offered again now, without a new scan.

    It used to come back only at the next 15-minute scan.
    """
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    assert await async_setup_component(hass, "config", {})
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[DEVICE])) as scan,
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        ignored = await _ignore_the_offer(hass, await hass_ws_client(hass))
        [key] = ignored.discovery_keys[DOMAIN]
        assert key.key == discovery.offer_key(DEVICE) == ignored.unique_id
        assert await hass.config_entries.async_remove(ignored.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)
    [offer] = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert offer["step_id"] == "discovery_confirm"
    assert offer["context"]["unique_id"] == discovery.offer_key(DEVICE)
    assert scan.await_count == 1


async def test_a_camera_the_last_scan_did_not_hear_is_not_offered_again(
    hass: HomeAssistant,
    hass_ws_client: WebSocketGenerator,
    monkeypatch: pytest.MonkeyPatch,
    an_entry: MockConfigEntry,
) -> None:
    """Offered again only from the latest scan: a camera gone since is not brought back."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    assert await async_setup_component(hass, "config", {})
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(side_effect=[[DEVICE], []])) as scan,
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        ignored = await _ignore_the_offer(hass, await hass_ws_client(hass))
        async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert scan.await_count == 2
        assert await hass.config_entries.async_remove(ignored.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)


def _key(key: str) -> dict[str, tuple[DiscoveryKey, ...]]:
    """The discovery keys an entry an offer led to holds."""
    return {DOMAIN: (DiscoveryKey(domain=DOMAIN, key=key, version=1),)}


def _ignored(hass: HomeAssistant, device: DiscoveredDevice) -> MockConfigEntry:
    """An offer of ``device`` the user ignored."""
    key = discovery.offer_key(device)
    entry = MockConfigEntry(
        domain=DOMAIN, source=SOURCE_IGNORE, unique_id=key, data={}, discovery_keys=_key(key)
    )
    entry.add_to_hass(hass)
    return entry


def _numbered(n: int) -> DiscoveredDevice:
    """Camera n at 10.0.2.n, with its own UUID and no MAC."""
    return replace(
        DEVICE, endpoint=f"urn:uuid:1b6f0a3e-0000-4000-8000-{n:012d}", host=f"10.0.2.{n}"
    )


async def test_waiting_offers_leave_their_places_to_a_new_camera(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """20 offers wait (12 places free): a 21st camera is offered at the next scan.

    The cameras already offered, heard again, took the free places first (their
    offers could only abort), so a new camera waited until fewer than 16 did.
    """
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    first = [_numbered(n) for n in range(1, 21)]
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(side_effect=[first, [*first, _numbered(21)]])),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert len(hass.config_entries.flow.async_progress_by_handler(DOMAIN)) == 20
        async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL)
        await hass.async_block_till_done(wait_background_tasks=True)
    keys = {
        f["context"]["unique_id"]
        for f in hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    }
    assert keys == {discovery.offer_key(_numbered(n)) for n in range(1, 22)}


async def test_a_removed_camera_sharing_a_firmware_uuid_is_offered_again(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two configured cameras share a firmware-default UUID: removing one offers that one.

    Only the last of the two heard was kept, so removing the first offered the
    second, still configured, and the removed camera never came back.
    """
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    cam_a = replace(DEVICE, host="192.168.1.10", name="A")
    cam_b = replace(DEVICE, host="192.168.1.20", name="B")
    assert discovery.offer_key(cam_a) == discovery.offer_key(cam_b)
    entries = [
        MockConfigEntry(
            domain=DOMAIN,
            unique_id=mac,
            data={**_url_data(octet), CONF_IDENTITY: {"mac": mac}},
            discovery_keys=_key(discovery.offer_key(cam_a)) if octet == 10 else {},
        )
        for octet, mac in ((10, "02:00:00:00:00:0a"), (20, "02:00:00:00:00:0b"))
    ]
    for entry in entries:
        entry.add_to_hass(hass)
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[cam_a, cam_b])),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert await hass.config_entries.async_remove(entries[0].entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)
    [offer] = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert offer["context"]["title_placeholders"] == {"name": "A"}


async def test_an_offer_made_again_keeps_to_the_cap(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """MAX_WAITING_OFFERS offers wait: an ignored camera no longer ignored waits its turn."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    many = [_numbered(n) for n in range(1, 41)]
    ignored = _ignored(hass, many[-1])
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=many)),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        offers = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
        assert len(offers) == discovery.MAX_WAITING_OFFERS
        assert await hass.config_entries.async_remove(ignored.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)
    offers = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert len(offers) == discovery.MAX_WAITING_OFFERS


async def test_nothing_is_offered_again_from_a_scan_gone_stale(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, an_entry: MockConfigEntry
) -> None:
    """Scans stopped with the last camera: an offer no longer ignored waits for a new scan."""
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    ignored = _ignored(hass, DEVICE)
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[DEVICE])) as scan,
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert await hass.config_entries.async_remove(an_entry.entry_id)
        async_fire_time_changed(hass, dt_util.utcnow() + discovery.SCAN_INTERVAL)
        await hass.async_block_till_done(wait_background_tasks=True)
        assert scan.await_count == 1  # no camera: no scan
        assert await hass.config_entries.async_remove(ignored.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert not hass.config_entries.flow.async_progress_by_handler(DOMAIN)


async def _resolve_cams(host: str, port: int) -> list[str]:
    """A LAN's DNS: camN.lan is 192.168.1.N (nothing else is asked)."""
    return [f"192.168.1.{host.removeprefix('cam').removesuffix('.lan')}"]


@pytest.mark.parametrize("configured_by", ["address", "name"])
async def test_cameras_configured_where_they_answer_take_no_offer_place(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch, configured_by: str
) -> None:
    """32 configured cameras at low addresses, one new camera above them: it is offered.

    Their offers would only abort (configured right there, by address or by
    a host name that resolves there), yet they were counted against
    MAX_WAITING_OFFERS first, so the new camera never got a place, at any
    scan. An offer the user ignored takes none either.
    """
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    monkeypatch.setattr("custom_components.localcam.helpers.system_resolve", _resolve_cams)
    for octet in range(10, 42):
        data = _url_data(octet)
        if configured_by == "name":
            data[CONF_STREAM_URL] = f"rtsp://cam{octet}.lan:554/stream"
        MockConfigEntry(domain=DOMAIN, unique_id=f"cam{octet}", data=data).add_to_hass(hass)
    ignored = replace(
        DEVICE, endpoint="urn:uuid:1b6f0a3e-0000-4000-8000-000000000100", host="192.168.1.100"
    )
    MockConfigEntry(
        domain=DOMAIN, source="ignore", unique_id="uuid_1b6f0a3e-0000-4000-8000-000000000100"
    ).add_to_hass(hass)
    found = [
        replace(
            DEVICE, endpoint=f"urn:uuid:1b6f0a3e-0000-4000-8000-{o:012d}", host=f"192.168.1.{o}"
        )
        for o in [*range(10, 42), 200]
    ]
    monkeypatch.setattr(discovery, "MAX_WAITING_OFFERS", 2)
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[*found[:5], ignored, *found[5:]])),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    offers = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["unique_id"] for flow in offers] == [
        "uuid_1b6f0a3e-0000-4000-8000-000000000200"
    ]


async def test_background_scan_disabled(hass: HomeAssistant) -> None:
    """With scans disabled nothing is scheduled at start."""
    with patch.object(discovery, "scan", AsyncMock(return_value=[DEVICE])) as scan:
        discovery.async_start_background_discovery(hass)
        hass.bus.async_fire(EVENT_HOMEASSISTANT_STARTED)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert scan.await_count == 0
    status = hass.data[discovery.DATA_DISCOVERY]
    assert (status.scans_enabled, status.scans, status.last_scan) == (False, 0, None)


def test_discovery_data() -> None:
    """A flow gets host, port, UUID and names, nothing else."""
    assert discovery.discovery_data(DEVICE) == {
        "host": "192.168.1.50",
        "port": 80,
        "uuid": "1b6f0a3e-0000-4000-8000-000000000001",
        "mac": None,
        "name": "Porch",
        "hardware": "VC-1",
    }


def test_a_uuid_alone_at_another_address_is_not_a_configured_camera() -> None:
    """The scan list: a UUID twin elsewhere is listed; the camera at home, or known by MAC, not."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={
            **_url_data(20),
            CONF_IDENTITY: {
                "mac": "02:00:00:00:00:20",
                "uuid": "1b6f0a3e-0000-4000-8000-000000000001",
            },
        },
    )
    at_home = replace(DEVICE, host="192.168.1.20")
    twin = replace(DEVICE, host="192.168.1.21")
    assert device_is_configured(entry, at_home)
    assert not device_is_configured(entry, twin)  # cheap cameras share firmware UUIDs
    assert device_is_configured(entry, replace(twin, mac="02:00:00:00:00:20"))  # moved, by MAC
    assert not device_is_configured(entry, replace(at_home, mac="02:00:00:00:00:99"))  # another


MOVED_MAC = "02:00:00:00:00:0a"


async def test_a_camera_waiting_for_reauth_is_still_followed_to_its_new_address(
    hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reauth flow carries its entry's unique id; the scan took it for a waiting offer.

    The camera (pinned by its MAC) moved to .20 while a reauth for it waits
    for the user: the scan heard it there, but ``offered`` (every flow's
    unique id, reauth and reconfigure included) left it out, so nothing
    followed the move; before, its offer reached _async_discovered, whose
    confirming entry followed it (the link proving the MAC at .20).
    """
    monkeypatch.setenv(discovery.DISABLE_ENV, "0")
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=MOVED_MAC,
        data={**_url_data(10), CONF_IDENTITY: {"mac": MOVED_MAC}},
    )
    entry.add_to_hass(hass)
    moved = replace(DEVICE, host="192.168.1.20", mac=MOVED_MAC)
    assert discovery.offer_key(moved) == MOVED_MAC
    entry.async_start_reauth(hass)  # the camera answered 401 (the device at its old address)
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [f["context"]["source"] for f in flows] == [SOURCE_REAUTH]
    assert flows[0]["context"]["unique_id"] == MOVED_MAC
    seen = Observation(link_mac=MOVED_MAC, identity=Identity(mac=MOVED_MAC))
    with (
        patch.object(discovery, "async_multicast_interfaces", AsyncMock(return_value=[])),
        patch.object(discovery, "scan", AsyncMock(return_value=[moved])),
        patch.object(config_flow, "async_observe_identity", AsyncMock(return_value=seen)),
        patch.object(config_flow, "async_link_mac", AsyncMock(return_value=None)),
        patch.object(hass.config_entries, "async_schedule_reload"),
    ):
        discovery.async_start_background_discovery(hass)
        await hass.async_block_till_done(wait_background_tasks=True)
    assert entry.data[CONF_STREAM_URL] == "rtsp://192.168.1.20:554/stream"
