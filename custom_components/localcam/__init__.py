"""LocalCam: LAN-only cameras for Home Assistant."""

from collections.abc import Awaitable, Callable
import time
from typing import Final

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryError
from homeassistant.helpers import (
    config_validation as cv,
    device_registry as dr,
    entity_registry as er,
    issue_registry as ir,
)
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .cast import ISSUE_NO_INTERNAL_URL, async_stop_camera_casts
from .cast_views import async_setup_cast
from .const import (
    CONF_CAMERA_ID,
    CONF_CODEC,
    CONF_IDENTITY,
    CONF_ONVIF,
    CONF_PROFILES,
    DOMAIN,
)
from .coordinator import IDENTITY_ISSUE_PREFIX, LocalCamCoordinator
from .core.errors import InvalidNetworksError, LocalCamError
from .core.identity import Identity
from .core.netpolicy import NetPolicy
from .core.snapshot import CameraClient, IdentityProbe
from .core.snapshot_cache import SnapshotCache
from .data import LocalCamConfigEntry, LocalCamData, StreamRuntime
from .discovery import async_start_background_discovery
from .helpers import (
    entry_is_running,
    main_profile,
    policy_from_options,
    read_entry_device,
    snapshot_max_age,
    sources_from_entry,
)
from .services import async_setup_services
from .views import async_register_views

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)
# How often the health check reads an ONVIF camera's whole description (its
# profiles and reported addresses) rather than only who it is (_onvif_identity_probe).
WHOLE_READ_INTERVAL: Final = 15 * 60.0
PLATFORMS: list[Platform] = [Platform.CAMERA]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Set up what is shared by every camera: LocalCam's HTTP views."""
    async_register_views(hass)
    async_setup_cast(hass)
    async_setup_services(hass)
    async_start_background_discovery(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> bool:
    """Set up one camera: test it (health check), then add its entity."""
    try:
        policy = policy_from_options(entry.options)
    except InvalidNetworksError as err:
        raise ConfigEntryError(
            translation_domain=DOMAIN,
            translation_key=err.translation_key,
            translation_placeholders=err.placeholders,
        ) from err
    session = async_get_clientsession(hass)
    max_age = snapshot_max_age(entry.options)
    streams: dict[str, StreamRuntime] = {}
    try:
        sources = sources_from_entry(entry.data, entry.options)
        main = main_profile(entry.data)
        if main not in sources:
            raise KeyError(main)  # the main profile must be one of the streams
    except (KeyError, TypeError, ValueError) as err:
        # Data no flow stores (edited by hand): a clear error, not a traceback.
        raise ConfigEntryError(
            translation_domain=DOMAIN, translation_key="stored_data_incomplete"
        ) from err
    _async_sync_profile_entities(
        hass, entry, [source.camera_id for source in sources.values()], sources[main].camera_id
    )
    probe, report = (
        _onvif_identity_probe(hass, entry, policy) if entry.data.get(CONF_ONVIF) else (None, None)
    )
    for profile, source in sources.items():
        client = CameraClient(session, policy, source)
        client.identity_probe = probe
        client.report_probe = report
        client.reuse_within = max_age / 2
        # One cache per stream, bound to its frame key and source fingerprint.
        # A reload (new URL, credentials or options) builds new, empty ones.
        cache = SnapshotCache(
            source.camera_id,
            source.fingerprint,
            client.fetch_snapshot,
            max_age=max_age,
            receiving_since=client.receiving_since,
        )
        streams[profile] = StreamRuntime(client=client, cache=cache)
    _async_h265_note(hass, entry)
    _async_sync_device_mac(hass, entry)
    coordinator = LocalCamCoordinator(
        hass,
        entry,
        streams[main].client,
        main,
        {profile: stream.client for profile, stream in streams.items() if profile != main},
    )
    # 401 -> ConfigEntryAuthFailed (reauth); unreachable -> ConfigEntryNotReady.
    await coordinator.async_config_entry_first_refresh()
    entry.runtime_data = LocalCamData(streams=streams, main=main, coordinator=coordinator)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


@callback
def _async_sync_profile_entities(
    hass: HomeAssistant, entry: LocalCamConfigEntry, unique_ids: list[str], main_id: str
) -> None:
    """Fit this entry's camera entities to the streams it has now.

    A reconfigure may read other ONVIF profile tokens (after a firmware
    update or a reset) or fewer profiles. The entity of a stream whose token
    changed follows it, with the user's entity id and settings: the old main
    stream's becomes the new main's, and a lone other profile's the lone new
    one's. What is left is removed; it stayed as "no longer provided",
    holding its entity id (a new main stream's entity got ``…_2``).
    """
    registry = er.async_get(hass)
    cameras = [
        entity
        for entity in er.async_entries_for_config_entry(registry, entry.entry_id)
        if entity.domain == Platform.CAMERA
    ]
    gone = [entity for entity in cameras if entity.unique_id not in unique_ids]
    mains = [entity for entity in gone if entity.translation_key == "main"]
    holder = next((entity for entity in cameras if entity.unique_id == main_id), None)
    if len(mains) == 1 and holder is not None and holder.translation_key != "main":
        # The main stream took a token another stream had (its own is gone):
        # the main camera's entity follows the main stream; the other
        # stream's entity is left over like the entity of a gone token.
        gone.append(holder)
    kept = {entity.unique_id for entity in cameras if entity not in gone}
    new = [unique_id for unique_id in unique_ids if unique_id not in kept]
    main = mains[0] if main_id in new and len(mains) == 1 else None
    if main is not None:
        gone.remove(main)
        new.remove(main_id)
    others = [entity for entity in gone if entity.translation_key != "main"]
    new_others = [unique_id for unique_id in new if unique_id != main_id]
    if len(others) == 1 and len(new_others) == 1:
        registry.async_update_entity(others[0].entity_id, new_unique_id=new_others[0])
        gone.remove(others[0])
    for entity in gone:
        registry.async_remove(entity.entity_id)
    if main is not None:
        # Last: the unique id may have been another stream's entity's until now.
        registry.async_update_entity(main.entity_id, new_unique_id=main_id)


@callback
def _async_sync_device_mac(hass: HomeAssistant, entry: LocalCamConfigEntry) -> None:
    """Give the camera's device exactly the MAC its entry is pinned to now.

    The registry only ever adds the connections entities name: after a
    replaced camera's repair (or a re-pin by serial) the old camera's MAC
    stayed, the device page showed both, and HA's DHCP watcher kept
    reporting the old device's address changes as this camera's.
    """
    registry = dr.async_get(hass)
    # This entry's own device (identifiers are unique per config entry).
    device = registry.async_get_device_by_identifier(
        (DOMAIN, entry.data[CONF_CAMERA_ID]), entry.entry_id
    )
    if device is None:
        return
    mac = Identity.from_dict(entry.data.get(CONF_IDENTITY)).mac
    wanted = {(dr.CONNECTION_NETWORK_MAC, mac)} if mac else set()
    others = {c for c in device.connections if c[0] != dr.CONNECTION_NETWORK_MAC}
    if device.connections != others | wanted:
        registry.async_update_device(device.id, new_connections=others | wanted)


def _onvif_identity_probe(
    hass: HomeAssistant, entry: LocalCamConfigEntry, policy: NetPolicy
) -> tuple[IdentityProbe, Callable[[], Awaitable[None]]]:
    """Ask the ONVIF device at the entry's address who it is.

    After every fetch where the MAC is not visible, the identity-only read (a
    few requests, no profiles). At the health check, the same, and every
    WHOLE_READ_INTERVAL (and at setup) the whole read instead (about ten
    requests), whose answer also says which addresses the camera reports:
    any outside the LAN policy (netpolicy refused them; they are never
    fetched) gets a repair issue, because only the camera's own network
    settings can fix them. Those change with the camera's settings, not by
    the minute: the minute's check stays light.
    """
    data = entry.data
    issue_id = f"uri_not_local_{entry.entry_id}"
    # A serial is in no broadcast: where the entry holds one, it alone tells
    # this camera from any other device after a fetch (clock and device
    # information, two requests instead of four), so a slow camera's still
    # is not aged by the check.
    only_serial = bool(Identity.from_dict(data.get(CONF_IDENTITY)).serial)

    whole_read_at: float | None = None

    async def probe(whole: bool) -> Identity:
        nonlocal whole_read_at
        now = time.monotonic()
        if whole and whole_read_at is not None and now - whole_read_at < WHOLE_READ_INTERVAL:
            whole = False
        if not whole:
            return (
                await read_entry_device(data, policy, with_media=False, only_serial=only_serial)
            ).device_identity
        device = await read_entry_device(data, policy)
        whole_read_at = now
        # The same verdict as the light reads': where the serial decides,
        # it alone (a camera whose UUID or reported MAC changed with the same
        # serial was "a different device" every quarter hour, and itself
        # again a minute later).
        seen = Identity(serial=device.serial) if only_serial else device.device_identity
        refused = device.refused_uris[0] if device.refused_uris else None
        if not entry_is_running(entry):
            # A check that outlived the entry's removal leaves no issue behind.
            return seen
        _async_warning(
            hass,
            issue_id,
            "uri_not_local",
            {"name": entry.title, "uri": refused.uri, "reason": refused.reason}
            if refused
            else None,
        )
        return seen

    async def report() -> None:
        # A camera the link shows by its MAC is asked nothing after a check
        # (the MAC proved it), yet its reported addresses must still be
        # read every WHOLE_READ_INTERVAL, or its notice would never come
        # (nor, once raised, ever go). Best effort: the MAC proved the camera.
        nonlocal whole_read_at
        if whole_read_at is not None and time.monotonic() - whole_read_at < WHOLE_READ_INTERVAL:
            return
        try:
            await probe(True)
        except LocalCamError:
            whole_read_at = time.monotonic()  # tried; not again before the interval

    return probe, report


def _async_h265_note(hass: HomeAssistant, entry: LocalCamConfigEntry) -> None:
    """An H.265-only camera works, but browsers may not play its stream: say so."""
    profiles = entry.data.get(CONF_PROFILES) or []
    issue_id = f"h265_only_{entry.entry_id}"
    if profiles:  # ONVIF: what every profile reports
        h265_only = all(p.get("encoding") == "H265" for p in profiles)
    else:  # added by URL: the codec its stream had when added or reconfigured
        h265_only = str(entry.data.get(CONF_CODEC, "")).lower() == "hevc"
    _async_warning(hass, issue_id, "h265_only", {"name": entry.title} if h265_only else None)


def _async_warning(
    hass: HomeAssistant, issue_id: str, key: str, placeholders: dict[str, str] | None
) -> None:
    """Raise a warning repair issue (placeholders given) or clear it (None)."""
    if placeholders is None:
        ir.async_delete_issue(hass, DOMAIN, issue_id)
        return
    ir.async_create_issue(
        hass,
        DOMAIN,
        issue_id,
        is_fixable=False,
        severity=ir.IssueSeverity.WARNING,
        translation_key=key,
        translation_placeholders=placeholders,
    )


async def async_remove_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> None:
    """A removed camera leaves no repair issue behind."""
    for prefix in ("uri_not_local_", "h265_only_", IDENTITY_ISSUE_PREFIX):
        ir.async_delete_issue(hass, DOMAIN, f"{prefix}{entry.entry_id}")
    others = hass.config_entries.async_entries(DOMAIN, include_ignore=False, include_disabled=False)
    if not any(other.entry_id != entry.entry_id for other in others):
        # The last camera that can cast is gone (a disabled one cannot): no
        # URL to set.
        ir.async_delete_issue(hass, DOMAIN, ISSUE_NO_INTERNAL_URL)


async def async_unload_entry(hass: HomeAssistant, entry: LocalCamConfigEntry) -> bool:
    """Unload a camera: its casts and tokens, platforms, fetches, RTSP session."""
    await async_stop_camera_casts(hass, entry.data[CONF_CAMERA_ID])
    unloaded = await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
    if unloaded:
        for stream in entry.runtime_data.streams.values():
            await stream.cache.close()
            await stream.client.close()
    return unloaded
