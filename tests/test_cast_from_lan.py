"""Cast URLs open nothing from outside the LAN: not through a reverse proxy, not through Nabu Casa.

Home Assistant's cast entity shows the URL it plays (token included) as the
display's media_content_id; the view must not take it from a public address.
"""

from http import HTTPStatus
from typing import Any
from unittest.mock import patch

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
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


# Home Assistant's own interface: an IPv4 LAN address and the LAN's global
# IPv6 prefix (an ISP-delegated /64; most home LANs have no ULA at all).
_ADAPTERS = [
    {
        "auto": True,
        "default": True,
        "enabled": True,
        "index": 0,
        "ipv4": [{"address": "192.168.1.5", "network_prefix": 24}],
        "ipv6": [
            {"address": "2001:db8:1:2::5", "flowinfo": 0, "scope_id": 0, "network_prefix": 64}
        ],
        "name": "eth0",
    }
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
    with patch(
        "homeassistant.components.network.async_get_loaded_adapters", return_value=_ADAPTERS
    ):
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
