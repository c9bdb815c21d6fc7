"""CameraClient.guard_credentials: a device that took a camera's address is sent no credentials.

A camera pinned by its MAC is checked by the MAC the kernel resolved for its
address. That check after each connection keeps the device's frames out; this
one, before credentials go out, keeps the camera's password from it. The
kernel's neighbour table is the edge (patched); the devices are virtual
cameras on 127.0.0.1 that count every request carrying an Authorization header.
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from unittest.mock import patch

import aiohttp
import pytest
import pytest_socket

from custom_components.localcam.core import snapshot
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
