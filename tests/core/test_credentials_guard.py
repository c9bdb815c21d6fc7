"""CameraClient.guard_credentials: a device that took a camera's address is sent no credentials.

A camera pinned by its MAC is checked by the MAC the kernel resolved for its
address. That check after each connection keeps the device's frames out; this
one, before credentials go out, keeps the camera's password from it. The
kernel's neighbour table is the edge (patched); the devices are virtual
cameras on 127.0.0.1 that count every request carrying an Authorization header.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from unittest.mock import patch

import aiohttp
import pytest
import pytest_socket
import yarl

from custom_components.localcam.core import snapshot
from custom_components.localcam.core.errors import CannotConnectError, LocalCamError
from custom_components.localcam.core.identity import Identity, IdentityMismatchError
from custom_components.localcam.core.models import CameraSource
from custom_components.localcam.core.netpolicy import NetPolicy
from custom_components.localcam.core.snapshot import CameraClient
from tests.conftest import CAM_PASSWORD, CAM_USER, camera_config
from virtualcam import VirtualCamera

CAMERA_MAC = "aa:bb:cc:00:11:22"
OTHER_MAC = "aa:bb:cc:00:11:99"


class Link:
    """The kernel's neighbour table for the camera's address (the edge)."""

    def __init__(self) -> None:
        self.mac: str | None = CAMERA_MAC
        self.reads = 0

    def __call__(self, _address: object, *_args: object) -> str | None:
        self.reads += 1
        return self.mac


@pytest.fixture
def link() -> Iterator[Link]:
    """Who the link shows at the camera's address: the camera, until a test swaps it."""
    table = Link()
    with patch.object(snapshot, "neighbour_mac", table):
        yield table


@asynccontextmanager
async def _client(cam: VirtualCamera, *, snapshot_url: bool) -> AsyncIterator[CameraClient]:
    """LocalCam's client for ``cam``, pinned by the camera's MAC, with its credentials."""
    source = CameraSource(
        camera_id=CAMERA_MAC,
        stream_url=cam.rtsp_url,
        snapshot_url=cam.snapshot_url if snapshot_url else None,
        username=CAM_USER,
        password=CAM_PASSWORD,
        identity=Identity(mac=CAMERA_MAC),
    )
    async with aiohttp.ClientSession() as session:
        client = CameraClient(session, NetPolicy(), source)
        try:
            yield client
        finally:
            await client.close()


async def test_a_health_check_sends_another_device_no_credentials(
    camera: VirtualCamera, link: Link
) -> None:
    """The minute's DESCRIBE: checked once connected, before its first byte.

    The camera's Digest challenge is remembered after the first check, so the
    next DESCRIBE would carry an answer at once: to whoever holds the address.
    """
    async with _client(camera, snapshot_url=False) as client:
        await client.check_health()
        sent = camera.stats.credentialed_requests
        assert sent >= 1
        link.mac = OTHER_MAC  # a reused DHCP lease: another device at the address
        asked = camera.stats.describe_requests
        with pytest.raises(IdentityMismatchError):
            await client.check_health()
        assert camera.stats.credentialed_requests == sent
        assert camera.stats.describe_requests == asked  # connected, then nothing sent
        link.mac = CAMERA_MAC
        await client.check_health()  # the camera back: checked as before
        assert camera.stats.credentialed_requests > sent


async def test_a_grab_through_the_relay_sends_another_device_nothing(
    rtsp_only_camera: VirtualCamera, link: Link
) -> None:
    """FFmpeg's session through the relay: nothing relayed, the grab fails with the reason."""
    async with _client(rtsp_only_camera, snapshot_url=False) as client:
        link.mac = OTHER_MAC
        with pytest.raises(IdentityMismatchError):
            await client.fetch_snapshot(timeout=5)
        assert rtsp_only_camera.stats.credentialed_requests == 0
        assert rtsp_only_camera.stats.describe_requests == 0
        assert client.guard.refusals == 1
        link.mac = CAMERA_MAC
        frame = await client.fetch_snapshot(timeout=5)
        assert frame.camera_id == CAMERA_MAC


async def test_a_snapshot_url_sends_another_device_no_credentials(
    camera: VirtualCamera, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP stills: a bare connection first, once the link's last look is old.

    A camera that took a still in the last LINK_TRUST seconds is trusted
    without another connection: each still's own check renews that look.
    """
    async with _client(camera, snapshot_url=True) as client:
        await client.fetch_snapshot()
        sent = camera.stats.credentialed_requests
        assert sent >= 1
        connections = camera.stats.http_connections
        await client.fetch_snapshot()  # within LINK_TRUST of the last still's check
        assert camera.stats.http_connections == connections  # no bare connection first
        monkeypatch.setattr(snapshot, "LINK_TRUST", 0.0)  # that look is now too old
        link.mac = OTHER_MAC
        sent, asked = camera.stats.credentialed_requests, camera.stats.snapshot_requests
        with pytest.raises(IdentityMismatchError):
            await client.fetch_snapshot()
        assert camera.stats.credentialed_requests == sent
        assert camera.stats.snapshot_requests == asked  # a bare connection, no request
        link.mac = CAMERA_MAC
        assert (await client.fetch_snapshot()).camera_id == CAMERA_MAC


async def test_a_camera_without_credentials_is_not_looked_at_first(
    link: Link, socket_enabled: None
) -> None:
    """Nothing secret to send: no extra look, no extra connection (each still's check stays)."""
    cam = VirtualCamera(camera_config("open", 2, username=None, password=None))
    await cam.start()
    try:
        source = CameraSource(
            camera_id=CAMERA_MAC,
            stream_url=cam.rtsp_url,
            snapshot_url=cam.snapshot_url,
            identity=Identity(mac=CAMERA_MAC),
        )
        async with aiohttp.ClientSession() as session:
            client = CameraClient(session, NetPolicy(), source)
            try:
                await client.check_health()
                assert link.reads == 1  # the check after the DESCRIBE only
                link.mac = OTHER_MAC
                with pytest.raises(IdentityMismatchError):
                    await client.fetch_snapshot()  # refused after, as before
            finally:
                await client.close()
    finally:
        await cam.stop()


async def test_a_snapshot_url_on_another_device_is_not_held_to_the_camera_s_mac(
    camera: VirtualCamera, socket_enabled: None
) -> None:
    """Stills from an NVR (or a go2rtc server) at another address: served, credentials sent.

    The camera's MAC pins the camera's own address. Held to the still URL's
    device, every still (and its request's credentials) was refused as a swap.
    The stream's address is still checked, before its credentials.
    """
    pytest_socket.socket_allow_hosts(["127.0.0.1", "127.0.0.5"])
    nvr = VirtualCamera(camera_config("nvr", 3, host="127.0.0.5"))
    await nvr.start()
    macs = {"127.0.0.1": CAMERA_MAC, "127.0.0.5": OTHER_MAC}
    try:
        source = CameraSource(
            camera_id=CAMERA_MAC,
            stream_url=camera.rtsp_url,
            snapshot_url=nvr.snapshot_url,
            username=CAM_USER,
            password=CAM_PASSWORD,
            identity=Identity(mac=CAMERA_MAC),
        )
        with patch.object(snapshot, "neighbour_mac", lambda address, *_: macs[str(address)]):
            async with aiohttp.ClientSession() as session:
                client = CameraClient(session, NetPolicy(), source)
                try:
                    frame = await client.fetch_snapshot()
                    assert nvr.stats.credentialed_requests >= 1
                    assert frame.camera_id == CAMERA_MAC
                    await client.check_health()  # the camera itself: its MAC, checked
                    macs["127.0.0.1"] = OTHER_MAC
                    with pytest.raises(IdentityMismatchError):
                        await client.check_health()
                finally:
                    await client.close()
    finally:
        await nvr.stop()


# --- audit additions -------------------------------------------------------


async def test_a_device_that_does_not_say_who_it_is_gets_no_frame_served(
    camera: VirtualCamera,
) -> None:
    """No MAC on the link: the device is asked after each fetch; an empty answer refuses the frame.

    An impostor need not answer identity queries at all. A frame is served as
    this camera's only when the answer repeats what identifies it.
    """
    source = CameraSource(
        camera_id="serial_SERIAL-1",
        stream_url=camera.rtsp_url,
        snapshot_url=camera.snapshot_url,
        username=CAM_USER,
        password=CAM_PASSWORD,
        identity=Identity(serial="SERIAL-1"),
    )
    answers = [Identity(), Identity(uuid="any"), Identity(serial="SERIAL-1")]

    async def probe(_whole: bool) -> Identity:
        return answers.pop(0)

    async with aiohttp.ClientSession() as session:
        client = CameraClient(session, NetPolicy(), source)
        client.identity_probe = probe
        try:
            for _silent in range(2):  # nothing at all, then nothing in common
                with pytest.raises(CannotConnectError, match="did not say which camera"):
                    await client.fetch_snapshot()
            frame = await client.fetch_snapshot()  # the camera's own serial: served
            assert frame.camera_id == "serial_SERIAL-1"
        finally:
            await client.close()


class Touches:
    """Bare connections made before credentials go out (``snapshot.touch``, the edge)."""

    def __init__(self) -> None:
        self.addresses: list[IPv4Address | IPv6Address] = []

    async def __call__(self, address: IPv4Address | IPv6Address, *_args: object) -> None:
        self.addresses.append(address)


@pytest.fixture
def touches(monkeypatch: pytest.MonkeyPatch) -> Touches:
    """Record bare connections instead of making them (the addresses are not reachable)."""
    made = Touches()
    monkeypatch.setattr(snapshot, "touch", made)
    return made


@asynccontextmanager
async def _lan_client(
    username: str | None = CAM_USER, password: str | None = CAM_PASSWORD
) -> AsyncIterator[CameraClient]:
    """A client of a camera at 192.168.1.20 pinned by its MAC (no packet is sent)."""
    source = CameraSource(
        camera_id=CAMERA_MAC,
        stream_url="rtsp://192.168.1.20/live",
        snapshot_url="http://192.168.1.20/snap.jpg",
        username=username,
        password=password,
        identity=Identity(mac=CAMERA_MAC),
    )
    async with aiohttp.ClientSession() as session:
        yield CameraClient(session, NetPolicy(), source)


CAMERA_ADDRESS = IPv4Address("192.168.1.20")
NEW_ADDRESS = IPv4Address("192.168.1.21")


async def test_a_recent_look_at_the_link_is_trusted_only_for_its_own_address(
    link: Link, touches: Touches
) -> None:
    """The camera's host name now names another address: that one is looked at first.

    The last look (seconds ago) showed the camera at its old address; it says
    nothing about the device at the new one, which must show the camera's MAC
    before a request with the credentials goes to it.
    """
    async with _lan_client() as client:
        client.check_link_identity(CAMERA_ADDRESS, "192.168.1.20")  # a still just now
        await client.guard_credentials(CAMERA_ADDRESS, 80, "192.168.1.20", connected=False)
        assert touches.addresses == []  # trusted: the look is fresh, at this address
        link.mac = OTHER_MAC  # another device answers at the new address
        with pytest.raises(IdentityMismatchError):
            await client.guard_credentials(NEW_ADDRESS, 80, "192.168.1.20", connected=False)
        assert touches.addresses == [NEW_ADDRESS]


async def test_a_look_older_than_link_trust_is_not_trusted(
    link: Link, touches: Touches, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LINK_TRUST, the address is looked at again before credentials go to it."""
    monkeypatch.setattr(snapshot, "LINK_TRUST", 0.05)
    async with _lan_client() as client:
        client.check_link_identity(CAMERA_ADDRESS, "192.168.1.20")
        await asyncio.sleep(0.2)  # well past LINK_TRUST, well within ten times it
        link.mac = OTHER_MAC
        with pytest.raises(IdentityMismatchError):
            await client.guard_credentials(CAMERA_ADDRESS, 80, "192.168.1.20", connected=False)
        assert touches.addresses == [CAMERA_ADDRESS]


@pytest.mark.parametrize(
    ("username", "password"),
    [(CAM_USER, None), (None, CAM_PASSWORD)],
    ids=["username-only", "password-only"],
)
async def test_half_a_credential_is_still_guarded(
    link: Link, touches: Touches, username: str | None, password: str | None
) -> None:
    """A user name with no password (common on cheap cameras) is still a credential."""
    async with _lan_client(username, password) as client:
        link.mac = OTHER_MAC
        with pytest.raises(IdentityMismatchError):
            await client.guard_credentials(CAMERA_ADDRESS, 554, "192.168.1.20", connected=True)


CAMERA_MAC = "aa:bb:cc:00:11:22"
OTHER_MAC = "aa:bb:cc:00:11:99"


async def test_the_relay_passes_no_session_of_another_device_without_credentials(
    socket_enabled: None,
) -> None:
    """A camera pinned by MAC, without credentials; another device took its address.

    Home Assistant's stream reaches the camera only through the relay; the
    relay's promise is that it relays nothing to a device that is not this
    camera. Without credentials it skipped its link check, and FFmpeg got the
    other device's SDP (and then its video, under this camera's name).
    """
    other = VirtualCamera(camera_config("other", 5, username=None, password=None))
    await other.start()
    source = CameraSource(
        camera_id=CAMERA_MAC,
        stream_url=other.rtsp_url,
        snapshot_url=None,
        username=None,
        password=None,
        identity=Identity(mac=CAMERA_MAC),
    )
    try:
        async with aiohttp.ClientSession() as session:
            client = CameraClient(session, NetPolicy(), source)
            try:
                with patch.object(snapshot, "neighbour_mac", lambda *_: OTHER_MAC):
                    relay = yarl.URL(await client.stream_url())
                    reader, writer = await asyncio.open_connection(relay.host, relay.port)
                    request = f"DESCRIBE {relay} RTSP/1.0\r\nCSeq: 1\r\n\r\n"
                    writer.write(request.encode())
                    await writer.drain()
                    async with asyncio.timeout(5):
                        reply = await reader.read(4096)
                    writer.close()
                assert not reply.startswith(b"RTSP/1.0 200"), reply[:200]
                assert b"m=video" not in reply
            finally:
                await client.close()
    finally:
        await other.stop()


class DeviceAnswers:
    """What the ONVIF device at the camera's address says it is (the identity probe's edge)."""

    def __init__(self, serial: str) -> None:
        self.serial = serial
        self.asked = 0

    async def __call__(self, _whole: bool) -> Identity:
        self.asked += 1
        return Identity(serial=self.serial)


async def _relay_describe(client: CameraClient) -> bytes:
    """One DESCRIBE through the camera's relay, as FFmpeg opens a session: the reply's head."""
    relay = yarl.URL(await client.stream_url())
    reader, writer = await asyncio.open_connection(relay.host, relay.port)
    try:
        writer.write(f"DESCRIBE {relay} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4096)
    finally:
        writer.close()


@asynccontextmanager
async def _pinned_by_serial(
    cam: VirtualCamera, device: DeviceAnswers
) -> AsyncIterator[CameraClient]:
    """LocalCam's client for an ONVIF camera pinned by serial "SERIAL-1", no MAC on the link."""
    source = CameraSource(
        camera_id="SERIAL-1",
        stream_url=cam.rtsp_url,
        snapshot_url=None,
        username=CAM_USER,
        password=CAM_PASSWORD,
        identity=Identity(serial="SERIAL-1"),
    )
    async with aiohttp.ClientSession() as session:
        client = CameraClient(session, NetPolicy(), source)
        client.identity_probe = device
        try:
            yield client
        finally:
            await client.close()


async def test_the_relay_asks_a_device_the_link_does_not_show_who_it_is(
    socket_enabled: None,
) -> None:
    """An ONVIF camera on another subnet (a camera VLAN): no MAC on the link, pinned by serial.

    Another of the user's cameras, with the same password, took its address.
    Stills ask the device after each fetch; HA's stream (and go2rtc, HomeKit)
    has no such check: the relay passed that device's session on, and only
    the health check the stream's start set off could stop it, in a race
    with the stream's first segment. The relay now asks the device first
    (unless it said so at that address within LINK_TRUST), and relays nothing
    to a device that is not this camera.
    """
    other = VirtualCamera(camera_config("other", 5))
    await other.start()
    device = DeviceAnswers("SERIAL-2")
    try:
        async with _pinned_by_serial(other, device) as client:
            reply = await _relay_describe(client)
            assert not reply.startswith(b"RTSP/1.0 200"), reply[:200]
            assert b"m=video" not in reply
            assert (other.stats.describe_requests, other.stats.credentialed_requests) == (0, 0)
            assert device.asked == 1
            assert client.guard.refusals == 1
            # The camera itself: relayed, and asked once for the sessions of LINK_TRUST.
            device.serial = "SERIAL-1"
            for _ in range(2):
                assert (await _relay_describe(client)).startswith(b"RTSP/1.0 ")
            assert other.stats.describe_requests >= 2
            assert device.asked == 2
    finally:
        await other.stop()


async def test_a_swap_found_by_a_check_ends_the_relays_trust(
    rtsp_only_camera: VirtualCamera,
) -> None:
    """Confirmed at T; a health check at T+1 finds another device: the relay asks again."""
    device = DeviceAnswers("SERIAL-1")
    async with _pinned_by_serial(rtsp_only_camera, device) as client:
        assert (await _relay_describe(client)).startswith(b"RTSP/1.0 ")
        assert device.asked == 1
        # Another device answers at the address now; the minute's check finds it.
        device.serial = "SERIAL-2"
        with pytest.raises(LocalCamError):
            await client.check_health()
        refusals = client.guard.refusals
        relayed = rtsp_only_camera.stats.describe_requests
        # HA's stream reconnects within LINK_TRUST of the old confirmation:
        # the device is asked again, and nothing is relayed to it.
        await _relay_describe(client)
        assert rtsp_only_camera.stats.describe_requests == relayed
        assert client.guard.refusals == refusals + 1


async def test_an_onvif_camera_on_ipv4_sends_another_device_no_credentials(
    camera: VirtualCamera, link: Link
) -> None:
    """The ONVIF probe stands in for the link only on IPv6: on IPv4 the link's MAC is read first."""

    async def probe(_whole: bool) -> Identity:
        return Identity(mac=CAMERA_MAC)

    async with _client(camera, snapshot_url=False) as client:
        client.identity_probe = probe  # an ONVIF camera: it can say who it is
        await client.check_health()
        sent = camera.stats.credentialed_requests
        assert sent >= 1
        link.mac = OTHER_MAC
        with pytest.raises(IdentityMismatchError):
            await client.check_health()
        assert camera.stats.credentialed_requests == sent


async def test_the_report_read_goes_only_to_the_device_the_link_proves(
    camera: VirtualCamera, link: Link
) -> None:
    """The whole read (with the camera's credentials) is for the camera the link shows.

    A device showing another MAC at the camera's address is refused by the
    link check; it must not first get the report probe's credentialed read.
    """
    reported: list[bool] = []

    async def probe(_whole: bool) -> Identity:
        return Identity(mac=CAMERA_MAC)

    async def report() -> None:
        reported.append(True)

    async with _client(camera, snapshot_url=False) as client:
        client.identity_probe = probe
        client.report_probe = report
        await client.check_health()
        assert reported == [True]  # the camera itself: read
        # Another device takes the address right after the camera's DESCRIBE
        # reply (the relay's own link check saw the camera).
        describe = client._describe

        async def then_swapped(*args: Any, **kwargs: Any) -> None:
            await describe(*args, **kwargs)
            link.mac = OTHER_MAC

        with patch.object(client, "_describe", then_swapped), pytest.raises(LocalCamError):
            await client.check_health()
        assert reported == [True]  # another device: nothing
