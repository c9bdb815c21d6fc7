"""Plain data types shared by LocalCam's core and its Home Assistant glue."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
import hashlib

from .identity import Identity


class SnapshotSource(StrEnum):
    """Where a still came from."""

    SNAPSHOT_URL = "snapshot_url"
    STREAM_KEYFRAME = "stream_keyframe"
    RTSP_GRAB = "rtsp_grab"


class RtspTransport(StrEnum):
    """Lower transport for RTSP media."""

    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class CameraSource:
    """How to reach one camera: what the config entry stores, typed.

    URLs are credential-free; credentials travel separately and are only
    joined to a URL at the last moment (netpolicy.Target.pinned_url).
    """

    camera_id: str
    stream_url: str
    snapshot_url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_ssl: bool = True
    rtsp_transport: RtspTransport = RtspTransport.TCP
    identity: Identity = field(default_factory=Identity)

    @property
    def ffmpeg_transport(self) -> RtspTransport:
        """The RTSP transport FFmpeg is told to use for this camera's stream: always TCP.

        FFmpeg reaches every camera through the loopback relay
        (``core.rtsp_guard``), and interleaved RTP inside that one connection
        is what the relay checks and passes on. The configured transport is
        the one between the relay and the camera (``relay_udp``): for UDP the
        relay takes the camera's datagrams and hands them to FFmpeg framed
        in its connection, so FFmpeg opens no UDP port anyone could send to.
        """
        return RtspTransport.TCP

    @property
    def relay_udp(self) -> bool:
        """Whether the relay asks the camera for RTP over UDP (plain ``rtsp://`` set to UDP).

        ``rtsps://`` carries RTP inside its TLS connection (interleaved) only.
        """
        return (
            self.rtsp_transport is RtspTransport.UDP
            and self.stream_url.partition(":")[0].lower() != "rtsps"
        )

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides which pictures this source yields.

        A change of URL, credentials or identity changes the fingerprint, which
        is what lets a cache tell a frame of the old source from the new one.
        """
        digest = hashlib.sha256()
        for part in (
            self.camera_id,
            self.stream_url,
            self.snapshot_url or "",
            self.username or "",
            self.password or "",
            self.identity.key or "",
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the test before configure learned from the first decoded frame."""

    codec: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One JPEG still with its provenance."""

    camera_id: str
    fingerprint: str
    source: SnapshotSource
    jpeg: bytes = field(repr=False)
    width: int
    height: int
    # time.monotonic() the still is aged from, the cache serving it only within
    # max age: HTTP, when the camera's response headers arrived (never when a
    # slow body finished); RTSP grab, when the keyframe's packet arrived; a
    # running stream, when it handed its keyframe over.
    captured_at: float
    captured_wall: datetime  # the same instant, as wall-clock time (UTC)
    sha256: str

    @property
    def size(self) -> int:
        """Size of the JPEG in bytes."""
        return len(self.jpeg)
