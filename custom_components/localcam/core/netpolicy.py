"""LAN-only network policy: the one place that decides whether a URL may be fetched.

Every connection LocalCam makes (HTTP snapshots, FFmpeg streams) goes through
``NetPolicy.check`` first, so this module is the layer that guarantees no
non-LAN connection: it parses the URL strictly, refuses spellings other parsers
read differently, resolves a host name once, requires every address it resolves
to be local, and pins the connection to an address that was checked.

It also owns the URL renderings that are safe to show: ``display_url`` for logs
and messages, ``redact_url`` for diagnostics and ``normalized_identity`` for
config-entry unique ids.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
import hashlib
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
import re
import socket
from typing import Final
from urllib.parse import quote

import yarl

from .errors import CameraTimeoutError, CannotConnectError, InvalidUrlError, NotLocalError

type IPAddress = IPv4Address | IPv6Address
type IPNetwork = IPv4Network | IPv6Network
type Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

ALLOWED_SCHEMES: Final = frozenset({"rtsp", "rtsps", "http", "https"})
DEFAULT_PORTS: Final[Mapping[str, int]] = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
DEFAULT_RESOLVE_TIMEOUT: Final = 5.0

# Extra networks may widen the policy (a camera behind a VPN range) but never to
# "everything": anything broader than these prefixes is refused.
MIN_EXTRA_PREFIX_V4: Final = 8
MIN_EXTRA_PREFIX_V6: Final = 16

LAN_NETWORKS: Final[tuple[IPv4Network | IPv6Network, ...]] = (
    IPv4Network("127.0.0.0/8"),
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("169.254.0.0/16"),
    IPv6Network("::1/128"),
    IPv6Network("fe80::/10"),
    IPv6Network("fc00::/7"),
)
# Cloud instance metadata and credential endpoints: refused unless the user
# names the very address (an allowed network around one does not open it).
METADATA_ADDRESSES: Final[frozenset[IPv4Address | IPv6Address]] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, Azure, GCP, OpenStack...
        IPv6Address("fd00:ec2::254"),  # AWS over IPv6
        IPv4Address("169.254.170.2"),  # AWS ECS task credentials
        IPv4Address("169.254.170.23"),  # AWS EKS Pod Identity
        IPv6Address("fd00:ec2::23"),
        IPv4Address("100.100.100.200"),  # Alibaba Cloud (inside CGNAT 100.64.0.0/10)
    }
)
# IPv6 prefixes that carry IPv4 addresses (NAT64 RFC 6052 / RFC 8215, 6to4
# RFC 3056), with the shortest extra network allowed inside each: one that
# embeds no more of IPv4 than a /8 (MIN_EXTRA_PREFIX_V4) would.
_IPV4_CARRIERS: Final[tuple[tuple[IPv6Network, int], ...]] = (
    (IPv6Network("64:ff9b::/96"), 96 + MIN_EXTRA_PREFIX_V4),
    (IPv6Network("64:ff9b:1::/48"), 96 + MIN_EXTRA_PREFIX_V4),
    (IPv6Network("2002::/16"), 16 + MIN_EXTRA_PREFIX_V4),
)
_BROADCAST: Final = IPv4Address("255.255.255.255")
_IPV6_LINK_LOCAL: Final = IPv6Network("fe80::/10")

# Query and path parameter names that carry secrets on common cameras.
CREDENTIAL_PARAMS: Final = frozenset(
    {
        "user",
        "username",
        "usr",
        "pass",
        "password",
        "pwd",
        "passwd",
        "token",
        "auth",
        "key",
        "sig",
        "signature",
    }
)
_CREDENTIAL_ALT: Final = "|".join(sorted(CREDENTIAL_PARAMS, key=len, reverse=True))
# Some cameras carry credentials in the path ("/user=admin&password=x&channel=1.sdp").
_PATH_SECRET_RE: Final = re.compile(rf"(?i)(?<![^/;&,?])({_CREDENTIAL_ALT})=[^/;&,?]*")
# For display and diagnostics, also names that end in one (access_token,
# api_key, admin_pass) and opaque path segments that are the secret
# themselves (UniFi Protect's RTSP alias, 16 random letters and digits,
# grants the stream alone). Not for identities: their hash keeps _mask_path.
_DISPLAY_SECRET_RE: Final = re.compile(
    rf"(?i)(?<![^/;&,?])([a-z0-9_.\-]{{0,32}}?(?:{_CREDENTIAL_ALT}))=[^/;&,?]*"
)
_OPAQUE_SEGMENT_RE: Final = re.compile(
    r"(?<![^/])(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])"
    r"[A-Za-z0-9]{16,}(?![^/])"
)
_PARAM_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.\-\[\]]{1,40}$")
_SCHEME_RE: Final = re.compile(r"^[a-z][a-z0-9+.\-]{0,15}$")
_LABEL_RE: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?$")
# A last label like these makes WHATWG, inet_aton and FFmpeg read the host as IPv4.
_NUMERIC_LABEL_RE: Final = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_ZONE_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

REDACTED: Final = "**REDACTED**"
_MASK: Final = "***"
_INVALID_DISPLAY: Final = "<invalid url>"


def url_userinfo(username: str | None, password: str | None) -> str:
    """``user:pass@`` for a URL, percent-encoded ("" without either); a secret."""
    if username is None and password is None:
        return ""
    # Always "user:" (a blank password as empty): FFmpeg answers no
    # challenge for a user part without a colon, so a camera with a username
    # and a blank password (common on cheap cameras) got 401s on its stream.
    return f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"


@dataclass(frozen=True, slots=True, repr=False)
class Target:
    """A URL that passed the policy, pinned to the address that was checked."""

    url: yarl.URL
    host: str
    port: int
    address: IPv4Address | IPv6Address

    def pinned_url(self, username: str | None = None, password: str | None = None) -> str:
        """Return the URL aimed at the checked address; secret when credentials are given."""
        # Connecting to the literal address (not the name) closes the window in
        # which a second DNS answer could send the connection somewhere else.
        userinfo = url_userinfo(username, password)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        port = "" if self.url.explicit_port is None else f":{self.url.explicit_port}"
        return f"{self.url.scheme}://{userinfo}{literal}{port}{self.url.raw_path_qs}"

    def for_url(self, url: str | yarl.URL) -> Target | None:
        """This checked address for another credential-free URL of the same host, else None.

        The host passed the policy (and the caller's identity check) at this
        address; another URL of the same camera needs no second lookup, which
        could answer differently (round-robin or flapping DNS).
        """
        parsed = _parse(url)
        if parsed.raw_user is not None or parsed.raw_password is not None:
            return None
        try:
            host = parsed.host
        except ValueError, UnicodeError:
            return None  # an "xn--" label that is not valid IDNA names no host of ours
        if host != self.url.host or (port := _port_of(parsed)) is None:
            return None
        return replace(self, url=parsed.with_fragment(None), port=port)

    def __repr__(self) -> str:
        """Show the target without query values, so logging it leaks nothing."""
        return (
            f"Target(url={display_url(self.url)!r}, host={self.host!r}, "
            f"port={self.port}, address={str(self.address)!r})"
        )


async def system_resolve(host: str, port: int) -> list[str]:
    """Resolve through the event loop's getaddrinfo, returning every address."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class NetPolicy:
    """Which addresses LocalCam may connect to, and how host names are resolved."""

    extra_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    resolver: Resolver | None = None
    resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT

    def __post_init__(self) -> None:
        """Refuse extra networks so broad that they would switch the policy off."""
        networks = tuple(self.extra_networks)
        for network in networks:
            _validate_extra_network(network)
        object.__setattr__(self, "extra_networks", networks)

    def classify(self, address: IPv4Address | IPv6Address | str) -> str | None:
        """Return None when the address may be contacted, else the reason it may not."""
        # ::ffff:a.b.c.d reaches a.b.c.d, so it is judged as that address.
        addr = _unmapped(ip_address(address) if isinstance(address, str) else address)
        if isinstance(addr, IPv6Address) and addr.scope_id:
            addr = IPv6Address(int(addr))  # the zone does not change which network it is in
        if addr.is_unspecified:
            return f"unspecified address {addr}"
        if addr.is_multicast:
            return f"multicast address {addr}"
        if addr == _BROADCAST:
            return f"broadcast address {addr}"
        if addr in METADATA_ADDRESSES:
            # Only when the user names this very address (a camera that took it by
            # link-local autoconfiguration): a network added for a VPN or a camera
            # VLAN must not open the cloud metadata service that lies inside it.
            if any(
                network.num_addresses == 1 and addr in network for network in self.extra_networks
            ):
                return None
            return f"cloud metadata address {addr}"
        if any(addr in network for network in self.extra_networks):
            return None
        if any(addr in network for network in LAN_NETWORKS):
            return None
        return f"public address {addr}"

    async def check(
        self, url: str | yarl.URL, *, schemes: frozenset[str] = ALLOWED_SCHEMES
    ) -> Target:
        """Validate a credential-free URL and pin it to a checked local address."""
        parsed = _parse(url)
        scheme = parsed.scheme
        if not scheme:
            raise InvalidUrlError("scheme is missing")
        if scheme not in schemes or scheme not in ALLOWED_SCHEMES:
            shown = scheme if _SCHEME_RE.match(scheme) else "in the url"
            raise InvalidUrlError(f"scheme {shown} is not allowed")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise InvalidUrlError("credentials in URL")
        if not parsed.raw_host:
            raise InvalidUrlError("host is missing")
        port = _port_of(parsed)
        assert port is not None  # every allowed scheme has a default port
        if not 1 <= port <= 65535:
            raise InvalidUrlError(f"port {port} is out of range")
        target_url = parsed.with_fragment(None)

        literal = _literal_address(parsed)
        if literal is not None:
            literal = _unmapped(literal)
            if reason := self.classify(literal):
                raise NotLocalError(parsed.host or str(literal), reason)
            return Target(url=target_url, host=str(literal), port=port, address=literal)

        host = _validated_hostname(parsed.raw_host)
        addresses = await self._resolve(host, port)
        for address in addresses:
            # One refused answer refuses the name: a resolver that mixes LAN and
            # public answers must not get to choose where we connect.
            if reason := self.classify(address):
                raise NotLocalError(host, reason)
        return Target(url=target_url, host=host, port=port, address=addresses[0])

    async def _resolve(self, host: str, port: int) -> tuple[IPv4Address | IPv6Address, ...]:
        """Resolve a name once, bounded in time, into distinct addresses."""
        resolver = self.resolver or system_resolve
        try:
            async with asyncio.timeout(self.resolve_timeout):
                answers = await resolver(host, port)
        except TimeoutError:
            raise CameraTimeoutError(f"resolving {host} timed out") from None
        except OSError as err:
            detail = err.strerror or type(err).__name__
            raise CannotConnectError(f"cannot resolve {host}: {detail}") from None
        addresses: list[IPv4Address | IPv6Address] = []
        for answer in answers:
            try:
                address = _unmapped(ip_address(answer))
            except ValueError:
                raise CannotConnectError(f"resolving {host} gave an invalid address") from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise CannotConnectError(f"{host} has no address")
        return tuple(addresses)


def is_loopback_literal(host: str | None) -> bool:
    """Whether ``host`` is an IP literal on loopback, ``::ffff:127.0.0.1`` included.

    A name is not judged here (it would need resolving): False.
    """
    try:
        return _unmapped(ip_address(host or "")).is_loopback
    except ValueError:
        return False


def _unmapped(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """Return the IPv4 address behind ::ffff:a.b.c.d, so we connect to what we judged."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _validate_extra_network(network: IPv4Network | IPv6Network) -> None:
    """Raise ValueError for a network too broad to be a deliberate exception."""
    minimum = MIN_EXTRA_PREFIX_V4 if network.version == 4 else MIN_EXTRA_PREFIX_V6
    if isinstance(network, IPv6Network):
        # Through a NAT64 gateway or a 6to4 relay, 64:ff9b::/96 is all of IPv4.
        minimum = max(
            [minimum, *(least for carrier, least in _IPV4_CARRIERS if network.overlaps(carrier))]
        )
    if network.prefixlen < minimum:
        raise ValueError(f"network {network} is too broad: the prefix must be at least /{minimum}")


def parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parse comma, space or newline separated CIDRs typed by a user."""
    networks: list[IPv4Network | IPv6Network] = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        try:
            # Host bits are forgiven: "192.168.5.7/24" plainly means 192.168.5.0/24.
            network = ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not a network in CIDR form like 10.8.0.0/24") from None
        _validate_extra_network(network)
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _parse(url: str | yarl.URL) -> yarl.URL:
    """Parse with yarl, turning its errors into InvalidUrlError."""
    if isinstance(url, yarl.URL):
        return url
    try:
        return yarl.URL(url.strip())
    except ValueError, TypeError:
        raise InvalidUrlError("malformed url") from None


def host_and_port(url: str | yarl.URL) -> str:
    """``host:port`` as the URL names them (default port filled in); the URL if unreadable.

    Tells the devices behind URLs apart without a lookup: the streams of one
    NVR or restream server share it.
    """
    try:
        parsed = _parse(url)
    except InvalidUrlError:
        return str(url)
    return f"{(parsed.raw_host or '').lower()}:{_port_of(parsed)}"


def _port_of(url: yarl.URL) -> int | None:
    """The URL's port: explicit, else its scheme's default (None for other schemes)."""
    return url.explicit_port if url.explicit_port is not None else DEFAULT_PORTS.get(url.scheme)


def _literal_address(url: yarl.URL) -> IPv4Address | IPv6Address | None:
    """Return the host as an address when it is an IP literal, refusing ambiguous ones."""
    try:
        host = url.host or ""
    except ValueError, UnicodeError:
        # yarl decodes "xn--" labels and raises when one is not valid punycode/IDNA
        # ("xn--", "xn--a"): such a name is refused here, not leaked as a UnicodeError.
        raise InvalidUrlError("invalid host name") from None
    raw_host = url.raw_host or ""
    if ":" in host:
        # yarl only lets a colon in through brackets, so this is an IPv6 literal.
        addr_text, _, zone = host.partition("%")
        try:
            address = IPv6Address(addr_text)
        except ValueError:
            raise InvalidUrlError("invalid ipv6 address") from None
        if "%" in host:
            if not _ZONE_RE.match(zone):
                raise InvalidUrlError("invalid zone id")
            if address not in _IPV6_LINK_LOCAL:
                raise InvalidUrlError("zone id on a non link-local address")
            return IPv6Address(f"{address}%{zone}")
        return address
    try:
        return IPv4Address(raw_host)
    except ValueError:
        pass
    last_label = raw_host.removesuffix(".").rpartition(".")[2]
    if _NUMERIC_LABEL_RE.match(last_label):
        # "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "127.0.0.1.": FFmpeg,
        # inet_aton and yarl disagree on what these mean, so none is accepted.
        raise InvalidUrlError("ambiguous numeric host")
    return None


def _validated_hostname(raw_host: str) -> str:
    """Return the IDNA (ASCII) host name, refusing anything a resolver might misread."""
    name = raw_host.lower()
    labels = name.removesuffix(".").split(".")
    if len(name) > 254 or not all(_LABEL_RE.match(label) for label in labels):
        raise InvalidUrlError("invalid host name")
    return name


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Strip the userinfo a user typed into a URL, returning it percent-decoded."""
    # yarl splits userinfo at the last "@" of the authority, so in
    # "http://10.0.0.1@203.0.113.9/" the host is 203.0.113.9, not 10.0.0.1.
    parsed = _parse(url)
    if parsed.raw_user is None and parsed.raw_password is None:
        return str(parsed), None, None
    return str(parsed.with_user(None)), parsed.user, parsed.password


def _host_port(url: yarl.URL) -> str:
    """Return host[:port] as written, IPv6 in brackets, without userinfo."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.explicit_port is None else f"{host}:{url.explicit_port}"


def _mask_path(raw_path: str, mask: str) -> str:
    """Hide credential-looking name=value pairs that some cameras put in the path."""
    return _PATH_SECRET_RE.sub(lambda match: f"{match.group(1)}={mask}", raw_path)


def _mask_display_path(raw_path: str, mask: str) -> str:
    """Hide what may be a secret in a path shown to people (logs, diagnostics)."""
    masked = _DISPLAY_SECRET_RE.sub(lambda match: f"{match.group(1)}={mask}", raw_path)
    return _OPAQUE_SEGMENT_RE.sub(mask, masked)


def _mask_query(raw_query: str, mask: str) -> str:
    """Keep parameter names (when they look like names), hide every value."""
    parts: list[str] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, equals, _ = part.partition("=")
        if equals and _PARAM_NAME_RE.match(name):
            parts.append(f"{name}={mask}")
        else:
            # A bare token or odd name may itself be the secret.
            parts.append(mask)
    return "&".join(parts)


def mask_credential_pairs(text: str, mask: str = "****") -> str:
    """Hide every credential-looking ``name=value`` pair in a free text (a logged body).

    The same names the URL renderings hide (``pwd=``, ``password=``,
    ``access_token=``...), after ``?``, ``&`` (also XML's ``&amp;``), ``/``,
    ``;`` or ``,``: how cameras write credentials into the URIs they report.
    """
    return _DISPLAY_SECRET_RE.sub(lambda match: f"{match.group(1)}={mask}", text)


def display_url(url: str | yarl.URL) -> str:
    """Render a URL for logs and error messages: no userinfo, no query values."""
    try:
        parsed = _parse(url)
        path = _mask_display_path(parsed.raw_path, _MASK)
        query = _mask_query(parsed.raw_query_string, _MASK)
        prefix = f"{parsed.scheme}://{_host_port(parsed)}" if parsed.absolute else ""
    except InvalidUrlError, ValueError:
        return _INVALID_DISPLAY
    return f"{prefix}{path}?{query}" if query else f"{prefix}{path}"


def redact_url(url: str | yarl.URL) -> str:
    """Render a URL for diagnostics: only the scheme and path survive."""
    try:
        parsed = _parse(url)
        path = _mask_display_path(parsed.raw_path, REDACTED)
        query = _mask_query(parsed.raw_query_string, REDACTED)
        prefix = ""
        if parsed.absolute:
            has_userinfo = parsed.raw_user is not None or parsed.raw_password is not None
            userinfo = f"{REDACTED}@" if has_userinfo else ""
            port = "" if parsed.explicit_port is None else f":{REDACTED}"
            prefix = f"{parsed.scheme}://{userinfo}{REDACTED}{port}"
    except InvalidUrlError, ValueError:
        return _INVALID_DISPLAY
    return f"{prefix}{path}?{query}" if query else f"{prefix}{path}"


def normalized_identity(url: str) -> str:
    """Return a stable, credential-free, hashed identity of a stream URL."""
    return "url_" + _normalized_hash(url, with_host=True)


def stream_channel(url: str) -> str:
    """Hash of a stream URL without its host: which stream of a device it names.

    Two URLs of one device (an NVR's channels, a restream's ports) differ
    here; the same stream reached at a new address (DHCP moved the camera)
    does not. Credential-free and hashed, as ``normalized_identity``.
    """
    return _normalized_hash(url, with_host=False)[:16]


def _normalized_hash(url: str, *, with_host: bool) -> str:
    """sha256 of a URL's scheme, host (optionally), port, path and non-secret query."""
    # Userinfo is never read below, so it cannot reach the hash.
    parsed = _parse(url)
    scheme = parsed.scheme
    raw_host = parsed.raw_host
    if not scheme or not raw_host:
        raise InvalidUrlError("malformed url")
    host = raw_host.lower()
    if ":" in host:
        # Canonical IPv6 spelling, so [0:0::1] and [::1] are the same camera.
        addr_text, _, zone = (parsed.host or "").partition("%")
        try:
            host = f"[{IPv6Address(addr_text)}{'%' + zone if zone else ''}]"
        except ValueError:
            raise InvalidUrlError("invalid ipv6 address") from None
    port = parsed.explicit_port or DEFAULT_PORTS.get(scheme) or parsed.port
    path = _mask_path(parsed.raw_path or "/", "")
    kept = sorted(
        (name, value)
        for name, value in parsed.query.items()
        if name.lower() not in CREDENTIAL_PARAMS
    )
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in kept)
    normalized = f"{scheme}://{host if with_host else ''}:{port}{path}?{query}"
    # Hashing means even a secret in an unrecognised parameter never reaches the id.
    return hashlib.sha256(normalized.encode()).hexdigest()[:24]
