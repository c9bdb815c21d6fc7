"""Table tests of the LAN-only network policy (HA-free, no network at all)."""

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
import socket

import pytest
import yarl

from custom_components.localcam.core.errors import (
    CameraTimeoutError,
    CannotConnectError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
)
from custom_components.localcam.core.netpolicy import (
    ALLOWED_SCHEMES,
    NetPolicy,
    Target,
    display_url,
    is_loopback_literal,
    normalized_identity,
    parse_networks,
    redact_url,
    split_credentials,
)

# Names the fake resolver knows; nothing in these tests reaches a real resolver.
DNS: dict[str, list[str]] = {
    "cam.lan": ["192.168.1.20"],
    "cam6.lan": ["fd12:3456::20", "192.168.1.21"],
    "public.example": ["203.0.113.9"],
    "mixed.lan": ["192.168.1.22", "203.0.113.10"],
    "metadata.lan": ["169.254.169.254"],
    "mapped.lan": ["::ffff:10.1.2.3"],
    "xn--bcher-kva.lan": ["10.9.9.9"],
    "garbage.lan": ["not-an-address"],
    "empty.lan": [],
    "dup.lan": ["10.0.0.7", "10.0.0.7", "fd00::7"],
}


class FakeResolver:
    """Resolve from DNS above and record every lookup."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return DNS[host]


@pytest.fixture
def resolver() -> FakeResolver:
    """A fresh fake resolver."""
    return FakeResolver()


@pytest.fixture
def policy(resolver: FakeResolver) -> NetPolicy:
    """The default policy with the fake resolver."""
    return NetPolicy(resolver=resolver)


OK = "ok"

# (url, expected): expected is (OK, pinned address) or (error class, reason substring).
CHECK_TABLE: list[tuple[str, str, tuple[object, str]]] = [
    # Literal addresses inside the LAN ranges.
    ("loopback-v4", "http://127.0.0.1:8080/snap.jpg", (OK, "127.0.0.1")),
    ("loopback-v4-other", "rtsp://127.3.4.5/live", (OK, "127.3.4.5")),
    ("rfc1918-10", "rtsp://10.0.0.5:554/live", (OK, "10.0.0.5")),
    ("rfc1918-172", "rtsp://172.31.255.1/live", (OK, "172.31.255.1")),
    ("rfc1918-192", "https://192.168.1.10/", (OK, "192.168.1.10")),
    ("link-local-v4", "http://169.254.10.20/", (OK, "169.254.10.20")),
    ("loopback-v6", "http://[::1]:8080/", (OK, "::1")),
    ("ula-v6", "rtsps://[fd12:3456::1]/live", (OK, "fd12:3456::1")),
    ("link-local-v6", "rtsp://[fe80::1]/live", (OK, "fe80::1")),
    ("zone-id-raw", "rtsp://[fe80::1%eth0]/live", (OK, "fe80::1%eth0")),
    ("zone-id-encoded", "rtsp://[fe80::1%25eth0]/live", (OK, "fe80::1%eth0")),
    ("mapped-loopback", "http://[::ffff:127.0.0.1]/", (OK, "127.0.0.1")),
    ("fragment-ignored", "http://10.0.0.5/a#frag", (OK, "10.0.0.5")),
    # Public and special addresses.
    ("public-v4", "http://203.0.113.9/", (NotLocalError, "public address 203.0.113.9")),
    ("public-v6", "http://[2001:db8::1]/", (NotLocalError, "public address 2001:db8::1")),
    ("mapped-public", "http://[::ffff:8.8.8.8]/", (NotLocalError, "public address 8.8.8.8")),
    ("cgnat-default", "rtsp://100.64.1.2/live", (NotLocalError, "public address 100.64.1.2")),
    ("unspecified-v4", "http://0.0.0.0/", (NotLocalError, "unspecified address")),
    ("unspecified-v6", "http://[::]/", (NotLocalError, "unspecified address")),
    ("multicast-v4", "rtsp://239.1.2.3/", (NotLocalError, "multicast address")),
    ("multicast-v6", "rtsp://[ff02::1]/", (NotLocalError, "multicast address")),
    ("broadcast", "http://255.255.255.255/", (NotLocalError, "broadcast address")),
    ("metadata-v4", "http://169.254.169.254/latest/", (NotLocalError, "cloud metadata address")),
    ("metadata-v6", "http://[fd00:ec2::254]/", (NotLocalError, "cloud metadata address")),
    ("mapped-metadata", "http://[::ffff:169.254.169.254]/", (NotLocalError, "cloud metadata")),
    # Numeric spellings that parsers disagree on.
    ("decimal", "http://2130706433/", (InvalidUrlError, "ambiguous numeric host")),
    ("octal", "http://0177.0.0.1/", (InvalidUrlError, "ambiguous numeric host")),
    ("hex", "http://0x7f.0.0.1/", (InvalidUrlError, "ambiguous numeric host")),
    ("hex-whole", "http://0x7f000001/", (InvalidUrlError, "ambiguous numeric host")),
    ("short", "http://127.1/", (InvalidUrlError, "ambiguous numeric host")),
    ("leading-zero", "http://010.0.0.1/", (InvalidUrlError, "ambiguous numeric host")),
    ("trailing-dot-ip", "http://127.0.0.1./", (InvalidUrlError, "ambiguous numeric host")),
    ("five-parts", "http://1.2.3.4.5/", (InvalidUrlError, "ambiguous numeric host")),
    # Schemes, userinfo, hosts, ports.
    ("ftp", "ftp://10.0.0.5/file", (InvalidUrlError, "scheme ftp is not allowed")),
    ("file", "file:///etc/passwd", (InvalidUrlError, "scheme file is not allowed")),
    ("javascript", "javascript:alert(1)", (InvalidUrlError, "scheme javascript is not allowed")),
    ("gopher", "gopher://10.0.0.5/", (InvalidUrlError, "scheme gopher is not allowed")),
    ("no-scheme", "10.0.0.5/live", (InvalidUrlError, "scheme is missing")),
    ("userinfo", "rtsp://admin:pw@10.0.0.5/", (InvalidUrlError, "credentials in URL")),
    ("userinfo-trick", "http://10.0.0.1@203.0.113.9/", (InvalidUrlError, "credentials in URL")),
    ("empty-userinfo", "http://:@10.0.0.5/", (InvalidUrlError, "credentials in URL")),
    ("empty-host", "http:///snap.jpg", (InvalidUrlError, "host is missing")),
    ("port-zero", "http://10.0.0.5:0/", (InvalidUrlError, "port 0 is out of range")),
    ("port-too-big", "http://10.0.0.5:65536/", (InvalidUrlError, "malformed url")),
    ("port-not-number", "http://10.0.0.5:http/", (InvalidUrlError, "malformed url")),
    ("space-in-host", "http://cam lan/", (InvalidUrlError, "invalid host name")),
    ("encoded-slash-host", "http://cam%2flan/", (InvalidUrlError, "invalid host name")),
    ("zone-on-loopback", "http://[::1%lo]/", (InvalidUrlError, "zone id on a non link-local")),
    ("empty-zone", "http://[fe80::1%25]/", (InvalidUrlError, "invalid zone id")),
    ("bad-ipv6", "http://[fe80::zz]/", (InvalidUrlError, "invalid ipv6 address")),
    # "xn--" labels that are not valid punycode/IDNA (yarl raises UnicodeError on .host).
    ("idna-empty", "http://xn--/", (InvalidUrlError, "invalid host name")),
    ("idna-empty-rtsp", "rtsp://xn--:554/s", (InvalidUrlError, "invalid host name")),
    ("idna-upper", "http://XN--/", (InvalidUrlError, "invalid host name")),
    ("idna-bad-punycode", "http://xn--a.lan/", (InvalidUrlError, "invalid host name")),
    ("idna-no-round-trip", "http://xn--zz-.lan/", (InvalidUrlError, "invalid host name")),
    ("idna-last-label", "http://cam.xn--/", (InvalidUrlError, "invalid host name")),
    ("idna-punycode-ok", "http://xn--bcher-kva.lan/", (OK, "10.9.9.9")),
    # Host names through the fake resolver.
    ("name-private", "rtsp://cam.lan/live", (OK, "192.168.1.20")),
    ("name-uppercase", "rtsp://CAM.Lan/live", (OK, "192.168.1.20")),
    ("name-first-address-pinned", "rtsp://cam6.lan/live", (OK, "fd12:3456::20")),
    ("name-mapped", "rtsp://mapped.lan/live", (OK, "10.1.2.3")),
    ("name-idna", "http://bücher.lan/", (OK, "10.9.9.9")),
    ("name-public", "http://public.example/", (NotLocalError, "public address 203.0.113.9")),
    ("name-mixed", "http://mixed.lan/", (NotLocalError, "public address 203.0.113.10")),
    ("name-metadata", "http://metadata.lan/", (NotLocalError, "cloud metadata address")),
    ("name-unknown", "http://nowhere.lan/", (CannotConnectError, "nowhere.lan")),
    ("name-garbage-answer", "http://garbage.lan/", (CannotConnectError, "invalid address")),
    ("name-no-answer", "http://empty.lan/", (CannotConnectError, "has no address")),
    ("name-duplicates", "http://dup.lan/", (OK, "10.0.0.7")),
]


@pytest.mark.parametrize(
    ("url", "expected"),
    [pytest.param(url, expected, id=case_id) for case_id, url, expected in CHECK_TABLE],
)
async def test_check_table(policy: NetPolicy, url: str, expected: tuple[object, str]) -> None:
    """Every URL in the table is allowed and pinned, or refused with the right reason."""
    outcome, detail = expected
    if outcome == OK:
        target = await policy.check(url)
        assert target.address == ip_address(detail)
        assert target.url.user is None
        assert target.url.fragment == ""
        return
    assert isinstance(outcome, type)
    with pytest.raises(outcome) as excinfo:
        await policy.check(url)
    assert detail in str(excinfo.value)


async def test_a_network_around_the_metadata_address_does_not_open_it(
    resolver: FakeResolver,
) -> None:
    """Adding 169.254.0.0/16 allows link-local cameras, not the metadata service in it."""
    policy = NetPolicy(extra_networks=parse_networks("169.254.0.0/16"), resolver=resolver)
    for url in ("http://169.254.169.254/latest/", "http://metadata.lan/"):
        with pytest.raises(NotLocalError, match="cloud metadata address"):
            await policy.check(url)
    assert (await policy.check("http://169.254.10.20/")).address == ip_address("169.254.10.20")


@pytest.mark.parametrize(
    ("url", "extra", "expected"),
    [
        pytest.param("rtsp://100.64.1.2/", "100.64.0.0/10", "100.64.1.2", id="cgnat-extra"),
        pytest.param("rtsp://198.51.100.7/", "198.51.100.0/24", "198.51.100.7", id="vpn-public"),
        pytest.param("rtsp://[2001:db8::7]/", "2001:db8::/32", "2001:db8::7", id="vpn-v6"),
        pytest.param(
            "http://169.254.169.254/", "169.254.169.254/32", "169.254.169.254", id="metadata-named"
        ),
        pytest.param("http://mixed.lan/", "203.0.113.0/24", "192.168.1.22", id="mixed-extra"),
    ],
)
async def test_extra_networks_allow(
    resolver: FakeResolver, url: str, extra: str, expected: str
) -> None:
    """User extra networks allow public VPN ranges, CGNAT and named metadata addresses."""
    policy = NetPolicy(extra_networks=parse_networks(extra), resolver=resolver)
    target = await policy.check(url)
    assert target.address == ip_address(expected)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://0.0.0.0/", "unspecified", id="unspecified"),
        pytest.param("rtsp://224.0.0.1/", "multicast", id="multicast"),
        pytest.param("http://255.255.255.255/", "broadcast", id="broadcast"),
    ],
)
async def test_always_refused_even_in_extra_networks(
    resolver: FakeResolver, url: str, reason: str
) -> None:
    """Unspecified, multicast and broadcast stay refused whatever the user adds."""
    extra = parse_networks("0.0.0.0/8, 224.0.0.0/8, 255.0.0.0/8")
    policy = NetPolicy(extra_networks=extra, resolver=resolver)
    with pytest.raises(NotLocalError, match=reason):
        await policy.check(url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", (), id="empty"),
        pytest.param("10.8.0.0/24", (IPv4Network("10.8.0.0/24"),), id="one"),
        pytest.param(
            "10.8.0.0/24, 100.64.0.0/10\n2001:db8::/32  192.0.2.7",
            (
                IPv4Network("10.8.0.0/24"),
                IPv4Network("100.64.0.0/10"),
                IPv6Network("2001:db8::/32"),
                IPv4Network("192.0.2.7/32"),
            ),
            id="mixed-separators",
        ),
        pytest.param("192.168.5.7/24", (IPv4Network("192.168.5.0/24"),), id="host-bits"),
        pytest.param("10.0.0.0/8,10.0.0.0/8", (IPv4Network("10.0.0.0/8"),), id="deduplicated"),
    ],
)
def test_parse_networks(text: str, expected: tuple[IPv4Network | IPv6Network, ...]) -> None:
    """Comma, space and newline separated CIDRs parse into networks."""
    assert parse_networks(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("0.0.0.0/0", "too broad", id="all-v4"),
        pytest.param("::/0", "too broad", id="all-v6"),
        pytest.param("10.0.0.0/7", "too broad", id="short-v4"),
        pytest.param("2000::/15", "too broad", id="short-v6"),
        pytest.param("10.0.0.0/33", "not a network", id="bad-prefix"),
        pytest.param("cam.lan", "not a network", id="hostname"),
        pytest.param("10.0.0.0/24; 10.1.0.0/24", "not a network", id="semicolon"),
    ],
)
def test_parse_networks_rejects(text: str, message: str) -> None:
    """Bad or switch-everything-on networks raise ValueError with a clear message."""
    with pytest.raises(ValueError, match=message):
        parse_networks(text)


def test_policy_rejects_too_broad_network() -> None:
    """A NetPolicy built directly cannot be opened to the whole Internet either."""
    with pytest.raises(ValueError, match="too broad"):
        NetPolicy(extra_networks=(IPv4Network("0.0.0.0/0"),))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        pytest.param("192.168.0.1", None, id="lan"),
        pytest.param(IPv4Address("10.1.1.1"), None, id="object"),
        pytest.param("fe80::1%eth0", None, id="scoped"),
        pytest.param("::ffff:192.168.0.1", None, id="mapped-lan"),
        pytest.param("172.32.0.1", "public address 172.32.0.1", id="just-outside-172"),
        pytest.param("fd00:ec2::254", "cloud metadata address fd00:ec2::254", id="metadata-v6"),
        pytest.param(IPv6Address("2001:db8::1"), "public address 2001:db8::1", id="v6-object"),
    ],
)
def test_classify(policy: NetPolicy, address: str | IPv4Address, reason: str | None) -> None:
    """classify returns None for allowed addresses, else a reason naming the address."""
    assert policy.classify(address) == reason


async def test_hostname_resolved_once_with_port(policy: NetPolicy, resolver: FakeResolver) -> None:
    """A host name is resolved exactly once, with the effective port."""
    target = await policy.check("rtsps://cam.lan/live")
    assert resolver.calls == [("cam.lan", 322)]
    assert target.host == "cam.lan"
    assert target.port == 322


async def test_literal_address_is_not_resolved(policy: NetPolicy, resolver: FakeResolver) -> None:
    """An IP literal never reaches the resolver."""
    await policy.check("rtsp://10.0.0.5/live")
    await policy.check("rtsp://[fd00::5]/live")
    assert resolver.calls == []


@pytest.mark.parametrize(
    ("url", "port"),
    [
        pytest.param("rtsp://10.0.0.5/", 554, id="rtsp"),
        pytest.param("rtsps://10.0.0.5/", 322, id="rtsps"),
        pytest.param("http://10.0.0.5/", 80, id="http"),
        pytest.param("https://10.0.0.5/", 443, id="https"),
        pytest.param("rtsp://10.0.0.5:8554/", 8554, id="explicit"),
        pytest.param("http://10.0.0.5:65535/", 65535, id="max"),
    ],
)
async def test_default_ports(policy: NetPolicy, url: str, port: int) -> None:
    """Targets carry the explicit port or the scheme's default."""
    assert (await policy.check(url)).port == port


async def test_schemes_argument_restricts(policy: NetPolicy) -> None:
    """A caller can narrow the schemes, but never widen them past ALLOWED_SCHEMES."""
    with pytest.raises(InvalidUrlError, match="scheme rtsp is not allowed"):
        await policy.check("rtsp://10.0.0.5/", schemes=frozenset({"http", "https"}))
    with pytest.raises(InvalidUrlError, match="scheme ftp is not allowed"):
        await policy.check("ftp://10.0.0.5/", schemes=ALLOWED_SCHEMES | {"ftp"})


async def test_check_accepts_yarl_url(policy: NetPolicy) -> None:
    """check takes a yarl.URL as well as a string."""
    target = await policy.check(yarl.URL("http://cam.lan:8080/a?b=1"))
    assert target.address == IPv4Address("192.168.1.20")
    assert str(target.url) == "http://cam.lan:8080/a?b=1"


async def test_resolver_timeout() -> None:
    """A resolver that never answers costs the resolve timeout, then CameraTimeoutError."""

    async def hanging(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return []

    policy = NetPolicy(resolver=hanging, resolve_timeout=0.05)
    with pytest.raises(CameraTimeoutError, match=r"slow\.lan"):
        await policy.check("http://slow.lan/")


async def test_pinned_url_and_target(policy: NetPolicy) -> None:
    """The pinned URL aims at the checked address and percent-encodes credentials."""
    target = await policy.check("rtsp://cam.lan:8554/live/ch0?profile=1#x")
    assert target.pinned_url() == "rtsp://192.168.1.20:8554/live/ch0?profile=1"
    assert (
        target.pinned_url("ad@min", "p:ss/w@rd %")
        == "rtsp://ad%40min:p%3Ass%2Fw%40rd%20%25@192.168.1.20:8554/live/ch0?profile=1"
    )
    # A blank password keeps its colon (FFmpeg answers no challenge without one).
    assert target.pinned_url("viewer") == "rtsp://viewer:@192.168.1.20:8554/live/ch0?profile=1"
    v6 = await policy.check("rtsp://cam6.lan/live")
    assert v6.pinned_url("u", "p") == "rtsp://u:p@[fd12:3456::20]/live"
    zoned = await policy.check("rtsp://[fe80::1%25eth0]/live")
    assert zoned.pinned_url() == "rtsp://[fe80::1%eth0]/live"


async def test_target_for_another_url_of_the_same_host(
    policy: NetPolicy, resolver: FakeResolver
) -> None:
    """A checked host's address serves its other URLs without a second lookup."""
    checked = await policy.check("rtsp://cam.lan/main")
    sub = checked.for_url("rtsp://CAM.lan:8554/sub?profile=2#x")
    assert sub is not None
    assert sub.pinned_url("u", "p") == "rtsp://u:p@192.168.1.20:8554/sub?profile=2"
    assert (sub.host, sub.port, sub.address) == ("cam.lan", 8554, checked.address)
    assert checked.for_url("rtsp://cam.lan/main") == checked
    assert resolver.calls == [("cam.lan", 554)]  # the one lookup of the check
    # Another host, credentials in the URL, or a scheme without a port: no target.
    assert checked.for_url("rtsp://other.lan/main") is None
    assert checked.for_url("rtsp://192.168.1.20/main") is None
    assert checked.for_url("rtsp://u:p@cam.lan/main") is None
    assert checked.for_url("ftp://cam.lan/main") is None
    assert checked.for_url("rtsp://xn--/main") is None  # not valid IDNA: no host of ours


async def test_target_repr_hides_query_values(policy: NetPolicy) -> None:
    """Logging a Target shows no query value."""
    target = await policy.check("http://cam.lan/snap.cgi?user=admin&pwd=hunter2")
    assert "hunter2" not in repr(target)
    assert "admin" not in repr(target)
    assert isinstance(target, Target)


@pytest.mark.parametrize(
    ("typed", "url", "username", "password"),
    [
        pytest.param("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live", None, None, id="none"),
        pytest.param(
            "rtsp://admin:secret@10.0.0.5/live",
            "rtsp://10.0.0.5/live",
            "admin",
            "secret",
            id="both",
        ),
        pytest.param("rtsp://admin@10.0.0.5/", "rtsp://10.0.0.5/", "admin", None, id="user-only"),
        pytest.param(
            "rtsp://ad%40min:p%3Aw%2F@10.0.0.5/", "rtsp://10.0.0.5/", "ad@min", "p:w/", id="decoded"
        ),
        pytest.param(
            "rtsp://admin:p@ss@10.0.0.5/", "rtsp://10.0.0.5/", "admin", "p@ss", id="raw-at-in-pw"
        ),
        pytest.param(
            "http://10.0.0.1@203.0.113.9/", "http://203.0.113.9/", "10.0.0.1", None, id="ip-as-user"
        ),
    ],
)
def test_split_credentials(
    typed: str, url: str, username: str | None, password: str | None
) -> None:
    """Userinfo is stripped and decoded; the host is what follows the last '@'."""
    assert split_credentials(typed) == (url, username, password)


async def test_userinfo_trick_refused_after_split(policy: NetPolicy) -> None:
    """http://10.0.0.1@203.0.113.9/ is a public host with a misleading username."""
    url, username, _ = split_credentials("http://10.0.0.1@203.0.113.9/")
    assert username == "10.0.0.1"
    with pytest.raises(NotLocalError, match=r"public address 203\.0\.113\.9"):
        await policy.check(url)


def test_split_credentials_malformed() -> None:
    """A URL yarl cannot parse raises InvalidUrlError."""
    with pytest.raises(InvalidUrlError):
        split_credentials("http://[::1/")


SECRET_URLS = [
    "rtsp://admin:Secr3tPw@cam.lan:554/live?user=admin2&pwd=Secr3tQ&channel=1",
    "http://viewer:Secr3tPw@10.0.0.5/snap.cgi?token=Secr3tT&sig=Secr3tS&res=hi",
    "http://10.0.0.5/cgi-bin/snapshot.cgi?loginuse=admin&loginpas=Secr3tL",
    "http://10.0.0.5/snap.jpg?Secr3tBare",
    "rtsp://10.0.0.5/user=admin&password=Secr3tP&channel=1&stream=0.sdp",
    "https://[fd00::5]:8443/snap?api_key=Secr3tK#Secr3tF",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_display_url_hides_secrets(url: str) -> None:
    """display_url keeps scheme, host and path but no userinfo or query value."""
    shown = display_url(url)
    assert "Secr3t" not in shown
    assert "@" not in shown
    assert shown.startswith(url.split(":", 1)[0] + "://")


@pytest.mark.parametrize("url", SECRET_URLS)
def test_redact_url_hides_host_and_secrets(url: str) -> None:
    """redact_url keeps only scheme and path; host, port, userinfo, values are redacted."""
    shown = redact_url(url)
    assert "Secr3t" not in shown
    assert "cam.lan" not in shown
    assert "10.0.0.5" not in shown
    assert "fd00" not in shown
    assert ":554" not in shown
    assert "**REDACTED**" in shown


def test_display_and_redact_examples() -> None:
    """Exact renderings of a typical camera URL."""
    url = "rtsp://admin:pw@cam.lan:554/live/ch0?user=admin&pwd=x&channel=1"
    assert display_url(url) == "rtsp://cam.lan:554/live/ch0?user=***&pwd=***&channel=***"
    assert redact_url(url) == (
        "rtsp://**REDACTED**@**REDACTED**:**REDACTED**/live/ch0"
        "?user=**REDACTED**&pwd=**REDACTED**&channel=**REDACTED**"
    )
    assert display_url("http://10.0.0.5/snap.jpg") == "http://10.0.0.5/snap.jpg"
    assert redact_url("http://10.0.0.5/snap.jpg") == "http://**REDACTED**/snap.jpg"
    assert display_url(yarl.URL("http://[::1]:8080/a?b=1")) == "http://[::1]:8080/a?b=***"


def test_display_url_never_raises() -> None:
    """A malformed URL renders as a placeholder, not an exception with the text in it."""
    assert display_url("http://[::1/?pwd=Secr3t") == "<invalid url>"
    assert redact_url("http://[::1/?pwd=Secr3t") == "<invalid url>"


MALFORMED_IDNA: list[str] = [
    "http://xn--/",
    "rtsp://xn--:554/s",
    "http://xn--a.lan/",
    "http://xn--zz-.lan/snap.jpg?pwd=Secr3t",
    "rtsps://cam.xn--:322/live",
]


@pytest.mark.parametrize("url", MALFORMED_IDNA)
async def test_malformed_idna_host_is_invalid_url(
    policy: NetPolicy, resolver: FakeResolver, url: str
) -> None:
    """A bad "xn--" host is InvalidUrlError (str or yarl.URL), never a UnicodeError."""
    for value in (url, yarl.URL(url)):
        with pytest.raises(InvalidUrlError, match="invalid host name"):
            await policy.check(value)
    assert resolver.calls == []  # refused before any lookup


@pytest.mark.parametrize("url", MALFORMED_IDNA)
def test_malformed_idna_host_renders(url: str) -> None:
    """Messages and diagnostics can still show such a URL: the host as written, no secret."""
    raw_host = yarl.URL(url).raw_host or ""
    assert raw_host in display_url(url)
    assert "Secr3t" not in display_url(url)
    assert redact_url(url).startswith(f"{yarl.URL(url).scheme}://**REDACTED**")
    assert raw_host not in redact_url(url)
    assert normalized_identity(url).startswith("url_")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("rtsp://Cam.local/x", "rtsp://cam.local:554/x", id="case-and-port"),
        pytest.param("RTSP://cam.local/x", "rtsp://cam.local/x", id="scheme-case"),
        pytest.param("http://10.0.0.5/x", "http://10.0.0.5:80/x", id="http-port"),
        pytest.param("rtsp://admin:a@cam.local/x", "rtsp://root:b@cam.local/x", id="userinfo"),
        pytest.param("rtsp://cam.local/x?b=2&a=1", "rtsp://cam.local/x?a=1&b=2", id="query-order"),
        pytest.param(
            "rtsp://cam.local/x?a=1&pwd=one&User=u", "rtsp://cam.local/x?a=1&PWD=two", id="creds"
        ),
        pytest.param("rtsp://cam.local", "rtsp://cam.local/", id="empty-path"),
        pytest.param("rtsp://[0:0::1]/x", "rtsp://[::1]/x", id="ipv6-spelling"),
        pytest.param("rtsp://cam.local/x#a", "rtsp://cam.local/x", id="fragment"),
        pytest.param("http://bücher.lan/x", "http://xn--bcher-kva.lan/x", id="idna"),
        pytest.param(
            "rtsp://10.0.0.5/user=admin&password=a&channel=1.sdp",
            "rtsp://10.0.0.5/user=root&password=b&channel=1.sdp",
            id="path-creds",
        ),
    ],
)
def test_normalized_identity_equal(first: str, second: str) -> None:
    """Equivalent spellings of one camera give one identity."""
    assert normalized_identity(first) == normalized_identity(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("rtsp://cam.local/x", "rtsp://cam.local/y", id="path"),
        pytest.param("rtsp://cam.local/x", "rtsp://cam.local:8554/x", id="port"),
        pytest.param("rtsp://cam.local/x", "rtsps://cam.local/x", id="scheme"),
        pytest.param("rtsp://cam.local/x", "rtsp://cam2.local/x", id="host"),
        pytest.param("rtsp://cam.local/x?ch=1", "rtsp://cam.local/x?ch=2", id="channel"),
        pytest.param("rtsp://cam.local/X", "rtsp://cam.local/x", id="path-case"),
    ],
)
def test_normalized_identity_differs(first: str, second: str) -> None:
    """Different streams get different identities."""
    assert normalized_identity(first) != normalized_identity(second)


@pytest.mark.parametrize("url", SECRET_URLS)
def test_normalized_identity_is_opaque(url: str) -> None:
    """The identity is a fixed-size hash: no secret, host or path survives."""
    identity = normalized_identity(url)
    assert identity.startswith("url_")
    assert len(identity) == 28
    assert all(c in "0123456789abcdef" for c in identity[4:])
    assert "Secr3t" not in identity


@pytest.mark.parametrize("url", ["not a url", "rtsp://[fe80::zz]/x", "http://[::1/"])
def test_normalized_identity_malformed(url: str) -> None:
    """An unusable URL raises InvalidUrlError."""
    with pytest.raises(InvalidUrlError):
        normalized_identity(url)


def test_relative_urls_render_path_only() -> None:
    """A relative reference renders as its masked path and query."""
    assert display_url("/snap.cgi?pwd=Secr3t") == "/snap.cgi?pwd=***"
    assert redact_url("/snap.cgi?pwd=Secr3t") == "/snap.cgi?pwd=**REDACTED**"


async def test_system_resolver_localhost(socket_enabled: None) -> None:
    """Without an injected resolver, getaddrinfo is used; localhost stays on this machine."""
    target = await NetPolicy().check("http://localhost:8080/")
    assert target.address.is_loopback
    assert target.host == "localhost"


async def test_errors_are_core_errors(policy: NetPolicy) -> None:
    """Everything check raises is a LocalCamError (the only kind core lets escape)."""
    for _, url, (outcome, _) in CHECK_TABLE:
        if outcome == OK:
            continue
        with pytest.raises(LocalCamError):
            await policy.check(url)


@pytest.mark.parametrize(
    ("extra", "url"),
    [
        ("64:ff9b::/96", "http://[64:ff9b::808:808]/"),  # NAT64: 8.8.8.8
        ("64:ff9b::/100", "http://[64:ff9b::808:808]/"),
        ("64:ff9b:1::/48", "http://[64:ff9b:1::808:808]/"),
        ("2002::/16", "http://[2002:808:808::1]/"),  # 6to4: 8.8.8.8
    ],
)
async def test_an_allowed_network_cannot_carry_all_of_ipv4(
    extra: str, url: str, resolver: FakeResolver
) -> None:
    """A NAT64 or 6to4 prefix is every IPv4 host: as an extra network it is too broad.

    The option widens the policy, never to everything: all of IPv4 typed as
    0.0.0.0/0 is refused, and so is the IPv6 prefix that reaches it through
    a NAT64 gateway or a 6to4 relay. A part of one no wider than a /8 of
    IPv4 may be allowed, like any other deliberate network.
    """
    with pytest.raises(ValueError, match="too broad"):
        parse_networks(extra)
    with pytest.raises(NotLocalError):
        await NetPolicy(resolver=resolver).check(url)
    (narrow,) = parse_networks("64:ff9b::c0a8:100/120")  # 192.168.1.0/24 through NAT64
    policy = NetPolicy(extra_networks=(narrow,), resolver=resolver)
    assert (await policy.check("http://[64:ff9b::c0a8:105]/")).address == narrow[5]


@pytest.mark.parametrize(
    ("extra", "url"),
    [
        ("100.64.0.0/10", "http://100.100.100.200/latest/meta-data/"),  # Alibaba Cloud
        ("", "http://169.254.170.2/v2/credentials/x"),  # AWS ECS task credentials
        ("", "http://169.254.170.23/v1/credentials"),  # AWS EKS Pod Identity
        ("", "http://[fd00:ec2::23]/v1/credentials"),
    ],
)
async def test_cloud_credential_endpoints_are_refused(
    extra: str, url: str, resolver: FakeResolver
) -> None:
    """Like 169.254.169.254, every cloud metadata or credential endpoint is refused.

    Also inside a network the user allows (100.64.0.0/10, the CGNAT range of
    VPNs like Tailscale, holds Alibaba Cloud's metadata service).
    """
    policy = NetPolicy(extra_networks=parse_networks(extra), resolver=resolver)
    with pytest.raises(NotLocalError, match="metadata"):
        await policy.check(url)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # reaches 127.0.0.1: an mDNS reply may spell it so
        ("192.168.1.5", False),
        ("::ffff:192.168.1.5", False),
        ("localhost", False),  # a name is not judged here
        ("", False),
        (None, False),
    ],
)
def test_loopback_literals_include_the_ipv4_mapped_spelling(
    host: str | None, loopback: bool
) -> None:
    """is_loopback_literal: what the zeroconf follow guard refuses, mapped addresses included."""
    assert is_loopback_literal(host) is loopback
