"""The emulated Cast receiver (virtualcam/cast.py) against pychromecast, the real sender.

The soak (bench/soak.py) casts through Home Assistant's cast integration to
this receiver, so it must speak Cast v2 the way pychromecast expects and its
player must show what it was sent: these tests hold it to that with
pychromecast itself (no Home Assistant), on 127.0.0.1.
"""

import asyncio
from collections.abc import AsyncIterator
import io
import json
import ssl
import struct
from typing import Any
import uuid

import aiohttp
from aiohttp import web
import av
import numpy as np
import pychromecast
from pychromecast.models import CastInfo, HostServiceInfo
import pytest

from virtualcam import CameraConfig, VirtualCamera, color_for, nearest_camera
from virtualcam.cast import (
    CastReceiver,
    FragmentDecoder,
    fetch_allowed,
    master_variant,
    parse_media_playlist,
)

from .e2e_support import free_port

COLOUR = color_for(5)
HLS_COLOUR = color_for(9)
TOLERANCE = 40


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations() -> None:
    """Override the suite's: no Home Assistant runs in these tests."""


@pytest.fixture
async def receiver(socket_enabled: None) -> AsyncIterator[CastReceiver]:
    """An emulated receiver on 127.0.0.1, on free ports."""
    device = CastReceiver(
        "127.0.0.1",
        name="Test hub",
        cast_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        max_play_seconds=30,
    )
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


def _connect(device: CastReceiver) -> pychromecast.Chromecast:
    """pychromecast's Chromecast for the receiver, connected (blocking: run in a thread)."""
    info = CastInfo(
        {HostServiceInfo(device.host, device.cast_port)},
        device.uuid,
        "Virtual Hub",
        device.name,
        device.host,
        device.cast_port,
        "cast",
        "LocalCam virtual",
    )
    cast = pychromecast.Chromecast(cast_info=info, tries=1, timeout=5, retry_wait=0.5)
    cast.wait(timeout=10)
    return cast


def _close(cast: pychromecast.Chromecast) -> None:
    cast.disconnect(timeout=10)


async def _sender_sees(controller: Any, state: str, timeout: float = 5.0) -> bool:
    """Wait (bounded) until pychromecast's media status reaches `state`."""
    for _ in range(int(timeout * 10)):
        if controller.status.player_state == state:
            return True
        await asyncio.sleep(0.1)
    return controller.status.player_state == state


def _near(colour: tuple[int, int, int] | None, expected: tuple[int, int, int]) -> bool:
    return (
        colour is not None
        and max(abs(a - b) for a, b in zip(colour, expected, strict=True)) <= TOLERANCE
    )


async def test_pychromecast_plays_a_still_and_stops_it(receiver: CastReceiver) -> None:
    """Connect, launch the Default Media Receiver, LOAD a JPEG, see PLAYING, STOP, see IDLE."""
    camera = VirtualCamera(
        CameraConfig(name="still", color=COLOUR, rtsp=False, width=160, height=96)
    )
    await camera.start()
    try:
        cast = await asyncio.to_thread(_connect, receiver)
        try:
            assert cast.status is not None
            assert cast.status.app_id == "E8C28D3C"  # the backdrop: idle
            controller = cast.media_controller
            await asyncio.to_thread(controller.play_media, camera.snapshot_url, "image/jpeg")
            await asyncio.to_thread(controller.block_until_active, 10)
            assert await receiver.wait_for(
                lambda: bool(receiver.playbacks and receiver.playbacks[-1].pictures), 10
            )
            playback = receiver.playbacks[-1]
            assert playback.content_id == camera.snapshot_url
            assert _near(playback.colour, COLOUR)
            assert cast.app_id == "CC1AD845"
            assert await _sender_sees(controller, "PLAYING")
            assert controller.status.content_id == camera.snapshot_url

            await asyncio.to_thread(controller.stop, 10)
            assert playback.ended == "stopped"
            assert await _sender_sees(controller, "IDLE")
            assert controller.status.idle_reason == "CANCELLED"
        finally:
            await asyncio.to_thread(_close, cast)
    finally:
        await camera.stop()
    assert receiver.protocol_errors == []
    assert receiver.connections_accepted == 1


async def test_eureka_info_names_the_device(receiver: CastReceiver) -> None:
    """pychromecast's known-hosts browser reads name, model and UUID from eureka_info."""
    url = f"http://127.0.0.1:{receiver.http_port}/setup/eureka_info?params=device_info,name"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        info = await resp.json()
    assert info["device_info"]["name"] == "Test hub"
    assert uuid.UUID(info["device_info"]["ssdp_udn"]) == receiver.uuid
    assert info["device_info"]["capabilities"]["display_supported"] is True


def _fmp4(colour: tuple[int, int, int], seconds: float = 2.0) -> tuple[bytes, list[bytes]]:
    """A fragmented MP4 of one colour: (init section, [fragment per keyframe])."""
    buffer = io.BytesIO()
    with av.open(
        buffer,
        "w",
        format="mp4",
        options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
    ) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.gop_size = 5
        picture = np.zeros((96, 160, 3), dtype=np.uint8)
        picture[:, :] = colour
        for index in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = buffer.getvalue()
    boxes: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset + 8 <= len(data):
        (size,) = struct.unpack(">I", data[offset : offset + 4])
        boxes.append((data[offset + 4 : offset + 8], data[offset : offset + size]))
        offset += size
    init = b"".join(box for kind, box in boxes if kind in (b"ftyp", b"moov"))
    fragments: list[bytes] = []
    for kind, box in boxes:
        if kind == b"moof":
            fragments.append(box)
        elif kind == b"mdat" and fragments:
            fragments[-1] += box
    return init, fragments


async def test_player_follows_an_hls_playlist_until_it_is_gone(receiver: CastReceiver) -> None:
    """A live fMP4 playlist: the player decodes its segments, shows its colour, ends at 404."""
    init, fragments = _fmp4(HLS_COLOUR)
    assert len(fragments) >= 3
    state: dict[str, Any] = {"listed": 2, "gone": False}

    async def playlist(_request: web.Request) -> web.Response:
        if state["gone"]:
            return web.Response(status=404)
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:1"]
        lines += ["#EXT-X-MEDIA-SEQUENCE:0", '#EXT-X-MAP:URI="init.mp4"']
        for index in range(state["listed"]):
            lines += ["#EXTINF:0.5,", f"seg/{index}.m4s"]
        return web.Response(text="\n".join(lines), content_type="application/vnd.apple.mpegurl")

    async def master(_request: web.Request) -> web.Response:
        body = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=100000\nlive/playlist.m3u8\n"
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl")

    async def segment(request: web.Request) -> web.Response:
        index = int(request.match_info["n"])
        return web.Response(body=fragments[index], content_type="video/iso.segment")

    app = web.Application()
    app.router.add_get("/cam/master.m3u8", master)
    app.router.add_get("/cam/live/playlist.m3u8", playlist)

    async def init_section(_request: web.Request) -> web.Response:
        return web.Response(body=init, content_type="video/mp4")

    app.router.add_get("/cam/live/init.mp4", init_section)
    app.router.add_get("/cam/live/seg/{n}.m4s", segment)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        cast = await asyncio.to_thread(_connect, receiver)
        try:
            url = f"http://127.0.0.1:{port}/cam/master.m3u8"
            controller = cast.media_controller
            await asyncio.to_thread(controller.play_media, url, "application/vnd.apple.mpegurl")
            assert await receiver.wait_for(
                lambda: bool(receiver.playbacks and receiver.playbacks[-1].pictures), 15
            )
            playback = receiver.playbacks[-1]
            assert _near(playback.colour, HLS_COLOUR)
            first = playback.pictures
            # The live edge moves: the player fetches and decodes the new segment.
            state["listed"] = len(fragments)
            assert await receiver.wait_for(lambda: playback.pictures > first, 10)
            assert all(_near(colour, HLS_COLOUR) for colour in playback.colours)
            # The URL dies (a revoked cast link): the player stops, the sender sees IDLE.
            state["gone"] = True
            assert await receiver.wait_for(lambda: playback.ended is not None, 10)
            assert playback.ended == "not_found"
            assert await _sender_sees(controller, "IDLE")
        finally:
            await asyncio.to_thread(_close, cast)
    finally:
        await runner.cleanup()


async def test_a_url_outside_the_lan_is_never_fetched(receiver: CastReceiver) -> None:
    """A public address in a LOAD is refused by the receiver's player, before any packet."""
    cast = await asyncio.to_thread(_connect, receiver)
    try:
        await asyncio.to_thread(
            cast.media_controller.play_media, "http://203.0.113.7/cam.m3u8", "video/mp4"
        )
        assert await receiver.wait_for(
            lambda: bool(receiver.playbacks and receiver.playbacks[-1].ended), 10
        )
    finally:
        await asyncio.to_thread(_close, cast)
    playback = receiver.playbacks[-1]
    assert playback.ended == "refused"
    assert playback.fetches == 0


async def test_a_malformed_message_drops_only_that_connection(receiver: CastReceiver) -> None:
    """A length beyond the bound, or a payload that is not JSON: that sender is cut off."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.cast_port, ssl=context)
    writer.write(struct.pack(">I", 10_000_000))
    await writer.drain()
    assert await reader.read() == b""  # closed by the receiver
    writer.close()
    assert await receiver.wait_for(lambda: bool(receiver.protocol_errors), 5)
    assert "out of bounds" in receiver.protocol_errors[0]
    # The receiver still serves a well-behaved sender.
    cast = await asyncio.to_thread(_connect, receiver)
    try:
        assert cast.status is not None
    finally:
        await asyncio.to_thread(_close, cast)


def test_fetch_policy() -> None:
    """Loopback and private IP literals only; never a name, a public address or another scheme."""
    assert fetch_allowed("http://127.0.0.1:8123/api/x")
    assert fetch_allowed("http://192.168.1.20:8123/api/x")
    assert fetch_allowed("https://[::1]:8123/x")
    assert not fetch_allowed("http://203.0.113.7/x")  # documentation range: "private" to ipaddress
    assert not fetch_allowed("http://198.18.0.1/x")
    assert not fetch_allowed("http://homeassistant.local:8123/x")
    assert not fetch_allowed("http://169.254.1.1/x")
    assert not fetch_allowed("file:///etc/passwd")


def test_playlist_parsing() -> None:
    """Init section, numbered segments and target duration, resolved against the URL."""
    text = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:41\n"
        '#EXT-X-MAP:URI="init/3.mp4"\n#EXTINF:1.0,\nseg/41.m4s\n#EXTINF:1.0,\nseg/42.m4s\n'
    )
    init, segments, target = parse_media_playlist(text, "http://127.0.0.1/a/playlist.m3u8")
    assert init == "http://127.0.0.1/a/init/3.mp4"
    assert segments == [
        (41, "http://127.0.0.1/a/seg/41.m4s"),
        (42, "http://127.0.0.1/a/seg/42.m4s"),
    ]
    assert target == 2.0
    assert master_variant(text, "http://127.0.0.1/a/") is None
    with pytest.raises(ValueError, match="not an HLS playlist"):
        parse_media_playlist("<html>", "http://127.0.0.1/")


def test_fragment_decoder_rejects_garbage() -> None:
    """A fragment that is not fMP4 is a clear error, not a picture."""
    init, fragments = _fmp4(COLOUR, seconds=1.0)
    decoder = FragmentDecoder()
    colours = decoder.feed(init, fragments[0])
    assert colours
    assert nearest_camera(colours[0], [COLOUR, HLS_COLOUR]) == 0
    with pytest.raises(ValueError, match="does not decode"):
        FragmentDecoder().feed(b"\0\0\0\x08junk", b"more junk")


def test_status_payloads_are_json() -> None:
    """The wire format round-trips: length prefix, protobuf, JSON payload."""
    from virtualcam.cast import encode_message

    frame = encode_message("receiver-0", "sender-1", "urn:x-cast:test", {"type": "PONG"})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    message_class = pychromecast.generated.cast_channel_pb2.CastMessage
    message = message_class()
    message.ParseFromString(frame[4:])
    assert json.loads(message.payload_utf8) == {"type": "PONG"}
    assert message.destination_id == "sender-1"
