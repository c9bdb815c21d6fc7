"""Cast URLs open nothing from outside the LAN: not through a reverse proxy, not through Nabu Casa.

Home Assistant's cast entity shows the URL it plays (token included) as the
display's media_content_id; the view must not take it from a public address.
"""

from http import HTTPStatus
from ipaddress import ip_address
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
import ifaddr
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
import yarl

from custom_components.localcam import cast_views
from custom_components.localcam.cast_views import async_setup_cast
from custom_components.localcam.const import CONF_ALLOWED_NETWORKS, DOMAIN
from custom_components.localcam.services import async_setup_services
from virtualcam import VirtualCamera

from . import test_cast
from .test_cast import (
    RECEIVER,
    FakeCastDevice,
    _cast,
    _get,
    _last_url,
)

# The real cast integration with a fake Nest Hub, as test_cast uses it (its
# autouse fixtures too: streams stopped after each test, fast keep-alive).
cast_mocks = test_cast.cast_mocks
receiver = test_cast.receiver
http_port = test_cast.http_port
porch = test_cast.porch
receiver_session = test_cast.receiver_session
_stop_streams = test_cast._stop_streams
_fast_lifecycle = test_cast._fast_lifecycle

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


@pytest.fixture
async def localcam(hass: HomeAssistant) -> None:
    """LocalCam behind a reverse proxy on this host (nginx, cloudflared add-on).

    Home Assistant requires ``use_x_forwarded_for`` with the proxy trusted
    for that; a request from the internet then has its real address as
    ``request.remote``. Set up before LocalCam (which depends on http).
    """
    assert await async_setup_component(
        hass, "http", {"http": {"use_x_forwarded_for": True, "trusted_proxies": ["127.0.0.1"]}}
    )
    assert await async_setup_component(hass, "api", {})  # the states API, for the test
    assert await async_setup_component(hass, DOMAIN, {})
    async_setup_services(hass)
    async_setup_cast(hass)


async def test_a_cast_url_opens_nothing_from_outside_the_lan(
    hass: HomeAssistant,
    porch: str,
    receiver: FakeCastDevice,
    http_port: int,
    receiver_session: aiohttp.ClientSession,
    hass_client: ClientSessionGenerator,
    hass_admin_user: Any,
) -> None:
    """The cast URL is published in the display's state; from the internet it must 404.

    HA's cast entity shows the URL it plays, token included, as the
    display's ``media_content_id`` to everyone who may read the display (and
    the recorder stores it). The cast view needs no login and took the token
    from any address: through a reverse proxy or Nabu Casa, the camera
    could be watched from anywhere while the cast ran (for a cast "until
    stopped", for as long as it is renewed), by users who may not even read
    the camera.
    """
    await _cast(hass, porch, mode="snapshot", refresh=3600)
    # Someone who may read the display, but not the camera.
    hass_admin_user.groups = []
    hass_admin_user.mock_policy({"entities": {"entity_ids": {RECEIVER: True}}})
    client = await hass_client()
    assert (await client.get(f"/api/localcam/snapshot/{porch}")).status == HTTPStatus.UNAUTHORIZED
    state = await (await client.get(f"/api/states/{RECEIVER}")).json()
    url = yarl.URL(state["attributes"]["media_content_id"])
    assert "/api/localcam/cast/" in url.path
    # The display on the LAN (here: 127.0.0.1) gets its picture.
    assert (await _get(receiver_session, url))[0] == HTTPStatus.OK
    # The same URL from the internet, through the proxy: nothing.
    for remote in ("203.0.113.7", "2001:db8::7"):
        async with receiver_session.get(url, headers={"X-Forwarded-For": remote}) as resp:
            assert resp.status == HTTPStatus.NOT_FOUND, remote
            assert await resp.read() == b""
    # Through Nabu Casa's remote UI (which reaches HA from a local socket).
    with patch.object(cast_views, "is_cloud_connection", return_value=True):
        assert (await _get(receiver_session, url))[0] == HTTPStatus.NOT_FOUND
    # The display itself keeps its picture.
    assert (await _get(receiver_session, url))[0] == HTTPStatus.OK
    await hass.services.async_call(DOMAIN, "stop_cast", {"media_player": RECEIVER}, blocking=True)


# Home Assistant's own interface, as the OS reports it (read again while HA
# runs: prefixes change): an IPv4 LAN address and the LAN's global IPv6
# prefix (an ISP-delegated /64; most home LANs have no ULA at all).
_SYSTEM = [
    ifaddr.Adapter(
        "eth0",
        "eth0",
        [ifaddr.IP("192.168.1.5", 24, "eth0"), ifaddr.IP(("2001:db8:1:2::5", 0, 0), 64, "eth0")],
        index=0,
    )
]


async def _status(session: aiohttp.ClientSession, url: str, remote: str) -> int:
    async with session.get(url, headers={"X-Forwarded-For": remote}) as resp:
        return resp.status


async def test_a_display_with_a_global_ipv6_address_on_ha_s_lan_gets_its_cast(
    hass: HomeAssistant,
    porch: str,
    receiver: FakeCastDevice,
    http_port: int,
    receiver_session: aiohttp.ClientSession,
) -> None:
    """A display on HA's own LAN, connecting over IPv6 from its global address, is a display.

    The cast view now answers only "LAN" addresses, judged by address class
    (RFC 1918, ULA, link-local). On an IPv6 LAN the display's address is a
    global one in the LAN's delegated prefix: with an https internal URL (a
    name, which the display resolves with public DNS to HA's AAAA), the
    display connects from 2001:db8:1:2::20 straight to HA on the same link,
    and got 404 for every request of a cast that worked before: the display
    showed nothing. An address on a network HA itself is on came through no
    router from the internet. A global address elsewhere still gets nothing.
    """
    await _cast(hass, porch, mode="snapshot", refresh=3600)
    url = _last_url(receiver)
    with patch("ifaddr.get_adapters", return_value=_SYSTEM):
        assert await _status(receiver_session, url, "2001:db8:1:2::20") == HTTPStatus.OK
        # The same from the internet (another prefix, another IPv4 network).
        assert await _status(receiver_session, url, "2001:db8:9::20") == HTTPStatus.NOT_FOUND
        assert await _status(receiver_session, url, "203.0.113.7") == HTTPStatus.NOT_FOUND
    await hass.services.async_call(DOMAIN, "stop_cast", {"media_player": RECEIVER}, blocking=True)


async def test_a_display_on_a_network_allowed_for_the_camera_gets_its_cast(
    hass: HomeAssistant,
    localcam: None,
    camera: VirtualCamera,
    receiver: FakeCastDevice,
    http_port: int,
    receiver_session: aiohttp.ClientSession,
) -> None:
    """A network the user allowed for the camera's entry is LAN to its cast too.

    A LAN numbered outside RFC 1918 (CGNAT space, a routed camera VLAN or
    a site behind a VPN) is what "allowed networks" is for; the cameras
    and displays there were cast to until the view judged displays by the
    RFC 1918 ranges alone. Another address outside gets nothing.
    """
    entity_id = await test_cast._camera_entity(
        hass, camera, options={CONF_ALLOWED_NETWORKS: "100.64.0.0/24"}
    )
    await _cast(hass, entity_id, mode="snapshot", refresh=3600)
    url = _last_url(receiver)
    assert await _status(receiver_session, url, "100.64.0.20") == HTTPStatus.OK
    assert await _status(receiver_session, url, "100.65.0.20") == HTTPStatus.NOT_FOUND
    await hass.services.async_call(DOMAIN, "stop_cast", {"media_player": RECEIVER}, blocking=True)


_LOADED = "homeassistant.components.network.async_get_loaded_adapters"


def _adapter(*configured: tuple[str, int]) -> dict[str, Any]:
    """One adapter as HA's network integration lists it (read once, at HA's start)."""
    return {
        "auto": True,
        "default": True,
        "enabled": True,
        "index": 2,
        "name": "eth0",
        "ipv4": [{"address": a, "network_prefix": p} for a, p in configured if ":" not in a],
        "ipv6": [
            {"address": a, "flowinfo": 0, "scope_id": 0, "network_prefix": p}
            for a, p in configured
            if ":" in a
        ],
    }


def _system(*configured: tuple[str, int]) -> list[ifaddr.Adapter]:
    """The host's interfaces as the OS reports them now (what ifaddr reads)."""
    ips = [
        ifaddr.IP((a, 0, 0) if ":" in a else a, p, "eth0")  # type: ignore[arg-type]
        for a, p in configured
    ]
    return [ifaddr.Adapter("eth0", "eth0", ips, index=2)]


async def _status(session: aiohttp.ClientSession, url: str, remote: str) -> int:
    async with session.get(url, headers={"X-Forwarded-For": remote}) as resp:
        return resp.status


@pytest.fixture(autouse=True)
def _system_as_loaded() -> Any:
    """Unless a test says otherwise, the host's interfaces are those HA loaded at start."""
    with patch("ifaddr.get_adapters", return_value=_system(("192.168.1.5", 24))):
        yield


async def test_a_display_on_ha_s_lan_after_a_prefix_change_gets_its_cast(
    hass: HomeAssistant,
    porch: str,
    receiver: FakeCastDevice,
    http_port: int,
    receiver_session: aiohttp.ClientSession,
) -> None:
    """HA's adapters are read once, when HA starts: the LAN's prefix of then is no LAN of now.

    Many ISPs hand a home a new IPv6 prefix on each reconnect (daily on
    some); and at boot HA's network integration may read the interface
    before SLAAC gave it its global address. The cast view judged displays
    by that snapshot: the display on HA's link (new prefix) got 404 for every
    request until HA restarted, and the prefix HA had before (now another
    customer's) stayed "LAN".
    """
    await _cast(hass, porch, mode="snapshot", refresh=3600)
    url = _last_url(receiver)
    at_start = [_adapter(("192.168.1.5", 24), ("2001:db8:1:2::5", 64))]
    now = _system(("192.168.1.5", 24), ("2001:db8:7:8::5", 64))
    with patch(_LOADED, return_value=at_start), patch("ifaddr.get_adapters", return_value=now):
        assert await _status(receiver_session, url, "2001:db8:7:8::20") == HTTPStatus.OK
        assert await _status(receiver_session, url, "2001:db8:1:2::20") == HTTPStatus.NOT_FOUND
    await hass.services.async_call(DOMAIN, "stop_cast", {"media_player": RECEIVER}, blocking=True)


def _camera(options: dict[str, Any] | None = None) -> Any:
    entry = SimpleNamespace(options=options or {})
    return SimpleNamespace(coordinator=SimpleNamespace(config_entry=entry))


async def _judge(hass: HomeAssistant, remote: str, camera: Any = None) -> bool:
    """The view's LAN judgement of ``remote`` for ``camera``'s cast."""
    return await cast_views._async_from_lan(hass, ip_address(remote), camera or _camera())


@pytest.mark.parametrize(
    ("configured", "remote"),
    [
        # A 6to4 tunnel as the Linux IPv6 HOWTO sets it up (tun6to4, /16):
        # 2002::/16 is all of IPv4 (here 203.0.113.7), as NetPolicy knows.
        (("2002:c000:204::1", 16), "2002:cb00:7107::1"),
        # A NAT64 prefix on an interface (a host that is its own NAT64 gateway).
        (("64:ff9b::1", 96), "64:ff9b::cb00:7107"),
        # Prefix 0 (an interface reported without a netmask): everything.
        (("2001:db8::5", 0), "2001:db8:9::20"),
        (("198.51.100.5", 0), "203.0.113.7"),
    ],
)
async def test_no_interface_network_makes_the_internet_lan(
    hass: HomeAssistant, configured: tuple[str, int], remote: str
) -> None:
    """An interface network as broad as NetPolicy refuses for allowed networks is no LAN either."""
    with (
        patch(_LOADED, return_value=[_adapter(configured)]),
        patch("ifaddr.get_adapters", return_value=_system(configured)),
    ):
        assert not await _judge(hass, remote)


async def test_a_mapped_remote_on_ha_s_ipv4_network_and_invalid_networks(
    hass: HomeAssistant,
) -> None:
    """::ffff:a.b.c.d is judged as a.b.c.d; stored networks the form would refuse open nothing."""
    configured = ("198.51.100.5", 24)  # a LAN numbered in public space
    with (
        patch(_LOADED, return_value=[_adapter(configured)]),
        patch("ifaddr.get_adapters", return_value=_system(configured)),
    ):
        assert await _judge(hass, "::ffff:198.51.100.20")
        assert not await _judge(hass, "::ffff:198.51.101.20")
        # Allowed networks stored by hand (too broad): refused, not a fail-open.
        broad = _camera({CONF_ALLOWED_NETWORKS: "128.0.0.0/1"})  # refused by the form: too broad
        assert not await _judge(hass, "203.0.113.7", broad)
        assert await _judge(hass, "100.64.0.20", _camera({CONF_ALLOWED_NETWORKS: "100.64.0.0/24"}))
