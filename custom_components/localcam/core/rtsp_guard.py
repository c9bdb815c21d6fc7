"""A loopback relay that keeps FFmpeg's RTSP sessions on the address LocalCam checked.

FFmpeg (LocalCam's still grabs through PyAV, and Home Assistant's stream
worker) follows an RTSP redirect (3xx) to wherever it points, without asking,
and has no option to refuse one. With UDP transport it also sends its RTCP and
NAT-punch packets to whatever ``source=`` the camera's SETUP reply names. So a
camera, or a device that took its address, could send FFmpeg to another host,
and LocalCam would serve that host's frames as this camera's.

This module closes that gap: FFmpeg is given a plain ``rtsp://`` URL on
127.0.0.1, and the relay behind it connects only to the checked address.
Everything the client sends is copied unchanged (its own credentials and
Digest answers included, so the relay never holds a secret of its own).
Everything the camera sends is parsed message by message, exactly as FFmpeg's
``ff_rtsp_read_reply`` reads it (a message read differently here could hide a
redirect from the relay):

- interleaved RTP/RTCP (``$`` frames) is copied as it is;
- an RTSP reply with a 3xx status, or a server ``REDIRECT`` request, is
  refused: FFmpeg gets ``502`` instead, the connection closes, the refusal is
  recorded (``refused_since``) and reported (``on_refused``: the entity
  stops its stream);
- every ``source`` of a ``Transport`` header is replaced by the checked
  address, so FFmpeg's outgoing UDP packets go to the camera and nowhere else;
- what FFmpeg could read differently (a NUL, a line it would cut short, a
  "$" starting a later line of a head) and heads or bodies beyond the caps
  below end the connection.

An ``rtsps://`` camera is relayed too: the relay is the TLS client, checking
the camera's certificate exactly as the source's verify setting says, for
LocalCam's grabs and Home Assistant's stream alike (left to themselves, FFmpeg 9
checks every certificate unless told not to, and Home Assistant's stream tells
it not to unless given its own verify option), and FFmpeg speaks plain RTSP to
the relay over loopback, interleaved on that one connection (TCP), as FFmpeg
does for rtsps itself.

FFmpeg always reads RTP interleaved in its connection to the relay. A camera
set to UDP is asked for UDP by the relay, on ports of the relay's own, and
only datagrams from the checked address are handed on to FFmpeg, framed in
that connection (``_UdpBridge``); FFmpeg opens no UDP port at all.

Which layer guarantees what: ``netpolicy`` checked the address; this relay
guarantees FFmpeg talks RTSP to nothing else, and gets media from nothing
else. Not covered: a datagram's sender address can be forged on the LAN,
which a TCP connection's cannot (see the README).
"""

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
import contextlib
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address
import logging
import socket
import ssl
import time
from typing import Final

import yarl

from .errors import (
    CannotConnectError,
    CertificateError,
    LocalCamError,
    RedirectedError,
    certificate_reason,
    copy_error,
)
from .netpolicy import Target, url_userinfo
from .rtsp import client_ssl_context

_LOGGER = logging.getLogger(__name__)

# Both are relayed; the relay is the TLS client for rtsps (see the module docstring).
RELAYED_SCHEMES: Final = frozenset({"rtsp", "rtsps"})
# A reply or request head larger than this is not RTSP (a real one is < 4 KiB).
MAX_HEAD: Final = 64 * 1024
# An RTSP body is an SDP or a parameter list; a few KiB in practice.
MAX_BODY: Final = 1024 * 1024
CONNECT_TIMEOUT: Final = 5.0
# How long a client whose camera could not be reached gets to finish its first
# request, for the 503 that answers it (FFmpeg sent it on connecting).
UNREACHABLE_REPLY_WAIT: Final = 1.0
# Addresses kept per camera (a camera that moves gets a new listener; the
# oldest is closed beyond this, with its connections).
MAX_LISTENERS: Final = 4
# Concurrent sessions per listener: HA's stream, a warm grab, a probe, and
# room for a restart overlapping the old session.
MAX_CONNECTIONS: Final = 8
# A client (FFmpeg sends OPTIONS or DESCRIBE the moment it connects) that has
# sent no request this long after the camera's connection is ready is closed:
# connections that never speak cannot keep the MAX_CONNECTIONS places.
FIRST_REQUEST_WAIT: Final = 10.0
READ_SIZE: Final = 64 * 1024
# Pause before accepting again after accept() failed (out of descriptors).
ACCEPT_RETRY: Final = 1.0
_BACKLOG: Final = 8
# UDP cameras (see _UdpBridge). Tracks per session (video, audio, metadata and
# SETUP retries after a 401); beyond this a SETUP passes unchanged (interleaved).
MAX_UDP_TRACKS: Final = 8
# FFmpeg reads an interleaved frame shorter than this as RTSP text while it
# streams (ff_rtsp_tcp_read_packet), and skips it while it waits for a reply.
# No RTP or RTCP packet is that short: the relay drops such frames (and such
# datagrams) whole, so FFmpeg never has to choose.
MIN_FRAME: Final = 8
# Bytes of datagrams held until the reply to PLAY has passed, or while a reply
# is only partly passed; later ones are dropped beyond this (media may drop).
MAX_HELD_BYTES: Final = 2 * 1024 * 1024
# Outstanding requests remembered (FFmpeg waits for each reply; its keep-alive
# may be answered later).
_MAX_PENDING: Final = 16
# Seconds between the relay's own RTCP receiver reports to the camera while
# media flows (some cameras end a UDP session that hears none).
RTCP_INTERVAL: Final = 5.0
# Receive buffer asked for each RTP port: a keyframe's burst waits there while
# the event loop is busy (the kernel caps it at net.core.rmem_max).
_UDP_RCVBUF: Final = 2 * 1024 * 1024
# What FFmpeg sends to open the path (rtp_send_punch_packets): an empty RTP
# packet and an empty receiver report.
_RTP_PUNCH: Final = bytes((0x80, 0)) + bytes(10)
_RTCP_REPORT: Final = bytes((0x80, 201, 0, 1)) + bytes(4)
# FFmpeg's unread bytes beyond which a datagram is dropped rather than queued.
MAX_CLIENT_BACKLOG: Final = 4 * 1024 * 1024
_UDP_BIND_ATTEMPTS: Final = 16
# Datagrams read from one port in one go (a keyframe's burst), so one port
# cannot keep the event loop to itself.
_DATAGRAMS_PER_READ: Final = 64

type RefusalCallback = Callable[[RedirectedError], None]
# Checks the device at a session's address once connected (raises LocalCamError).
type LinkCheck = Callable[[IPv4Address | IPv6Address, int], Awaitable[None]]


class _RefusedError(Exception):
    """The camera sent something the relay does not pass on."""

    def __init__(self, reason: str, redirect: int | None = None) -> None:
        super().__init__(reason)
        self.redirect = redirect  # the refused redirect's status
        # What the same read held before the refused message, checked and
        # passable (ReplyFilter.feed sets it): the rest of a frame, say.
        self.passed = b""


# FFmpeg's SPACE_CHARS (what get_word skips and stops at) and C's isspace (what atoi
# and strtol skip).
_FF_SPACE: Final = b" \t\r\n"
_C_SPACE: Final = b" \t\n\v\f\r"
# FFmpeg reads a line into a 4096-byte buffer and drops what does not fit; a longer
# line would be read differently here and there, so it ends the session.
MAX_LINE: Final = 4000


def _c_int(text: bytes) -> int:
    """C's ``(int)strtol(text, NULL, 10)`` on a 64-bit machine (atoi, FFmpeg's lengths).

    Emulated exactly, overflow included: "4294967598" is 302 to FFmpeg.
    """
    text = text.lstrip(_C_SPACE)
    sign = -1 if text[:1] == b"-" else 1
    if text[:1] in (b"-", b"+"):
        text = text[1:]
    digits = len(text) - len(text.lstrip(b"0123456789"))
    value = sign * int(text[:digits]) if digits else 0
    value = max(-(2**63), min(2**63 - 1, value))  # strtol clamps to long
    return (value + 2**31) % 2**32 - 2**31  # and the int it is stored in wraps


def _word(line: bytes, pos: int) -> tuple[bytes, int]:
    """FFmpeg's get_word: skip SPACE_CHARS, then read up to the next one."""
    while pos < len(line) and line[pos] in _FF_SPACE:
        pos += 1
    start = pos
    while pos < len(line) and line[pos] not in _FF_SPACE:
        pos += 1
    return line[start:pos], pos


def _status_of(start_line: bytes) -> int | None:
    """The status FFmpeg reads from a message's first line; None for a request.

    As ``ff_rtsp_read_reply``: the first word starting ``RTSP/`` makes it a
    reply, and the status is ``atoi`` of the second word.
    """
    first, pos = _word(start_line, 0)
    if not first.startswith(b"RTSP/"):
        return None
    return _c_int(_word(start_line, pos)[0])


def _is_source_param(param: str) -> bool:
    """Whether FFmpeg reads this Transport parameter as ``source`` (any case here)."""
    # get_word_sep skips one leading "/", then SPACE_CHARS; the name ends at "=".
    name = param.removeprefix("/").lstrip(" \t").split("=", 1)[0]
    return name.lower() == "source"


def _rewrite_transport(value: str, address: str) -> str:
    """Make the checked address every transport spec's last (so winning) ``source``.

    FFmpeg sends its UDP punch and RTCP packets to ``source`` when a reply
    names one, else to the URL's host (here 127.0.0.1, where the camera is
    not): naming the checked address keeps UDP working and on that device.
    Every parameter FFmpeg could read as a source is dropped first; with
    interleaved (TCP) transport FFmpeg ignores ``source`` altogether.
    """
    specs = []
    for spec in value.split(","):
        params = [p for p in spec.split(";") if not _is_source_param(p)]
        params.append(f"source={address}")
        specs.append(";".join(params))
    return ",".join(specs)


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    """A header's value in a message's lines (CRs dropped; the last one wins), if any."""
    found = None
    prefix = name + b":"
    for line in lines[1:]:
        if line.lower().startswith(prefix):
            found = line[len(prefix) :].strip()
    return found


def _transport_params(value: str) -> tuple[str, dict[str, str]]:
    """The first transport spec of a Transport value: its protocol and parameters."""
    spec = value.split(",", 1)[0]
    proto, *params = (part.strip() for part in spec.split(";"))
    named = {}
    for param in params:
        name, _, arg = param.partition("=")
        named[name.strip().lower()] = arg.strip()
    return proto.upper(), named


def _pair(text: str, top: int) -> tuple[int, int] | None:
    """An "a-b" (or "a", meaning a and a+1) pair of numbers up to ``top``, if valid."""
    low, _, high = text.partition("-")
    if not low.isascii() or not low.isdigit() or len(low) > 5:
        return None
    first = int(low)
    if not high:
        second = first + 1
    elif high.isascii() and high.isdigit() and len(high) <= 5:
        second = int(high)
    else:
        return None
    return (first, second) if second <= top else None


def _interleaved(value: str) -> tuple[int, int] | None:
    """The channel pair a SETUP asks for, if it asks for interleaved (TCP) RTP."""
    proto, params = _transport_params(value)
    if proto != "RTP/AVP/TCP" or "interleaved" not in params:
        return None
    return _pair(params["interleaved"], 255)


def _all_interleaved(value: bytes) -> bool:
    """Whether every transport spec a SETUP offers is interleaved in the RTSP connection.

    The lower transport decides, whatever the profile: FFmpeg asks
    ``RAW/RAW/TCP`` for an MPEG-TS stream (SDP protocol ``udp``), and
    retries only a first SETUP's 461, with the next lower transport.
    """
    return all(
        spec.split(b";", 1)[0].strip().upper().endswith(b"/TCP") for spec in value.split(b",")
    )


_HEX: Final = frozenset("0123456789abcdefABCDEF")


def _udp_answer(value: str) -> tuple[tuple[int, int] | None, str | None] | None:
    """The camera's UDP ports (None if it names none) and SSRC, if it answered unicast UDP."""
    proto, params = _transport_params(value)
    if proto not in ("RTP/AVP", "RTP/AVP/UDP") or "multicast" in params:
        return None
    # Without a usable server_port FFmpeg sends no RTCP (port 0); nor does the relay.
    ports = _pair(params.get("server_port", ""), 65535)
    if ports is not None and 0 in ports:
        ports = None
    ssrc = params.get("ssrc")
    if ssrc is not None and not (0 < len(ssrc) <= 8 and all(c in _HEX for c in ssrc)):
        ssrc = None
    return ports, ssrc


@dataclass(slots=True)
class ReplyFilter:
    """Read what the camera sends as FFmpeg will, message by message; pass, rewrite or refuse.

    The framing must be FFmpeg's own (``ff_rtsp_read_reply``,
    ``ff_rtsp_skip_packet``): a message this filter read differently could
    hide a redirect inside what it took for a body or a frame.
    """

    address: str
    # Set for a camera reached over UDP: its SETUP replies are turned back
    # into the interleaved transport FFmpeg asked for (see _UdpBridge).
    bridge: _UdpBridge | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    frames_dropped: int = 0  # $ frames under MIN_FRAME bytes, never passed
    _left: int = 0  # bytes of the current body or $ frame still to pass unread
    _skip: int = 0  # bytes of a dropped $ frame still to skip (never passed)
    _scanned: int = 0  # how much of a pending head's lines is already read (no rescans)
    _crs: int = 0  # CRs passed at the start of the coming message
    # The relay's own replies to the client (a 461) that wait for the message
    # being passed to end: written only between messages (the relay's _filter).
    own_replies: list[bytes] = field(default_factory=list)
    # Requests relayed to the camera and not yet answered (the relay counts
    # them; None: not counted). FFmpeg takes the next reply for the answer to
    # the request it waits on: a reply sent before any request was made
    # would answer FFmpeg's next one, which the camera never got (a SETUP
    # the relay answers 461 itself).
    outstanding: int | None = None

    @property
    def between_messages(self) -> bool:
        """Whether all that was passed so far ends where a message ends.

        A partial head is never passed, so only a body or frame still being
        copied through leaves the client in the middle of a message.
        """
        return self._left == 0

    def _head_end(self, buf: bytearray, pos: int, end: int) -> int:
        r"""Where a message head that starts at ``pos`` ends (after its blank line), or -1.

        As FFmpeg reads it: lines end at LF, every CR is dropped, and the
        first line that is then empty ends the head. Lines already read in an
        earlier feed are not read again (a head trickled in byte by byte
        costs linear time). A NUL ends FFmpeg's C strings early (a Transport
        value would lose the source= added after it) and a "$" that starts a
        later line makes FFmpeg skip a frame there: either is refused.
        """
        limit = min(end, pos + MAX_HEAD)
        line = pos + self._scanned
        while (newline := buf.find(b"\n", line, limit)) >= 0:
            text = buf[line:newline].replace(b"\r", b"")
            if b"\x00" in text:
                raise _RefusedError("a NUL byte in a message head")
            if not text:
                self._scanned = 0
                return newline + 1
            if line > pos and text[:1] == b"$":
                raise _RefusedError("a frame inside a message head")
            if newline - line > MAX_LINE:
                raise _RefusedError("a line beyond the size cap")
            line = newline + 1
        if limit - line > MAX_LINE:
            raise _RefusedError("a line beyond the size cap")
        self._scanned = line - pos
        return -1

    def feed(self, data: bytes) -> bytearray:
        """Return what may go to the client now; raise _RefusedError to end the session.

        A refusal only ever comes where a message starts (a head, or the CRs
        before one), so what the error carries as passed ends between messages.
        """
        out = bytearray()
        try:
            self._feed(data, out)
        except _RefusedError as err:
            err.passed = bytes(out)
            raise
        return out  # written as it is: no second copy of every frame

    def _feed(self, data: bytes, out: bytearray) -> None:
        """Add what may go to the client to ``out`` (see feed)."""
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                out += buf[pos : pos + take]
                pos += take
                self._left -= take
                continue
            if self._skip:
                take = min(self._skip, end - pos)
                pos += take
                self._skip -= take
                continue
            if not self._scanned:
                # FFmpeg drops CRs before it looks for the "$" of a frame: passing
                # them on at once changes nothing it reads, and none is read twice.
                first = pos
                while first < end and buf[first] == 0x0D:
                    first += 1
                self._crs += first - pos
                if self._crs > MAX_LINE:
                    raise _RefusedError("a line beyond the size cap")
                out += buf[pos:first]
                pos = first
                if pos == end:
                    break
                if buf[pos] == 0x24:  # "$": channel, 16-bit length, RTP/RTCP payload
                    if end - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 4])
                    if length < MIN_FRAME:
                        # FFmpeg skips such a payload while it waits for a reply,
                        # but reads it as text while streaming: two readings. It
                        # is no RTP or RTCP packet (a keep-alive): dropped whole.
                        self._skip = length
                        self.frames_dropped += 1
                    else:
                        out += buf[pos : pos + 4]
                        self._left = length
                    pos += 4
                    self._crs = 0
                    continue
            head_end = self._head_end(buf, pos, end)
            if head_end < 0:
                if end - pos >= MAX_HEAD:
                    raise _RefusedError("a message head beyond the size cap")
                break
            head, body = self._check(bytes(buf[pos:head_end]))
            out += head
            pos = head_end
            self._left = body
            self._crs = 0
        del buf[:pos]

    def _check(self, head: bytes) -> tuple[bytes, int]:
        """Check one message head; return it (maybe rewritten) and its body length."""
        raw_lines = head.split(b"\n")
        lines = [line.replace(b"\r", b"") for line in raw_lines]
        status = _status_of(lines[0])
        if status is None and _word(lines[0], 0)[0].upper() == b"REDIRECT":
            raise _RefusedError("a REDIRECT request", 302)
        if status is not None and 300 <= status < 400:
            raise _RefusedError(f"a {status} redirect", status)
        # An empty first line is a reply to FFmpeg too (status 0), but also a
        # stray CRLF: it is counted, never refused.
        if self.outstanding is not None and (status is not None or not lines[0]):
            if self.outstanding:
                self.outstanding -= 1
            elif status is not None:
                raise _RefusedError("a reply to no request")
        length = 0
        rewritten = False
        bridged = None
        if self.bridge is not None and status is not None:
            value = _header(lines, b"transport")
            bridged = self.bridge.reply(status, None if value is None else value.decode("latin-1"))
        for index, line in enumerate(lines[1:], start=1):
            lower = line.lower()
            # av_stristart: the name at the very start of the line, any case.
            if lower.startswith(b"content-length:"):
                length = _c_int(line[15:])  # the last one wins, as in FFmpeg
            elif lower.startswith(b"transport:"):
                new = bridged or _rewrite_transport(
                    line[10:].strip().decode("latin-1"), self.address
                )
                raw_lines[index] = b"Transport: " + new.encode("latin-1") + b"\r"
                rewritten = True
        if length > MAX_BODY:
            raise _RefusedError("a body length beyond the cap")
        if rewritten:
            head = b"\n".join(raw_lines)
        return head, max(length, 0)


def _refusal_reply(cseq: bytes | None, *, redirect: bool) -> bytes:
    """The reply FFmpeg gets instead of a refused one: it names LocalCam in HA's log."""
    what = b"Redirect" if redirect else b"Reply"
    header = b"CSeq: " + cseq + b"\r\n" if cseq else b""
    return b"RTSP/1.0 502 " + what + b" refused by LocalCam\r\n" + header + b"\r\n"


async def _answer_unreachable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the client's first request with a 503: the camera did not answer.

    A connection closed without a word made FFmpeg, and so HA's log, say
    "Invalid data found when processing input" at a loopback address; a
    5xx reads as the server's error. Bounded: one head (the reader's 64 KiB
    limit), UNREACHABLE_REPLY_WAIT at most; anything odd gets no answer.
    """
    try:
        async with asyncio.timeout(UNREACHABLE_REPLY_WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError:
        return
    cseq = _cseq_of(head)
    header = b"CSeq: " + cseq + b"\r\n" if cseq else b""
    writer.write(b"RTSP/1.0 503 Camera unreachable\r\n" + header + b"\r\n")


def _cseq_of(data: bytes) -> bytes | None:
    """The CSeq of the last request the client sent (what a refusal answers)."""
    found = None
    for line in data.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"cseq" and value.strip().isdigit():
            found = value.strip()
    return found


# Ports relays of this process have used, newest last. A URL outlives its
# listener (an evicted address, an unloaded camera): if another camera's relay
# took the same port, a session still holding the old URL would reach that
# camera. So no relay port is handed out twice while it is remembered here.
_USED_PORTS: Final[OrderedDict[int, None]] = OrderedDict()
# The same for the UDP bridge's ports (see _bind_udp_pair).
_USED_UDP_PORTS: Final[OrderedDict[int, None]] = OrderedDict()
_REMEMBERED_PORTS: Final = 4096
_BIND_ATTEMPTS: Final = 16


def _bind_unused_port() -> socket.socket:
    """A listening loopback socket on a port no relay of this process has used."""
    held: list[socket.socket] = []  # kept bound while retrying, so the kernel moves on
    try:
        for _ in range(_BIND_ATTEMPTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                if port in _USED_PORTS:
                    held.append(sock)
                    continue
                sock.listen(_BACKLOG)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            _USED_PORTS[port] = None
            while len(_USED_PORTS) > _REMEMBERED_PORTS:
                _USED_PORTS.popitem(last=False)
            return sock
        raise OSError("no unused loopback port for an RTSP relay")
    finally:
        for sock in held:
            sock.close()


def _bind_udp_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on ``host``, on an even port and the next (RTP, RTCP).

    Never a port a bridge of this process has used while it is remembered:
    a camera still streaming to an old session's port must not reach a new
    session (of another stream of the same device, say) that got it again.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []  # unusable ports, kept so the kernel moves on
    try:
        for _ in range(_UDP_BIND_ATTEMPTS):
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            held.append(rtp)
            rtp.bind((host, 0))
            port = rtp.getsockname()[1]
            if port % 2 or port >= 65535 or port in _USED_UDP_PORTS or port + 1 in _USED_UDP_PORTS:
                continue
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtcp.bind((host, port + 1))
            except OSError:
                rtcp.close()
                continue
            held.remove(rtp)
            with contextlib.suppress(OSError):
                rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
            rtp.setblocking(False)
            rtcp.setblocking(False)
            for used in (port, port + 1):
                _USED_UDP_PORTS[used] = None
            while len(_USED_UDP_PORTS) > _REMEMBERED_PORTS:
                _USED_UDP_PORTS.popitem(last=False)
            return rtp, rtcp
        raise OSError("no free UDP port pair")
    finally:
        for sock in held:
            sock.close()


@dataclass(slots=True)
class _Track:
    """One SETUP bridged to UDP: FFmpeg's channels, the relay's ports, the camera's."""

    rtp_channel: int
    rtcp_channel: int
    rtp: socket.socket
    rtcp: socket.socket
    server: tuple[int, int] | None = None  # the camera's RTP and RTCP ports, once answered

    @property
    def ports(self) -> tuple[int, int]:
        """The relay's RTP and RTCP ports."""
        return self.rtp.getsockname()[1], self.rtcp.getsockname()[1]

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop reading both sockets, then close them (never closed while registered)."""
        for sock in (self.rtp, self.rtcp):
            loop.remove_reader(sock)
            sock.close()


class _UdpBridge:
    """A camera's RTP over UDP, handed to FFmpeg inside its TCP connection to the relay.

    FFmpeg always speaks interleaved RTP over TCP to the relay. For a camera
    set to UDP, the relay asks the camera for UDP instead, on ports of its own
    bound on the address that faces the camera (never handed out twice while
    remembered, like the relay's TCP ports), and turns the camera's answer
    back into the interleaved transport FFmpeg asked for. Only datagrams from
    the checked address are passed on, framed as FFmpeg's channels: a packet
    from any other sender (another device, or a camera still streaming to a
    port another session had) never reaches FFmpeg. Left to itself, FFmpeg
    takes UDP packets from any sender (Home Assistant's stream gives it no
    option to filter them).

    As FFmpeg does over UDP, the relay opens the path (a host firewall lets
    the camera's packets in once the relay has sent to it): an empty RTP
    packet and an empty RTCP receiver report to the camera's ports after
    SETUP and PLAY, and a report every RTCP_INTERVAL while media flows.
    FFmpeg's own interleaved RTCP, if any, goes to the camera's RTCP port.

    Replies are matched to requests in order (FFmpeg waits for each reply;
    a CSeq that is missing or wrong only makes FFmpeg warn). A datagram is
    written between two messages only, and only after the reply to PLAY has
    passed (FFmpeg drops data that comes before it); the ones that must wait
    are held, MAX_HELD_BYTES at most. The ports are read straight from their
    sockets, every datagram waiting at once (a keyframe's burst), and handed
    on in one write.
    """

    def __init__(
        self,
        listener: _Listener,
        local_host: str,
        client: asyncio.StreamWriter,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        self._camera = listener.address
        self._camera_text = str(listener.address)  # how the socket names it, mostly
        self._local_host = local_host
        self._client = client
        self._pending: deque[tuple[str, _Track | None]] = deque(maxlen=_MAX_PENDING)
        self._tracks: list[_Track] = []
        self._channels: dict[int, _Track] = {}
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._play_answered = False
        self._playing = False
        self._between_messages = True
        self._last_report = float("-inf")  # the first media brings a report at once

    def request(self, method: str, transport: str | None) -> str | None:
        """Note a request; for a SETUP asking for interleaved RTP, the UDP transport to ask instead.

        None passes the request unchanged: not a SETUP, or one the bridge
        cannot take (then the camera is asked for interleaved RTP, as FFmpeg did).
        """
        track = None
        if (
            method == "SETUP"
            and transport is not None
            and (channels := _interleaved(transport)) is not None
            and len(self._tracks) < MAX_UDP_TRACKS
        ):
            try:
                track = self._open(channels)
            except OSError as err:
                _LOGGER.debug("Relay to %s: no UDP ports (%s); asking for TCP", self._camera, err)
        self._pending.append((method, track))
        if track is None:
            return None
        rtp, rtcp = track.ports
        return f"RTP/AVP;unicast;client_port={rtp}-{rtcp}"

    def _open(self, channels: tuple[int, int]) -> _Track:
        """Bind the relay's RTP and RTCP ports for FFmpeg's two channels, and read them."""
        rtp, rtcp = _bind_udp_pair(self._local_host)
        track = _Track(channels[0], channels[1], rtp, rtcp)
        self._tracks.append(track)
        self._loop.add_reader(rtp, self._readable, rtp, channels[0])
        self._loop.add_reader(rtcp, self._readable, rtcp, channels[1])
        return track

    def reply(self, status: int, transport: str | None) -> str | None:
        """A reply is about to pass: the Transport FFmpeg gets instead, if any.

        A successful PLAY's reply lets the media through once it is written.
        A bridged SETUP answered with UDP gets the interleaved transport FFmpeg
        asked for; answered with interleaved RTP, it passes as it is (what
        FFmpeg asked for); answered with anything else, it is refused
        (FFmpeg, which asked for TCP, would fail on it anyway).
        """
        if not self._pending:
            return None  # an answer to nothing the client asked
        method, track = self._pending.popleft()
        if not 200 <= status < 300:
            return None
        if method == "PLAY":
            self._play_answered = True
            for each in self._tracks:
                self._punch(each)
            return None
        if track is None or transport is None:
            return None
        if _transport_params(transport)[0] == "RTP/AVP/TCP":
            return None
        if (answer := _udp_answer(transport)) is None:
            raise _RefusedError("a SETUP answer the relay cannot take over UDP")
        track.server, ssrc = answer
        self._channels[track.rtp_channel] = track
        self._channels[track.rtcp_channel] = track
        self._punch(track)
        tcp = f"RTP/AVP/TCP;unicast;interleaved={track.rtp_channel}-{track.rtcp_channel}"
        return tcp if ssrc is None else f"{tcp};ssrc={ssrc}"

    def _punch(self, track: _Track) -> None:
        """Open the path from the camera's ports to the relay's, as FFmpeg does."""
        if track.server is not None:
            self._to_camera(track.rtp, _RTP_PUNCH, track.server[0])
            self._to_camera(track.rtcp, _RTCP_REPORT, track.server[1])

    def _to_camera(self, sock: socket.socket, packet: bytes, port: int) -> None:
        """Send one packet to the camera's port; best effort (a full buffer, an ICMP error)."""
        with contextlib.suppress(OSError):
            sock.sendto(packet, (self._camera_text, port))

    def client_written(self, between_messages: bool) -> None:
        """What the filter passed is written; hand over held datagrams if they may go now."""
        if self._play_answered:
            self._playing = True
        self._between_messages = between_messages
        if self._held and self._playing and between_messages:
            self._send(b"".join(self._held))
            self._drop_held()

    def _drop_held(self) -> None:
        """Forget the held datagrams (sent, or the session is over)."""
        self._held.clear()
        self._held_bytes = 0

    def _readable(self, sock: socket.socket, channel: int) -> None:
        """Read what waits on one of the relay's ports (bounded per call) and hand it on."""
        datagrams: list[tuple[bytes, str]] = []
        for _ in range(_DATAGRAMS_PER_READ):
            try:
                # A read of at most 65535 bytes always fits a frame's 16-bit length.
                data, sender = sock.recvfrom(0xFFFF)
            except BlockingIOError, InterruptedError:
                break
            except OSError:  # an ICMP error (the camera not listening yet): read on
                continue
            datagrams.append((data, str(sender[0])))
        self.from_camera(channel, datagrams)

    def from_camera(self, channel: int, datagrams: list[tuple[bytes, str]]) -> None:
        """Datagrams on one of the relay's ports (data, sender): pass on the camera's own."""
        frames = []
        for data, sender in datagrams:
            if sender != self._camera_text and not self._is_camera(sender):
                self._listener.guard.datagrams_refused += 1
                self._listener.log_once(
                    "datagram",
                    "RTP for the camera at %s came from %s; LocalCam dropped it",
                    sender,
                )
                continue
            if len(data) >= MIN_FRAME:
                frames.append(b"$" + bytes((channel,)) + len(data).to_bytes(2) + data)
            else:  # a keep-alive, and FFmpeg would misread it
                self._listener.guard.short_packets_dropped += 1
        if not frames:
            return
        if self._playing and self._between_messages and not self._held:
            self._send(b"".join(frames))
            if (now := self._loop.time()) - self._last_report >= RTCP_INTERVAL:
                self._last_report = now
                for track in self._tracks:
                    if track.server is not None:
                        self._to_camera(track.rtcp, _RTCP_REPORT, track.server[1])
            return
        for frame in frames:
            if self._held_bytes + len(frame) > MAX_HELD_BYTES:
                break
            self._held.append(frame)
            self._held_bytes += len(frame)

    def _is_camera(self, sender: str) -> bool:
        """Whether another spelling of an address (IPv4-mapped, a zone) is the camera's."""
        try:
            address = ip_address(sender.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped == self._camera
        return address == self._camera

    def _send(self, frame: bytes) -> None:
        transport = self._client.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_CLIENT_BACKLOG:
            return  # FFmpeg is gone or not reading: media drops, memory stays bounded
        self._client.write(frame)

    def from_client(self, channel: int, payload: bytes) -> None:
        """An interleaved RTCP packet from the client: to the camera's RTCP port."""
        track = self._channels.get(channel)
        if track is not None and track.server is not None and channel == track.rtcp_channel:
            self._to_camera(track.rtcp, payload, track.server[1])

    def close(self) -> None:
        """Close every port (the session is over)."""
        for track in self._tracks:
            track.close(self._loop)
        self._tracks.clear()
        self._drop_held()


@dataclass(frozen=True, slots=True)
class _Upstream:
    """Where one listener relays to: a checked address, and how to speak TLS to it."""

    address: IPv4Address | IPv6Address
    port: int
    # rtsps: the name the camera's certificate is checked against (the URL's
    # host, as LocalCam's own DESCRIBE checks it); None for plain rtsp.
    tls_host: str | None = None
    verify: bool = True
    # RTP from the camera over UDP, bridged into FFmpeg's TCP connection.
    udp: bool = False


class _Listener:
    """One loopback port relaying to one checked address."""

    def __init__(self, guard: RtspGuard, upstream: _Upstream) -> None:
        self.guard = guard
        self.upstream = upstream
        self.address = upstream.address
        self.port = upstream.port
        # Bound now (synchronously), so the URL is known at once; connections
        # wait in the backlog until the accept loop starts a moment later.
        self.sock = _bind_unused_port()
        self.local_port: int = self.sock.getsockname()[1]
        # Kinds of refusal already logged as a warning (FFmpeg retries: HA's
        # stream with backoff), so each kind warns once per address.
        self.warned: set[str] = set()
        # When this listener last refused a session, and the error that says
        # why (a new instance for each caller: an exception is not raised twice).
        self.last_refusal: tuple[float, Callable[[], LocalCamError]] | None = None
        self.sessions: set[asyncio.Task[None]] = set()
        self.serving = asyncio.get_running_loop().create_task(self._serve())

    def log_once(self, kind: str, message: str, reason: str) -> None:
        """Warn of a refusal of ``kind`` the first time, then only at debug level."""
        log = _LOGGER.debug if kind in self.warned else _LOGGER.warning
        self.warned.add(kind)
        log(message, self.address, reason)

    async def _serve(self) -> None:
        """Accept connections until closed; each becomes a session at once.

        A plain accept loop rather than asyncio's Server: a session is
        registered in the same step its connection is accepted, so close()
        never misses one, and no connection accepted as the server closes
        reaches asyncio's transport creation after it (CPython #109564: an
        AssertionError logged as an error).
        """
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as err:
                # Out of descriptors or buffers for a moment (EMFILE, ENOBUFS):
                # pause and accept again, as asyncio's own servers do. Ending
                # here would leave this port handed out with nobody serving it
                # until the entry reloads. A closed socket ends the loop.
                if self.sock.fileno() == -1:
                    return
                _LOGGER.debug("Relay for %s:%s cannot accept: %s", self.address, self.port, err)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            if len(self.sessions) >= MAX_CONNECTIONS:
                conn.close()
                continue
            task = loop.create_task(self._session(conn))
            self.sessions.add(task)
            task.add_done_callback(self.sessions.discard)

    async def _session(self, conn: socket.socket) -> None:
        """Relay one client session; whatever ends it, the client's connection is closed."""
        # asyncio closes the socket itself if this fails or is cancelled.
        reader, writer = await asyncio.open_connection(sock=conn)
        try:
            await self._relay(reader, writer)
        except Exception:
            # Not expected (broken connections end the session quietly in
            # _relay); logged here, as nobody awaits a session's task.
            _LOGGER.exception("Relay to %s:%s failed", self.address, self.port)
        finally:
            writer.close()  # a FIN after the last reply (the 502 of a refusal)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = self.upstream
        try:
            context = None
            if upstream.tls_host is not None:
                # Built once per setting, off the loop (it reads the CA bundle).
                context = await asyncio.get_running_loop().run_in_executor(
                    None, client_ssl_context, upstream.verify
                )
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(
                    str(self.address),
                    self.port,
                    ssl=context,
                    server_hostname=upstream.tls_host,
                )
        except ssl.SSLCertVerificationError as err:
            # FFmpeg only sees its connection end; the guard says why.
            self.guard.certificate_refused(self, certificate_reason(err))
            return
        except (OSError, TimeoutError) as err:
            _LOGGER.debug("Relay to %s:%s: cannot connect (%s)", self.address, self.port, err)
            await _answer_unreachable(reader, writer)
            return
        if self.guard.link_check is not None:
            # Connected, nothing relayed yet: FFmpeg's first request may carry
            # the camera's credentials (a remembered answer), and a device that
            # took the camera's address must not get them.
            try:
                await self.guard.link_check(self.address, self.port)
            except LocalCamError as err:
                up_writer.transport.abort()
                self.guard.link_refused(self, err)
                return
            except BaseException:
                # Cancelled meanwhile (unload, retire, eviction): the camera's
                # connection closes with the session, not when it times out.
                up_writer.transport.abort()
                raise
        last_request = bytearray()
        bridge = None
        if upstream.udp:
            bridge = _UdpBridge(self, str(up_writer.get_extra_info("sockname")[0]), writer)
        # Shared by both directions: the relay's own replies (a 461) reach the
        # client only where a message of the camera's ends (see _copy_requests).
        check = ReplyFilter(str(self.address), bridge, outstanding=0)
        directions = (
            asyncio.create_task(
                self._copy_requests(reader, up_writer, last_request, bridge, writer, check)
            ),
            asyncio.create_task(self._filter(up_reader, writer, last_request, bridge, check)),
        )
        try:
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this session is cancelled (unload, eviction): neither
            # direction may outlive it, and every outcome is read, so none is
            # left unretrieved. A broken connection just ends the session.
            for task in directions:
                task.cancel()
            # Before any await: a second cancel (the relay closing as the
            # session winds down) landing on the gather must not skip them,
            # or the camera's connection stays open with nobody behind it.
            if bridge is not None:
                bridge.close()
            up_writer.transport.abort()
            outcomes = await asyncio.gather(*directions, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, OSError):
                raise outcome

    async def _copy_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        last: bytearray,
        bridge: _UdpBridge | None,
        client: asyncio.StreamWriter,
        check: ReplyFilter | None = None,
    ) -> None:
        """Client to camera, message by message: every SETUP must ask for interleaved RTP.

        A client asking for RTP over UDP (FFmpeg left to its default
        transport: HomeKit's, or any other consumer of ``stream_source``)
        would have the camera send its media straight to a UDP port of
        FFmpeg's, which takes packets from any sender on the LAN. Such a
        SETUP never reaches the camera: the relay answers it 461
        (Unsupported Transport) and FFmpeg asks again, interleaved (TCP).
        For a UDP camera (``bridge``) an interleaved SETUP is asked anew as UDP.

        The client is FFmpeg on this machine, whose requests end their lines
        with CRLF; what cannot be read as that (a head beyond the reader's
        64 KiB limit, a body beyond MAX_BODY) ends the session.
        """
        wait: float | None = FIRST_REQUEST_WAIT  # for the first byte only
        try:
            while True:
                async with asyncio.timeout(wait):
                    first = await reader.readexactly(1)
                wait = None
                if first == b"$":  # FFmpeg's RTCP report, interleaved
                    header = await reader.readexactly(3)
                    payload = await reader.readexactly(int.from_bytes(header[1:3]))
                    if bridge is not None:
                        bridge.from_client(header[0], payload)
                    else:
                        writer.write(first + header + payload)
                        await writer.drain()
                    continue
                if first in b"\r\n":
                    continue
                head = first + await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                length = _c_int(_header(lines, b"content-length") or b"0")
                if not 0 <= length <= MAX_BODY:
                    return
                body = await reader.readexactly(length) if length else b""
                transport = _header(lines, b"transport")
                method = _word(lines[0], 0)[0].decode("latin-1").upper()
                if method == "SETUP" and transport is not None and not _all_interleaved(transport):
                    cseq = _cseq_of(head)
                    reply = (
                        b"RTSP/1.0 461 Unsupported Transport\r\n"
                        + (b"CSeq: " + cseq + b"\r\n" if cseq else b"")
                        + b"\r\n"
                    )
                    # FFmpeg waits for this reply, but the camera may be in the
                    # middle of a frame or body to it: a reply written there
                    # would be read as that frame's bytes, and the camera's
                    # next bytes (passed as payload, unchecked) as this reply.
                    if check is None or (check.between_messages and not check.own_replies):
                        client.write(reply)
                        await client.drain()
                    elif len(check.own_replies) < _MAX_PENDING:
                        check.own_replies.append(reply)  # _filter writes it where that ends
                    else:
                        return  # no client waits for that many replies: bounded
                    continue
                new = None
                answer = method.startswith("RTSP/")
                if bridge is not None and not answer:
                    # Not FFmpeg's answer to a request of the camera's (an
                    # OPTIONS or ANNOUNCE): that is no request to match a reply to.
                    new = bridge.request(
                        method, None if transport is None else transport.decode("latin-1")
                    )
                if new is not None:
                    lines = [
                        b"Transport: " + new.encode("latin-1")
                        if line.lower().startswith(b"transport:")
                        else line
                        for line in lines
                    ]
                    head = b"\r\n".join(lines) + b"\r\n\r\n"
                last[:] = head[-4096:]
                # Counted unless it is FFmpeg's answer to a request of the camera's.
                if check is not None and check.outstanding is not None and not answer:
                    check.outstanding += 1
                writer.write(head + body)
                await writer.drain()
        except asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError:
            return  # TimeoutError: silent past FIRST_REQUEST_WAIT

    async def _filter(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        last: bytearray,
        bridge: _UdpBridge | None = None,
        check: ReplyFilter | None = None,
    ) -> None:
        """Camera to client, through the ReplyFilter (the relay's own replies in between)."""
        if check is None:
            check = ReplyFilter(str(self.address), bridge)
        dropped = 0
        while data := await reader.read(READ_SIZE):
            try:
                passed = check.feed(data)
            except _RefusedError as err:
                # Reported first: a client that resets the connection while
                # the 502 goes out must not make the refusal go unreported.
                self.guard.refused(self, str(err), err.redirect)
                self.guard.short_packets_dropped += check.frames_dropped - dropped
                # What came before the refused message (the rest of a frame)
                # goes first, so the 502 starts where a message starts. Were
                # FFmpeg still inside a frame or body, the 502 would be read
                # as its bytes (video data): the session would just end, cut.
                writer.write(err.passed)
                if check.between_messages:
                    writer.write(
                        _refusal_reply(_cseq_of(bytes(last)), redirect=err.redirect is not None)
                    )
                await writer.drain()
                return
            self.guard.short_packets_dropped += check.frames_dropped - dropped
            dropped = check.frames_dropped
            if passed:
                writer.write(passed)
            own = bool(check.own_replies) and check.between_messages
            if own:
                writer.write(b"".join(check.own_replies))
                check.own_replies.clear()
            if bridge is not None:
                bridge.client_written(check.between_messages)
            if passed or own:
                await writer.drain()

    async def close(self) -> None:
        """Stop accepting and end every relayed session."""
        # sock_accept unregisters the socket from the loop when cancelled, so
        # it is closed only after: a socket closed while registered leaves a
        # stale selector entry that breaks the next socket given its number.
        self.serving.cancel()
        await asyncio.gather(self.serving, return_exceptions=True)
        self.sock.close()
        for task in list(self.sessions):
            task.cancel()
        await asyncio.gather(*self.sessions, return_exceptions=True)


class RtspGuard:
    """The loopback relays of one camera, one per checked address (bounded)."""

    def __init__(
        self,
        on_refused: RefusalCallback | None = None,
        link_check: LinkCheck | None = None,
    ) -> None:
        """Start with no listener; ``on_refused`` hears of every refused redirect.

        ``link_check`` runs on each session's connection to the camera before
        anything is relayed (the identity layer's check of the device there);
        what it raises ends the session, nothing relayed.
        """
        self._listeners: OrderedDict[_Upstream, _Listener] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self.on_refused = on_refused
        self.link_check = link_check
        self.refusals = 0
        self.certificates_refused = 0
        self.datagrams_refused = 0
        # RTP/RTCP packets under MIN_FRAME bytes from the camera (interleaved
        # or datagrams): keep-alives at best, never passed to FFmpeg.
        self.short_packets_dropped = 0
        self._closed = False

    def url(
        self,
        target: Target,
        username: str | None,
        password: str | None,
        *,
        verify_ssl: bool = True,
        udp: bool = False,
    ) -> str:
        """FFmpeg's URL for ``target``: its own path and query, on a loopback relay (secret).

        FFmpeg must use TCP to the relay (``CameraSource.ffmpeg_transport``).
        For ``rtsps://`` the relay is the TLS client, verifying the camera's
        certificate if ``verify_ssl``; FFmpeg gets plain ``rtsp://`` to it.
        With ``udp`` (plain ``rtsp://`` only) the relay asks the camera for
        RTP over UDP and passes on only the camera's own datagrams (_UdpBridge).
        """
        if target.url.scheme not in RELAYED_SCHEMES:
            # Stream URLs pass the policy only as rtsp or rtsps: anything else
            # here is a caller's mistake, never handed to FFmpeg unrelayed.
            raise ValueError(f"not an RTSP URL: {target.url.scheme}")
        if self._closed:
            # A fetch still running while its camera unloads: no new listener
            # that nothing would close.
            raise CannotConnectError("the camera is being unloaded")
        tls = target.url.scheme == "rtsps"
        key = _Upstream(
            target.address,
            target.port,
            target.host if tls else None,
            verify_ssl or not tls,
            udp=udp and not tls,
        )
        listener = self._listeners.get(key)
        if listener is None:
            try:
                listener = _Listener(self, key)
            except OSError as err:  # no loopback port: the session fails like a camera would
                raise CannotConnectError(f"no relay port for the stream ({err})") from err
            self._listeners[key] = listener
            while len(self._listeners) > MAX_LISTENERS:
                _, oldest = self._listeners.popitem(last=False)
                self._close_later(oldest)
        else:
            self._listeners.move_to_end(key)
        userinfo = url_userinfo(username, password)
        return f"rtsp://{userinfo}127.0.0.1:{listener.local_port}{target.url.raw_path_qs}"

    def as_dict(self) -> dict[str, int]:
        """Counters for diagnostics (no addresses: diagnostics redact hosts)."""
        return {
            "relays": len(self._listeners),
            "sessions": sum(len(listener.sessions) for listener in self._listeners.values()),
            "sessions_refused": self.refusals,
            "certificates_refused": self.certificates_refused,
            "datagrams_refused": self.datagrams_refused,
            "short_packets_dropped": self.short_packets_dropped,
        }

    def retire(self, url: str, *, keep: str) -> bool:
        """Close the relay behind ``url`` and end its sessions, unless ``keep`` uses it too.

        For an address the camera has left (its stream now follows it to
        ``keep``): a session a player opened there before it learned the new
        URL ends, so it never plays on from whatever device answers at the
        old address. True if a relay was closed.
        """
        listener = self._listener_of(url)
        if listener is None or listener is self._listener_of(keep):
            return False
        del self._listeners[listener.upstream]
        self._close_later(listener)
        return True

    def retire_except(self, address: IPv4Address | IPv6Address, port: int) -> int:
        """Close every relay to another address or port than ``address``:``port``.

        A URL from ``url()`` may be held by a player outside LocalCam's sight
        (Home Assistant's go2rtc, HomeKit's FFmpeg), which reconnects with it
        on its own. Once a check has found the camera at another address, a
        relay to an old one would play, to such a player, whatever device
        answers there now. Opens nothing. Returns how many relays were closed.
        """
        stale = [key for key in self._listeners if (key.address, key.port) != (address, port)]
        for key in stale:
            self._close_later(self._listeners.pop(key))
        return len(stale)

    def _close_later(self, listener: _Listener) -> None:
        """Close a listener already taken out of ``_listeners`` (close() waits for it)."""
        task = asyncio.get_running_loop().create_task(listener.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def relayed_to(self, url: str) -> tuple[IPv4Address | IPv6Address, int] | None:
        """The checked address and port a URL from ``url()`` relays to, if still open."""
        listener = self._listener_of(url)
        return None if listener is None else (listener.address, listener.port)

    def _listener_of(self, url: str) -> _Listener | None:
        """The open listener a URL from ``url()`` names, if any."""
        try:
            parsed = yarl.URL(url)
        except ValueError:
            return None
        if parsed.host != "127.0.0.1":
            return None
        for listener in self._listeners.values():
            if listener.local_port == parsed.port:
                return listener
        return None

    def refused(self, listener: _Listener, reason: str, redirect: int | None) -> None:
        """Record and report a refused session (called by a listener)."""
        self.refusals += 1
        listener.log_once(
            "reply",
            "The camera at %s sent %s; LocalCam refused it and ended that session",
            reason,
        )
        if redirect is not None:
            listener.last_refusal = (time.monotonic(), partial(RedirectedError, redirect))
            if self.on_refused is not None:
                self.on_refused(RedirectedError(redirect))

    def certificate_refused(self, listener: _Listener, reason: str) -> None:
        """Record an rtsps camera whose certificate failed the check (called by a listener)."""
        self.refusals += 1
        self.certificates_refused += 1
        listener.log_once(
            "certificate",
            "The camera at %s has a certificate LocalCam does not accept: %s",
            reason,
        )
        listener.last_refusal = (time.monotonic(), partial(CertificateError, reason))

    def link_refused(self, listener: _Listener, err: LocalCamError) -> None:
        """Record a session ended by the link check (called by a listener)."""
        self.refusals += 1
        listener.log_once(
            "link",
            "The device at %s is not the camera (%s); LocalCam relayed nothing to it",
            str(err),
        )
        # A copy per caller: an exception is not raised twice.
        listener.last_refusal = (time.monotonic(), partial(copy_error, err))

    def refused_since(self, url: str, since: float) -> LocalCamError | None:
        """Why the relay behind ``url`` refused a session at or after ``since``, if it did.

        A refused redirect (RedirectedError), a refused certificate
        (CertificateError) or another device at the address (the link check's
        error): FFmpeg saw only a 502 or a closed connection.
        Only ``url``'s own relay is asked: another address's refusal (an old
        address still streaming after a move) is not this session's.
        """
        listener = self._listener_of(url)
        if listener is None or listener.last_refusal is None:
            return None
        at, error = listener.last_refusal
        return error() if at >= since else None

    async def close(self) -> None:
        """Close every listener and its sessions (the camera's unload)."""
        self._closed = True
        listeners = list(self._listeners.values())
        self._listeners.clear()
        await asyncio.gather(
            *(listener.close() for listener in listeners), *self._closing, return_exceptions=True
        )
