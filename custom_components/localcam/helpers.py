"""Glue helpers: build core objects from an entry; translate core errors."""

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import ip_address
import math
from typing import Any, Final

from homeassistant.config_entries import SOURCE_IGNORE, ConfigEntry, ConfigEntryState
from homeassistant.const import CONF_HOST, CONF_PASSWORD, CONF_PORT, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.selector import TextSelector, TextSelectorConfig, TextSelectorType
from homeassistant.util.ulid import ulid_now
import probatio
import yarl

from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_IDENTITY,
    CONF_MAIN_PROFILE,
    CONF_ONVIF,
    CONF_PROFILES,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DEFAULT_RTSP_TRANSPORT,
    DEFAULT_SNAPSHOT_MAX_AGE,
    DOMAIN,
    MAIN_PROFILE,
    MAX_SNAPSHOT_MAX_AGE,
    MIN_SNAPSHOT_MAX_AGE,
    OTHER_STREAM_TRIES,
    PROBE_TIMEOUT,
)
from .core.errors import InvalidNetworksError, LocalCamError
from .core.identity import Identity, neighbour_mac, normalize_mac, touch
from .core.models import CameraSource, RtspTransport
from .core.netpolicy import (
    NetPolicy,
    normalized_identity,
    parse_networks,
    stream_channel,
    system_resolve,
)
from .core.onvif import OnvifDevice, read_device
from .core.snapshot import STREAM_SCHEMES
from .core.snapshot_cache import CameraUnloadedError
from .core.wsdiscovery import DiscoveredDevice


def policy_from_options(options: Mapping[str, Any]) -> NetPolicy:
    """Build the LAN policy, with the networks the user added in the options.

    Raises InvalidNetworksError for stored networks the options form would
    refuse (saved by an older release, or edited by hand): every caller,
    setup and each flow, reports it translated instead of crashing.
    """
    stored = options.get(CONF_ALLOWED_NETWORKS) or ""
    if not isinstance(stored, str):
        raise InvalidNetworksError(f"the stored networks are not text ({type(stored).__name__})")
    try:
        networks = parse_networks(stored)
    except ValueError as err:
        raise InvalidNetworksError(str(err)) from None
    return NetPolicy(extra_networks=networks)


def rtsp_transport(options: Mapping[str, Any]) -> RtspTransport:
    """The entry's RTSP transport; the default where the stored one is unknown.

    As for max age: a value the options form would not save (edited by hand,
    null) must not stop the camera setting up.
    """
    try:
        return RtspTransport(options.get(CONF_RTSP_TRANSPORT, DEFAULT_RTSP_TRANSPORT))
    except ValueError:
        return RtspTransport(DEFAULT_RTSP_TRANSPORT)


def snapshot_max_age(options: Mapping[str, Any]) -> float:
    """The entry's snapshot max age; the default where the stored one is unusable.

    The options form refuses such values; one stored before (NaN is saved as
    null) or edited by hand must not stop the camera setting up, nor make
    every still too old.
    """
    value = options.get(CONF_SNAPSHOT_MAX_AGE)
    if (
        isinstance(value, int | float)
        and math.isfinite(value)
        and MIN_SNAPSHOT_MAX_AGE <= value <= MAX_SNAPSHOT_MAX_AGE
    ):
        return float(value)
    return DEFAULT_SNAPSHOT_MAX_AGE


def entry_unique_id(
    entries: Iterable[ConfigEntry],
    identity: Identity,
    stream_url: str,
    *,
    onvif: bool = False,
    exclude: ConfigEntry | None = None,
) -> tuple[str | None, int]:
    """The unique id of a camera entry, and how many entries its device has already.

    None for the id when the camera is configured already. A device added
    over ONVIF has one entry, which holds all its profiles. Added by URL, a
    device may have one entry per stream (an NVR's channels, a restream's
    ports): the first is keyed by the device's identity, each other one by
    identity and stream (``stream_channel``, which leaves out the host, so
    the streams stay apart when the device moves). The same stream twice,
    or a stream of a device configured over ONVIF, is configured already;
    so is a new stream at another address than the device's other streams
    (two devices behind a bridge that rewrites MACs look like one device:
    each would be moved onto the other's address when one of them moves).
    A camera without identity is keyed by its URL. ``exclude`` is the entry
    being changed (reconfigure, repair), which may move to a new address;
    an id that any other entry in ``entries`` holds, an ignored one too, is
    taken. The entry's camera id, which keys its frames, is chosen apart
    (``new_camera_id``): a unique id may change, a camera id never.
    """
    others = [entry for entry in entries if entry is not exclude]
    device = _device_entries(others, identity)
    unique_id = _unique_id(identity.key, stream_url, device, onvif=onvif, adding=exclude is None)
    if unique_id is not None and any(entry.unique_id == unique_id for entry in others):
        return None, len(device)
    return unique_id, len(device)


def _device_entries(entries: Iterable[ConfigEntry], identity: Identity) -> list[ConfigEntry]:
    """The entries (not ignored ones) of the device ``identity`` names."""
    if identity.key is None:
        return []
    return [
        entry
        for entry in entries
        if entry.source != SOURCE_IGNORE
        and (
            entry.unique_id == identity.key
            or Identity.from_dict(entry.data.get(CONF_IDENTITY)).key == identity.key
        )
    ]


def device_entry_elsewhere(
    entries: Iterable[ConfigEntry], identity: Identity, stream_url: str
) -> ConfigEntry | None:
    """A device's stream entry, when a stream being added names another address.

    ``entry_unique_id`` refuses that stream: one device's streams (added by
    URL) share one address. This is an entry at that address, for the form:
    the same camera by another name (a host name and its IP count as two), a
    camera that moved (it is followed by itself), or another camera behind a
    repeater that gives both its own MAC. None where a device configured
    over ONVIF holds the streams, or one of them is at this very address.
    """
    device = _device_entries(entries, identity)
    if any(entry.data.get(CONF_ONVIF) or CONF_STREAM_URL not in entry.data for entry in device):
        return None
    host = url_host(stream_url)
    if not device or any(url_host(entry.data[CONF_STREAM_URL]) == host for entry in device):
        return None
    return min(device, key=lambda entry: url_host(entry.data[CONF_STREAM_URL]))


def _unique_id(
    key: str | None, stream_url: str, device: list[ConfigEntry], *, onvif: bool, adding: bool
) -> str | None:
    """``entry_unique_id``'s choice among the device's entries, before the taken check."""
    if key is None:
        return normalized_identity(stream_url)
    if onvif:
        return None if device else key
    channel = stream_channel(stream_url)
    host = url_host(stream_url)
    if any(
        entry.data.get(CONF_ONVIF)
        or CONF_STREAM_URL not in entry.data
        or stream_channel(entry.data[CONF_STREAM_URL]) == channel
        or (adding and url_host(entry.data[CONF_STREAM_URL]) != host)
        for entry in device
    ):
        return None
    if any(entry.unique_id == key for entry in device):
        return f"{key}_{channel}"
    return key


def new_camera_id(entries: Iterable[ConfigEntry], wanted: str) -> str:
    """A camera id no entry holds: ``wanted`` (the new unique id) where it is free.

    An entry keeps its camera id when its unique id changes (reconfigure,
    a repaired camera), so a new entry's unique id may be an older entry's
    camera id. Two entries sharing one would share their frames' key (and
    the second would get no entity), so the new one gets a ULID suffix.
    """
    taken = {entry.data.get(CONF_CAMERA_ID) for entry in entries}
    return wanted if wanted not in taken else f"{wanted}_{ulid_now().lower()}"


def url_host(url: str) -> str:
    """A URL's host as yarl spells it (lower case, IPv6 compressed; empty when none)."""
    return yarl.URL(url).host or ""


def frame_key(camera_id: str, profile: str) -> str:
    """The key every frame of one stream carries: the entity's unique id."""
    return f"{camera_id}_{profile}"


def sources_from_entry(
    data: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, CameraSource]:
    """Build one camera source per stream (profile) from entry data and options.

    A camera added by URL has one stream, MAIN_PROFILE; an ONVIF camera has
    one per media profile. Each source carries its own frame key, so a
    profile's cache can never serve another profile's (or camera's) frames.
    """
    camera_id = data[CONF_CAMERA_ID]
    common: dict[str, Any] = {
        "username": data.get(CONF_USERNAME) or None,
        "password": data.get(CONF_PASSWORD) or None,
        "verify_ssl": data.get(CONF_VERIFY_SSL, True),
        "rtsp_transport": rtsp_transport(options),
        "identity": Identity.from_dict(data.get(CONF_IDENTITY)),
    }
    if not data.get(CONF_ONVIF):
        return {
            MAIN_PROFILE: CameraSource(
                camera_id=frame_key(camera_id, MAIN_PROFILE),
                stream_url=data[CONF_STREAM_URL],
                snapshot_url=data.get(CONF_SNAPSHOT_URL) or None,
                **common,
            )
        }
    return {
        profile["token"]: CameraSource(
            camera_id=frame_key(camera_id, profile["token"]),
            stream_url=profile["stream_url"],
            snapshot_url=profile.get("snapshot_url") or None,
            **common,
        )
        for profile in data[CONF_PROFILES]
    }


def main_profile(data: Mapping[str, Any]) -> str:
    """The profile whose entity is enabled by default and health-checked."""
    return str(data.get(CONF_MAIN_PROFILE) or MAIN_PROFILE)


def translated_error(err: LocalCamError) -> HomeAssistantError:
    """Turn a core error into a translated HomeAssistantError.

    This is the one place core errors cross into Home Assistant; placeholders
    come from core.errors, which never puts credentials or URLs in them.
    """
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key=err.translation_key,
        translation_placeholders=err.placeholders,
    )


def still_error_status(err: HomeAssistantError) -> HTTPStatus:
    """The HTTP status of a failed still: the camera's fault (502, 504) or an unload's (503).

    A request caught by the entry's unload (reload, removal) is 503: the
    camera did not fail, and a retry reaches the reloaded entity. The
    snapshot cache guarantees such a request gets an error, never a
    CancelledError that would drop the connection.
    """
    if isinstance(err.__cause__, CameraUnloadedError):
        return HTTPStatus.SERVICE_UNAVAILABLE
    if err.translation_key == "timeout":
        return HTTPStatus.GATEWAY_TIMEOUT
    return HTTPStatus.BAD_GATEWAY


@dataclass(frozen=True, slots=True)
class Observation:
    """Who answers at an address: the MAC seen on the link, and the device's identity.

    ``identity`` is what pins an entry: an ONVIF device's own report (MAC,
    serial, UUID), or for a camera added by URL the link's MAC.
    """

    link_mac: str | None
    identity: Identity
    # What an ONVIF device says it is (manufacturer, model, firmware), as
    # the config flow stores it; None for a camera added by URL.
    device_info: dict[str, str | None] | None = None


def entry_is_running(entry: ConfigEntry[Any]) -> bool:
    """Whether an entry is setting up or loaded: not unloading, unloaded or removed.

    Work that outlived its entry's unload (a health check, a cast starting)
    checks this before it leaves anything behind for the entry.
    """
    return entry.state in (ConfigEntryState.SETUP_IN_PROGRESS, ConfigEntryState.LOADED)


async def async_link_mac(
    hass: HomeAssistant, data: Mapping[str, Any], options: Mapping[str, Any]
) -> str | None:
    """The MAC the link shows answering at an entry's address now; raise if nothing answers.

    A bare TCP connection (nothing sent, no credential), after which the
    kernel knows the MAC of whatever answered; None off the link (routed,
    loopback, IPv6).
    """
    policy = policy_from_options(options)
    if data.get(CONF_ONVIF):
        host = data_host(data)
        url = f"http://{f'[{host}]' if ':' in host else host}:{int(data[CONF_PORT])}/"
        target = await policy.check(url, schemes=frozenset({"http"}))
    else:
        target = await policy.check(data[CONF_STREAM_URL], schemes=STREAM_SCHEMES)
    await touch(target.address, target.port, PROBE_TIMEOUT)
    return await hass.async_add_executor_job(neighbour_mac, target.address)


async def async_observe_identity(
    hass: HomeAssistant,
    data: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    expected: Identity | None = None,
) -> Observation:
    """Ask the device at an entry's address who it is; raise LocalCamError if it cannot say.

    First a bare TCP connection, which sends nothing: on the same link the
    kernel then knows the device's MAC. A camera added by URL is known by that
    MAC alone, so it is never sent a credential here. An ONVIF camera answers
    with its MAC, serial and UUID, which takes its credentials; with
    ``expected`` (following a camera to a new address), a device is not asked
    at all when the link's MAC already decides. Only a device that may be the
    camera, and cannot be told apart on the link, gets a WS-Security digest.
    """
    mac = await async_link_mac(hass, data, options)
    seen = Observation(link_mac=mac, identity=Identity(mac=mac))
    if not data.get(CONF_ONVIF) or (
        expected is not None and ((expected.mac and mac) or not expected.serial)
    ):
        # A camera added by URL is known by its MAC alone; and where the
        # camera's MAC is known and the link shows one, that settles it
        # (Identity.proves_move) without a word to the device. Without a
        # stored serial, nothing the device says can prove a move either:
        # it is not sent the camera's credentials for nothing.
        return seen
    # Who it is only (information, interfaces, endpoint reference): no
    # profiles, no stream addresses, fewer requests carrying the digest.
    device = await read_entry_device(
        data, policy_from_options(options), timeout=PROBE_TIMEOUT, with_media=False
    )
    # As the entry was configured (config flow): a MAC the link does not show
    # is not the one checked (a repeater, or the camera's other interface).
    return Observation(
        link_mac=mac,
        identity=device.device_identity.as_seen_on(mac),
        device_info={
            "manufacturer": device.manufacturer,
            "model": device.model,
            "firmware": device.firmware,
        },
    )


async def read_entry_device(
    data: Mapping[str, Any], policy: NetPolicy, **options: Any
) -> OnvifDevice:
    """Read the ONVIF device an entry's data names, with its credentials."""
    return await read_device(
        data[CONF_HOST],
        int(data[CONF_PORT]),
        data.get(CONF_USERNAME),
        data.get(CONF_PASSWORD),
        policy=policy,
        **options,
    )


def entry_host(entry: ConfigEntry[Any]) -> str:
    """The host an entry talks to now."""
    return data_host(entry.data)


def other_streams[T](first: T, rest: Iterable[T], url: Callable[[T], str]) -> list[T]:
    """Up to OTHER_STREAM_TRIES of ``rest`` with stream URLs unlike each other and ``first``'s.

    The streams a check or a form tries, in order, when a device refuses its
    main one (an NVR's channel without a camera): each URL once.
    """
    seen = {url(first)}
    found: list[T] = []
    for item in rest:
        if len(found) >= OTHER_STREAM_TRIES:
            break
        if (key := url(item)) not in seen:
            seen.add(key)
            found.append(item)
    return found


def data_host(data: Mapping[str, Any]) -> str:
    """The host an entry's data names: the ONVIF host, else the stream URL's."""
    if data.get(CONF_ONVIF):
        return onvif_host(data[CONF_HOST])
    return yarl.URL(data[CONF_STREAM_URL]).host or ""


def onvif_host(raw: Any) -> str:
    """An ONVIF host as typed: trimmed, an IPv6 literal without its brackets, canonical.

    read_device accepts "[fd00::5]"; stored so, the link checks built
    "http://[[fd00::5]]/" and discovery took it for a host name.
    """
    host = str(raw).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # An address literal as discovery and URLs spell it ("FD00:0::5" is fd00::5).
    with suppress(ValueError):
        return str(ip_address(host))
    return host


def is_ip(host: str) -> bool:
    """Whether a host is an address literal (not a name)."""
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


# How long an announcement waits for configured cameras' host names to resolve.
NAME_LOOKUP_TIMEOUT: Final = 2.0


async def async_host_addresses(host: str) -> frozenset[str]:
    """A configured camera's host, and the addresses a host name resolves to now.

    A camera configured by name is at each of them (announcements and scans
    name addresses). Bounded in time; a name that does not resolve adds none.
    """
    if is_ip(host):
        return frozenset({host})
    try:
        async with asyncio.timeout(NAME_LOOKUP_TIMEOUT):
            answers = await system_resolve(host, 0)
    except OSError, TimeoutError:
        answers = []
    addresses = {host}
    for answer in answers:
        with suppress(ValueError):  # a scoped answer (fe80::1%eth0) names fe80::1
            addresses.add(str(ip_address(answer.partition("%")[0])))
    return frozenset(addresses)


async def async_entries_addresses(entries: Iterable[ConfigEntry[Any]]) -> list[frozenset[str]]:
    """Each entry's host and its addresses (async_host_addresses), looked up side by side.

    All names together take NAME_LOOKUP_TIMEOUT at most, however many. An
    ignored offer's entry configures no camera: none.
    """

    async def addresses(entry: ConfigEntry[Any]) -> frozenset[str]:
        if entry.source == SOURCE_IGNORE:
            return frozenset()
        return await async_host_addresses(entry_host(entry))

    return list(await asyncio.gather(*(addresses(entry) for entry in entries)))


def device_is_configured(
    entry: ConfigEntry[Any], device: DiscoveredDevice, addresses: Collection[str] = ()
) -> bool:
    """Whether a scanned device is the camera an entry configures.

    It answers at the entry's address (its host, or one of ``addresses``:
    those its host name resolves to) and nothing it announces says it is
    another device; or it announces the entry's MAC. A UUID alone at another
    address does not tell: cheap cameras share firmware-default UUIDs, and
    such a second camera must be listed (a camera that moved is followed by
    the background discovery, and adding it again is refused as configured).
    """
    stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
    seen = Identity(mac=normalize_mac(device.mac), uuid=device.device_uuid)
    if device.host == entry_host(entry) or device.host in addresses:
        return not stored.differs(seen)
    return bool(seen.mac) and seen.mac == stored.mac


def credentials_schema(username: str | None) -> probatio.Schema:
    """A form asking a camera's credentials again (reauth, a replaced camera's repair)."""
    return probatio.Schema(
        {
            probatio.Optional(
                CONF_USERNAME, description={"suggested_value": username}
            ): TextSelector(TextSelectorConfig(autocomplete="username")),
            probatio.Optional(CONF_PASSWORD): TextSelector(
                TextSelectorConfig(type=TextSelectorType.PASSWORD, autocomplete="current-password")
            ),
        }
    )
