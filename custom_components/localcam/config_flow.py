"""Config flow for LocalCam: add a camera by URL, reconfigure, reauth, options."""

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
import math
import re
from typing import Any, Self, override
from urllib.parse import unquote

from homeassistant.config_entries import (
    SOURCE_ZEROCONF,
    ConfigFlow,
    ConfigFlowResult,
    OptionsFlowWithReload,
)
from homeassistant.const import CONF_HOST, CONF_HOSTS, CONF_PASSWORD, CONF_PORT, CONF_USERNAME
from homeassistant.core import callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.selector import (
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
from homeassistant.helpers.service_info.dhcp import DhcpServiceInfo
from homeassistant.helpers.service_info.zeroconf import ZeroconfServiceInfo
from homeassistant.helpers.typing import DiscoveryInfoType
import probatio
import yarl

from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_CODEC,
    CONF_DEVICE_INFO,
    CONF_HEIGHT,
    CONF_IDENTITY,
    CONF_MAIN_PROFILE,
    CONF_ONVIF,
    CONF_PROFILES,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    CONF_WIDTH,
    DEFAULT_ONVIF_PORT,
    DEFAULT_RTSP_TRANSPORT,
    DEFAULT_SNAPSHOT_MAX_AGE,
    DOMAIN,
    LOGGER,
    MAX_SNAPSHOT_MAX_AGE,
    MIN_SNAPSHOT_MAX_AGE,
    OFFER_SOURCES,
    PROBE_TIMEOUT,
    RTSP_TRANSPORTS,
    SNAPSHOT_TIMEOUT,
)
from .core.errors import (
    InvalidImageError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
    NoVideoError,
    StreamRefusedError,
)
from .core.identity import Identity, IdentityMismatchError, neighbour_mac, normalize_mac
from .core.models import CameraSource, StreamInfo
from .core.netpolicy import (
    NetPolicy,
    is_loopback_literal,
    normalized_identity,
    parse_networks,
    split_credentials,
)
from .core.onvif import OnvifProfile, read_device
from .core.snapshot import SNAPSHOT_SCHEMES, STREAM_SCHEMES, CameraClient
from .core.wsdiscovery import DiscoveredDevice, unicast_range
from .data import LocalCamConfigEntry
from .discovery import FLOW_SCAN_TIME, async_scan
from .helpers import (
    async_entries_addresses,
    async_link_mac,
    async_observe_identity,
    credentials_schema,
    data_host,
    device_entry_elsewhere,
    device_is_configured,
    entry_host,
    entry_unique_id,
    is_ip,
    new_camera_id,
    onvif_host,
    other_streams,
    policy_from_options,
    rtsp_transport,
)

URL_FIELDS = (CONF_STREAM_URL, CONF_SNAPSHOT_URL)
# All of an ONVIF device's snapshot URIs are tested within this (an NVR's
# channels report one each); any left when it is up are not waited for.
SNAPSHOT_TESTS_SECONDS = 2 * SNAPSHOT_TIMEOUT


def _allowed_networks_field() -> dict[Any, Any]:
    """The options' extra allowed networks field, also on the forms that add a camera.

    A camera on a VPN range must pass the LAN policy before its entry (and so
    its options) exists.
    """
    return {
        probatio.Optional(CONF_ALLOWED_NETWORKS, default=""): TextSelector(
            TextSelectorConfig(multiline=True)
        )
    }


def _url_schema(defaults: Mapping[str, Any], *, adding: bool = False) -> probatio.Schema:
    """Return the form for a camera's URLs and credentials (and, to add one, its networks)."""
    schema = probatio.Schema(
        {
            probatio.Required(
                CONF_STREAM_URL, default=defaults.get(CONF_STREAM_URL, probatio.UNDEFINED)
            ): TextSelector(TextSelectorConfig(type=TextSelectorType.URL)),
            probatio.Optional(
                CONF_SNAPSHOT_URL,
                description={"suggested_value": defaults.get(CONF_SNAPSHOT_URL)},
            ): TextSelector(TextSelectorConfig(type=TextSelectorType.URL)),
            probatio.Optional(
                CONF_USERNAME, description={"suggested_value": defaults.get(CONF_USERNAME)}
            ): TextSelector(TextSelectorConfig(autocomplete="username")),
            probatio.Optional(CONF_PASSWORD): TextSelector(
                TextSelectorConfig(type=TextSelectorType.PASSWORD, autocomplete="current-password")
            ),
            probatio.Required(CONF_VERIFY_SSL, default=defaults.get(CONF_VERIFY_SSL, True)): bool,
        }
    )
    return schema.extend(_allowed_networks_field()) if adding else schema


def _title(stream_url: str) -> str:
    """Name a camera after its host (and port when not the default)."""
    url = yarl.URL(stream_url)
    host = url.host or "camera"
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


class LocalCamConfigFlow(ConfigFlow, domain=DOMAIN):
    """Add a LocalCam camera."""

    VERSION = 1
    MINOR_VERSION = 1

    def __init__(self) -> None:
        """Start with no placeholders and nothing discovered."""
        self._placeholders: dict[str, str] = {}
        self._discovered: dict[str, Any] = {}
        self._offered = Identity()  # what a discovery offer's announcement said
        self._found: dict[str, DiscoveredDevice] = {}
        # The extra allowed networks typed into the scan form (carried to the pick).
        self._scan_options: dict[str, str] = {}

    @staticmethod
    @callback
    @override
    def async_get_options_flow(config_entry: LocalCamConfigEntry) -> LocalCamOptionsFlow:
        """Return the options flow."""
        return LocalCamOptionsFlow()

    @override
    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Offer the ways to add a camera (discovery adds entries here)."""
        return self.async_show_menu(step_id="user", menu_options=["scan", "onvif", "url"])

    async def async_step_url(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Add a camera by its RTSP URL (and optional HTTP snapshot URL)."""
        errors: dict[str, str] = {}
        if (
            user_input is not None
            and (options := self._new_options(user_input, errors)) is not None
        ):
            data, info = await self._async_test(user_input, options, errors)
            if data is not None and info is not None:
                # The MAC (when the camera is on this link) identifies the
                # camera whatever URL it is reached by; else the URL does. A
                # device's further streams are entries of their own.
                current = self._async_current_entries(include_ignore=False)
                identity = Identity.from_dict(data[CONF_IDENTITY])
                unique_id, streams = entry_unique_id(current, identity, data[CONF_STREAM_URL])
                if unique_id is not None:
                    return await self._async_create_url_entry(unique_id, streams, data, options)
                there = device_entry_elsewhere(current, identity, data[CONF_STREAM_URL])
                if there is None:
                    return self.async_abort(reason="already_configured")
                elsewhere = entry_host(there)
                if await self._async_mac_shared(there, identity, data):
                    # Another camera that shows the same MAC (a repeater's): its
                    # MAC tells it from nothing, so it is keyed by its URL.
                    data[CONF_IDENTITY] = Identity().as_dict()
                    unique_id, _ = entry_unique_id(current, Identity(), data[CONF_STREAM_URL])
                    if unique_id is None:
                        return self.async_abort(reason="already_configured")
                    LOGGER.warning(
                        "%s shows the same MAC as the camera at %s (a repeater that puts its "
                        "own MAC on its clients?): added, pinned by its URL only",
                        _title(data[CONF_STREAM_URL]),
                        elsewhere,
                    )
                    return await self._async_create_url_entry(unique_id, 0, data, options)
                # Not "already configured": say where the device's streams are, and why.
                errors[CONF_STREAM_URL] = "device_elsewhere"
                self._placeholders = {"host": elsewhere}
        return self.async_show_form(
            step_id="url",
            data_schema=self.add_suggested_values_to_schema(
                _url_schema({}, adding=True), _without_password(user_input or self._discovered)
            ),
            errors=errors,
            description_placeholders=self._placeholders,
        )

    async def _async_create_url_entry(
        self, unique_id: str, streams: int, data: dict[str, Any], options: dict[str, Any]
    ) -> ConfigFlowResult:
        """Create the entry of a camera (or a device's further stream) added by URL."""
        # A pending discovery offer of this camera must not stop the
        # user adding it here; creating the entry aborts that offer.
        await self.async_set_unique_id(unique_id, raise_on_progress=False)
        self._abort_if_unique_id_configured()
        everyone = self.hass.config_entries.async_entries(DOMAIN)
        data[CONF_CAMERA_ID] = new_camera_id(everyone, unique_id)
        title = _title(data[CONF_STREAM_URL])
        if streams:
            # "host (2)", "host (3)": the first number no entry's title holds.
            titles = {entry.title for entry in everyone}
            title = next(
                f"{title} ({n})"
                for n in range(streams + 1, streams + len(titles) + 2)
                if f"{title} ({n})" not in titles
            )
        self._async_end_offers(data)
        return self.async_create_entry(title=title, data=data, options=options)

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change the URLs or credentials of a configured camera."""
        entry: LocalCamConfigEntry = self._get_reconfigure_entry()
        if entry.data.get(CONF_ONVIF):
            return await self.async_step_reconfigure_onvif(user_input)
        errors: dict[str, str] = {}
        if user_input is not None:
            user_input = _keep_stored_password(user_input, entry)
            data, info = await self._async_test(
                user_input, entry.options, errors, pinned=_pinned_mac(entry)
            )
            if errors.get("base") == "identity_mismatch":
                return self.async_abort(reason="wrong_camera")  # and sent nothing
            if data is not None and info is not None:
                if (identity := _checked_identity(entry, data)) is None:
                    return self.async_abort(reason="wrong_camera")
                data[CONF_IDENTITY] = identity.as_dict()
                unique_id, _ = entry_unique_id(
                    self.hass.config_entries.async_entries(DOMAIN),
                    identity,
                    data[CONF_STREAM_URL],
                    exclude=entry,
                )
                if unique_id is None:
                    return self.async_abort(reason="already_configured")
                return self.async_update_reload_and_abort(
                    entry, unique_id=unique_id, data_updates=data
                )
        defaults = _without_password(user_input or dict(entry.data))
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(_url_schema(defaults), defaults),
            errors=errors,
            description_placeholders=self._placeholders,
        )

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        """Start reauth: the camera answered 401 at setup or while streaming."""
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask for new credentials and test them against the camera."""
        entry: LocalCamConfigEntry = self._get_reauth_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            candidate = {
                **entry.data,
                CONF_USERNAME: user_input.get(CONF_USERNAME),
                CONF_PASSWORD: user_input.get(CONF_PASSWORD),
            }
            if entry.data.get(CONF_ONVIF):
                if await self._async_link_refuses(entry, candidate):
                    return self.async_abort(reason="wrong_camera")  # and sent nothing
                # The device says who it is (serial, UUID, MAC) over ONVIF,
                # where the link may show no MAC at all (routed, IPv6).
                data = await self._async_test_onvif(
                    candidate, entry.options, errors, main_token=entry.data.get(CONF_MAIN_PROFILE)
                )
                same = data is not None and _onvif_identity(entry, data) is not None
            else:
                data, info = await self._async_test(
                    candidate, entry.options, errors, pinned=_pinned_mac(entry)
                )
                if errors.get("base") == "identity_mismatch":
                    # Another device at the camera's address was sent nothing.
                    return self.async_abort(reason="wrong_camera")
                data = data if info is not None else None
                same = data is not None and _checked_identity(entry, data) is not None
            if data is not None:
                # Credentials are saved only for the camera they were typed
                # for, never for another device that took its address.
                if not same:
                    return self.async_abort(reason="wrong_camera")
                updates = {CONF_USERNAME: data[CONF_USERNAME], CONF_PASSWORD: data[CONF_PASSWORD]}
                if entry.data.get(CONF_ONVIF):
                    # The snapshot URI was tested with the new credentials
                    # (one a 401 had left out works now, or the reverse).
                    updates |= _snapshot_uris(entry.data, data)
                return self.async_update_reload_and_abort(entry, data_updates=updates)
            # This form has only the credentials: an error about a URL (the
            # camera's still is broken, say) is shown above them, not lost.
            errors = {
                field if field in (CONF_USERNAME, CONF_PASSWORD) else "base": error
                for field, error in errors.items()
            }
        self._placeholders.setdefault("name", entry.title)
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=credentials_schema(entry.data.get(CONF_USERNAME)),
            errors=errors,
            description_placeholders={**self._placeholders, "name": entry.title},
        )

    async def async_step_onvif(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Add an ONVIF camera: its profiles, identity and URIs come from the camera."""
        errors: dict[str, str] = {}
        if (
            user_input is not None
            and (options := self._new_options(user_input, errors)) is not None
        ):
            data = await self._async_test_onvif(user_input, options, errors)
            if data is not None:
                # Streams of the device added by URL are configured already
                # (its ONVIF entry would show each of them a second time).
                unique_id, _ = entry_unique_id(
                    self._async_current_entries(include_ignore=False),
                    Identity.from_dict(data[CONF_IDENTITY]),
                    data[CONF_STREAM_URL],
                    onvif=True,
                )
                if unique_id is None:
                    return self.async_abort(reason="already_configured")
                # As for the URL: an offer pending for this camera is aborted
                # when the entry is created, not the other way round.
                await self.async_set_unique_id(data[CONF_CAMERA_ID], raise_on_progress=False)
                self._abort_if_unique_id_configured()
                data[CONF_CAMERA_ID] = new_camera_id(
                    self.hass.config_entries.async_entries(DOMAIN), data[CONF_CAMERA_ID]
                )
                self._async_end_offers(data)
                return self.async_create_entry(title=data.pop("title"), data=data, options=options)
        return self._onvif_form(
            "onvif", _onvif_schema(adding=True), user_input or self._discovered, errors
        )

    async def async_step_reconfigure_onvif(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change an ONVIF camera's address or credentials; the device must be the same."""
        entry: LocalCamConfigEntry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            user_input = _keep_stored_password(user_input, entry)
            # The address the link check looks at is the one the test reads.
            user_input[CONF_HOST] = onvif_host(user_input[CONF_HOST])
            if await self._async_link_refuses(entry, {**entry.data, **user_input}):
                return self.async_abort(reason="wrong_camera")  # and sent nothing
            data = await self._async_test_onvif(
                user_input, entry.options, errors, main_token=entry.data.get(CONF_MAIN_PROFILE)
            )
            if data is not None:
                if (identity := _onvif_identity(entry, data)) is None:
                    return self.async_abort(reason="wrong_camera")
                data.pop("title")
                data[CONF_CAMERA_ID] = entry.data[CONF_CAMERA_ID]
                data[CONF_IDENTITY] = identity.as_dict()
                return self.async_update_reload_and_abort(entry, data_updates=data)
        return self._onvif_form(
            "reconfigure_onvif", _onvif_schema(), user_input or entry.data, errors
        )

    async def _async_link_refuses(
        self, entry: LocalCamConfigEntry, data: Mapping[str, Any]
    ) -> bool:
        """Whether the link shows another MAC than the camera's at ``data``'s address.

        A bare connection, nothing sent: an ONVIF camera's reauth and
        reconfigure ask the device with the typed credentials, and a device
        the link already shows to be another one must not get them. Where the
        link shows no MAC (routed, IPv6, a repeater's rewrite dropped from
        the identity), or nothing answers, the ONVIF test decides as before.
        """
        stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
        if not stored.mac:
            return False
        try:
            link = await async_link_mac(self.hass, data, entry.options)
        except LocalCamError:
            return False
        return link is not None and link != stored.mac

    def _onvif_form(
        self,
        step_id: str,
        schema: probatio.Schema,
        values: Mapping[str, Any],
        errors: dict[str, str],
    ) -> ConfigFlowResult:
        """The ONVIF address form, filled with `values` (never the password)."""
        return self.async_show_form(
            step_id=step_id,
            data_schema=self.add_suggested_values_to_schema(schema, _without_password(values)),
            errors=errors,
            description_placeholders=self._placeholders,
        )

    def _new_options(
        self, user_input: Mapping[str, Any], errors: dict[str, str]
    ) -> dict[str, Any] | None:
        """The options of a camera being added: its extra allowed networks, if valid.

        The test before configure runs with them, and the entry keeps them,
        so a camera on a VPN range can be added at all. None when the
        networks are refused, with the error on their field.
        """
        networks = str(user_input.get(CONF_ALLOWED_NETWORKS) or "").strip()
        if (reason := _networks_error(networks)) is not None:
            errors[CONF_ALLOWED_NETWORKS] = "invalid_networks"
            self._placeholders = {"reason": reason}
            return None
        return {CONF_ALLOWED_NETWORKS: networks} if networks else {}

    @asynccontextmanager
    async def _client(self, policy: NetPolicy, source: CameraSource) -> AsyncIterator[CameraClient]:
        """A camera client for one test, closed after it (its RTSP relay included)."""
        client = CameraClient(async_get_clientsession(self.hass), policy, source)
        try:
            yield client
        finally:
            await client.close()

    async def _async_test_onvif(
        self,
        user_input: Mapping[str, Any],
        options: Mapping[str, Any],
        errors: dict[str, str],
        *,
        main_token: str | None = None,
    ) -> dict[str, Any] | None:
        """Read the camera over ONVIF and decode its main profile's stream.

        The main profile is ``main_token`` (a configured camera's) while the
        camera still reports it, else the first H.264 one: a camera whose
        main stream the user switched to H.265 keeps its main entity.
        """
        self._placeholders = {}
        host = onvif_host(user_input[CONF_HOST])
        port = int(user_input.get(CONF_PORT) or DEFAULT_ONVIF_PORT)
        username = user_input.get(CONF_USERNAME) or None
        password = user_input.get(CONF_PASSWORD) or None
        try:
            policy = policy_from_options(options)
            device = await read_device(
                host, port, username, password, policy=policy, timeout=PROBE_TIMEOUT
            )
            main = next(
                (p for p in device.profiles if p.token == main_token), device.primary_profile
            )
            if main is None and device.refused_uris:
                # Every stream address it reported is outside the LAN policy.
                refused = device.refused_uris[0]
                # raw_host: the URI was refused, maybe for a host no IDNA
                # decoding accepts, which .host would raise on.
                raise NotLocalError(yarl.URL(refused.uri).raw_host or host, refused.reason)
            if main is None:
                raise NoVideoError("the camera reports no media profile")
            source = _test_source(user_input, options, main.stream_uri, None, username, password)
            decoded, info, link_mac = await self._async_probe_profiles(
                policy, source, main, device.profiles
            )
            if main_token is None or main.token != main_token:
                main = decoded  # a device added anew: its first stream that plays is the main one
            snapshots = await self._async_snapshot_uris_work(
                policy, source, [main.snapshot_uri, *(p.snapshot_uri for p in device.profiles)]
            )
        except InvalidUrlError as err:
            # invalid_url's text is about stream and snapshot URLs, not a host.
            errors[CONF_HOST] = "invalid_host"
            self._placeholders = dict(err.placeholders)
            return None
        except NotLocalError as err:
            errors[CONF_HOST] = err.translation_key
            self._placeholders = dict(err.placeholders)
            return None
        except LocalCamError as err:
            errors["base"] = err.translation_key
            self._placeholders = dict(err.placeholders)
            return None
        except Exception:  # noqa: BLE001 - a flow must never crash on a device
            LOGGER.exception("Unexpected error while reading an ONVIF camera")
            errors["base"] = "unknown"
            return None
        identity = device.device_identity.as_seen_on(link_mac)
        return {
            "title": " ".join(p for p in (device.manufacturer, device.model) if p) or host,
            CONF_HOST: host,
            CONF_PORT: port,
            CONF_USERNAME: username,
            CONF_PASSWORD: password,
            CONF_VERIFY_SSL: source.verify_ssl,
            CONF_ONVIF: True,
            CONF_STREAM_URL: main.stream_uri,
            CONF_SNAPSHOT_URL: main.snapshot_uri if snapshots.get(main.snapshot_uri) else None,
            CONF_PROFILES: [
                {
                    "token": profile.token,
                    "name": profile.name,
                    "encoding": profile.encoding,
                    "width": profile.width,
                    "height": profile.height,
                    "stream_url": profile.stream_uri,
                    "snapshot_url": profile.snapshot_uri
                    if snapshots.get(profile.snapshot_uri)
                    else None,
                }
                for profile in device.profiles
            ],
            CONF_MAIN_PROFILE: main.token,
            CONF_IDENTITY: identity.as_dict(),
            CONF_CAMERA_ID: identity.key or normalized_identity(main.stream_uri),
            CONF_DEVICE_INFO: {
                "manufacturer": device.manufacturer,
                "model": device.model,
                "firmware": device.firmware,
            },
            CONF_CODEC: info.codec,
            CONF_WIDTH: info.width,
            CONF_HEIGHT: info.height,
        }

    async def _async_probe_profiles(
        self,
        policy: NetPolicy,
        source: CameraSource,
        main: OnvifProfile,
        profiles: Sequence[OnvifProfile],
    ) -> tuple[OnvifProfile, StreamInfo, str | None]:
        """Decode the main profile's stream; if the device refuses it, another profile's.

        An NVR's channel without a camera answers its stream with 404 (or no
        video), as the health check allows (OTHER_STREAM_TRIES other streams):
        the device is there. Returns the profile decoded, its stream's info
        and what the link shows for its address (the MAC every later check
        compares). Any other failure of the main stream is raised as it was.
        """
        candidates = [main, *other_streams(main, profiles, lambda p: p.stream_uri)]
        refused: LocalCamError | None = None
        for profile in candidates:
            tested = replace(source, stream_url=profile.stream_uri)
            async with self._client(policy, tested) as client:
                try:
                    info = await client.probe(PROBE_TIMEOUT)
                except LocalCamError as err:
                    if refused is not None:
                        continue  # another stream that does not play either
                    try:  # why the main stream did not play: refused, or the device down?
                        await client.check_health(timeout=SNAPSHOT_TIMEOUT)
                    except StreamRefusedError, NoVideoError:
                        refused = err
                        continue
                    except LocalCamError:
                        pass
                    raise err from None
                target = await client.stream_target()
                link_mac = await self.hass.async_add_executor_job(neighbour_mac, target.address)
                return profile, info, link_mac
        assert refused is not None
        raise refused

    async def _async_snapshot_uris_work(
        self, policy: NetPolicy, source: CameraSource, uris: list[str | None]
    ) -> dict[str | None, bool]:
        """Which of the profiles' snapshot URIs give a JPEG, the main profile's first.

        Each profile's own (an NVR's channels report one each), one at a time;
        a URI several profiles share is tested once. All within
        SNAPSHOT_TESTS_SECONDS: a URI left when that time is up is not
        waited for (its profile's stills come from its stream), so an NVR
        whose channels all hang holds the form no longer than that.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SNAPSHOT_TESTS_SECONDS
        works: dict[str | None, bool] = {}
        for uri in dict.fromkeys(uri for uri in uris if uri):
            remaining = deadline - loop.time()
            works[uri] = remaining > 0 and await self._async_snapshot_uri_works(
                policy, source, uri, min(SNAPSHOT_TIMEOUT, remaining)
            )
        return works

    async def _async_snapshot_uri_works(
        self, policy: NetPolicy, source: CameraSource, snapshot_uri: str, timeout: float
    ) -> bool:
        """Whether the snapshot URI an ONVIF camera reports gives a JPEG.

        Some cameras report one that answers with an HTML page or a 401 their
        stream's credentials do not pass. No form can change a reported URI,
        and stills try it first: configured, every still would fail. Without
        it, stills come from the stream (keyframes, a grab), as HA's onvif
        falls back to FFmpeg. A reconfigure or reauth tests it again.
        """
        try:
            async with self._client(policy, replace(source, snapshot_url=snapshot_uri)) as client:
                await client.fetch_snapshot(timeout=timeout)
        except LocalCamError as err:
            LOGGER.warning(
                "The camera's ONVIF snapshot URI gives no usable still (%s); "
                "its stills come from its stream",
                err.translation_key,
            )
            return False
        return True

    async def async_step_scan(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Look for ONVIF cameras now (WS-Discovery), optionally at given hosts."""
        errors: dict[str, str] = {}
        if (
            user_input is not None
            and (options := self._new_options(user_input, errors)) is not None
        ):
            # Cameras on a VPN range: the hosts typed here, and the addresses
            # the replies report, pass the policy with the networks typed here.
            policy = NetPolicy(parse_networks(options.get(CONF_ALLOWED_NETWORKS, "")))
            try:
                hosts = (
                    unicast_range(user_input[CONF_HOSTS], policy=policy)
                    if user_input.get(CONF_HOSTS)
                    else []
                )
            except InvalidUrlError as err:
                # Bad syntax or too many hosts: invalid_url's text is about URLs.
                errors[CONF_HOSTS] = "invalid_hosts"
                self._placeholders = dict(err.placeholders)
            except NotLocalError as err:
                errors[CONF_HOSTS] = err.translation_key
                self._placeholders = dict(err.placeholders)
            else:
                entries = self._async_current_entries(include_ignore=False)
                found = await async_scan(self.hass, hosts, FLOW_SCAN_TIME, policy)
                # Names are looked up only when someone answered (as in the background scan).
                at = await async_entries_addresses(entries) if found else []
                self._found = {
                    f"{device.host}:{device.port}": device
                    for device in found
                    if not any(
                        device_is_configured(entry, device, addresses)
                        for entry, addresses in zip(entries, at, strict=True)
                    )
                }
                self._scan_options = options
                if self._found:
                    return await self.async_step_pick()
                errors["base"] = "no_devices_found"
        return self.async_show_form(
            step_id="scan",
            data_schema=self.add_suggested_values_to_schema(
                probatio.Schema(
                    {probatio.Optional(CONF_HOSTS): TextSelector(), **_allowed_networks_field()}
                ),
                user_input,
            ),
            errors=errors,
            description_placeholders=self._placeholders,
        )

    async def async_step_pick(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Choose one of the cameras the scan found."""
        if user_input is not None:
            device = self._found[user_input["device"]]
            # The ONVIF form opens with the networks the scan was allowed, so
            # the camera it found on them passes the same policy there.
            self._discovered = {
                CONF_HOST: device.host,
                CONF_PORT: device.port,
                **self._scan_options,
            }
            return await self.async_step_onvif()
        options = [
            SelectOptionDict(
                value=key,
                label=f"{device.name or device.hardware or 'ONVIF camera'} ({key})",
            )
            for key, device in self._found.items()
        ]
        return self.async_show_form(
            step_id="pick",
            data_schema=probatio.Schema(
                {probatio.Required("device"): SelectSelector(SelectSelectorConfig(options=options))}
            ),
        )

    async def async_step_zeroconf(self, discovery_info: ZeroconfServiceInfo) -> ConfigFlowResult:
        """A camera announced over mDNS (_rtsp._tcp or _axis-video._tcp)."""
        rtsp = discovery_info.type.startswith("_rtsp.")
        return await self._async_discovered(
            host=str(discovery_info.ip_address),
            port=discovery_info.port or (554 if rtsp else DEFAULT_ONVIF_PORT),
            mac=normalize_mac(str(discovery_info.properties.get("macaddress", ""))),
            uuid=None,
            name=discovery_info.name.split(".", 1)[0],
            kind="rtsp" if rtsp else "onvif",
        )

    async def async_step_dhcp(self, discovery_info: DhcpServiceInfo) -> ConfigFlowResult:
        """A device we know by MAC got an address (maybe a new one)."""
        return await self._async_discovered(
            host=discovery_info.ip,
            port=None,
            mac=normalize_mac(discovery_info.macaddress),
            uuid=None,
            name=discovery_info.hostname,
            kind="onvif",
        )

    async def async_step_integration_discovery(
        self, discovery_info: DiscoveryInfoType
    ) -> ConfigFlowResult:
        """A camera LocalCam's own WS-Discovery found."""
        return await self._async_discovered(
            host=str(discovery_info["host"]),
            port=int(discovery_info.get("port") or DEFAULT_ONVIF_PORT),
            mac=normalize_mac(discovery_info.get("mac")),
            uuid=discovery_info.get("uuid"),
            name=discovery_info.get("name"),
            kind="onvif",
        )

    async def _async_discovered(
        self,
        *,
        host: str,
        port: int | None,
        mac: str | None,
        uuid: str | None,
        name: str | None,
        kind: str,
    ) -> ConfigFlowResult:
        """Recognise a configured camera by identity, or ask the user to add it."""
        seen = Identity(mac=mac, uuid=uuid)
        entries = self._async_current_entries(include_ignore=False)
        # Where the cameras are, those configured by name at the addresses
        # their names resolve to: looked up (all together) only once an
        # entry may be the announcer.
        at: list[frozenset[str]] | None = None
        # The entries the announcement names first: an entry that holds none
        # of its fields (one pinned by URL or serial, at the address the
        # announced camera has now taken) must not pass off the named camera's
        # move as itself.
        confirming = (
            [e for e in entries if Identity.from_dict(e.data.get(CONF_IDENTITY)).confirms(seen)]
            if seen.known
            else []
        )
        for entry in confirming:
            current = entry_host(entry)
            # A camera configured by name is followed by DNS, not by LocalCam.
            if not is_ip(current) or current == host or await self._async_follow(entry, host):
                return self.async_abort(reason="already_configured")
            # Shown to be another device that announces the same MAC or
            # UUID (cheap cameras share firmware-default UUIDs): offer it.
        for index, entry in enumerate(entries):
            stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
            if entry in confirming:
                continue
            if not stored.differs(seen):
                if at is None:
                    at = await async_entries_addresses(entries)
                if host in at[index]:
                    # The configured camera, announcing a field its entry does
                    # not hold (a UUID the camera never reported over ONVIF).
                    return self.async_abort(reason="already_configured")
        if seen.key is not None:
            await self.async_set_unique_id(seen.key)
            self._abort_if_unique_id_configured()
        elif kind != "rtsp" and port is None:
            return self.async_abort(reason="not_a_camera")
        else:
            # An announcement without an identity (a camera already configured
            # at that address was recognised above, and is never moved): the
            # offer is keyed by address so that the user can ignore it.
            await self.async_set_unique_id(f"{kind}_{_bracket(host)}:{port}")
            self._abort_if_unique_id_configured()
        self._discovered = {CONF_HOST: host, CONF_PORT: port, "kind": kind}
        self._offered = seen
        if self.hass.config_entries.flow.async_has_matching_flow(self):
            # The same device announced another way (an Axis camera: over mDNS
            # keyed by its MAC, over WS-Discovery by its UUID): one offer.
            return self.async_abort(reason="already_in_progress")
        if kind == "onvif":
            # The device's plain RTSP offer at this address (its _rtsp._tcp
            # announcement, keyed by address: it carried no identity) gives
            # way: this offer's form reads every profile. Announced the other
            # way round, the RTSP offer yields at once (is_matching). One the
            # user has opened past its confirmation is left to finish.
            rtsp_key = f"rtsp_{_bracket(host)}:"
            for flow in self._async_in_progress(include_uninitialized=True):
                unique_id = flow["context"].get("unique_id")
                if (
                    isinstance(unique_id, str)
                    and unique_id.startswith(rtsp_key)
                    and flow.get("step_id") == "discovery_confirm"
                ):
                    self.hass.config_entries.flow.async_abort(flow["flow_id"])
        if kind == "rtsp":
            self._discovered[CONF_STREAM_URL] = f"rtsp://{_bracket(host)}:{port}/"
        self._placeholders = {"name": name or host, "host": host}
        self.context["title_placeholders"] = {"name": name or host}
        return await self.async_step_discovery_confirm()

    @override
    def is_matching(self, other_flow: Self) -> bool:
        """Whether another offer is of this device: at its address, nothing tells them apart.

        An ONVIF offer does not give way to a plain RTSP one: its form reads
        every profile of the camera.
        """
        other = other_flow._discovered
        return (
            other_flow.source in OFFER_SOURCES
            and other.get(CONF_HOST) == self._discovered.get(CONF_HOST)
            and not other_flow._offered.differs(self._offered)
            and not (self._discovered.get("kind") == "onvif" and other.get("kind") == "rtsp")
        )

    @callback
    def _async_end_offers(self, data: Mapping[str, Any]) -> None:
        """Abort the pending discovery offers of the camera this flow is adding.

        Home Assistant ends only the offers keyed like the new entry. One keyed
        by the camera's serial or UUID (a WS-Discovery reply without a MAC) or
        by its address (an announcement without an identity) would stay listed
        under Discovered until Home Assistant restarts, and lead nowhere but
        to already_configured. Offers keyed by another device's identity stay.
        """
        identity = Identity.from_dict(data.get(CONF_IDENTITY))
        host = _bracket(data_host(data))
        ports = {data.get(CONF_PORT), yarl.URL(data[CONF_STREAM_URL]).explicit_port or 554}
        keys = {
            identity.mac,
            f"serial_{identity.serial}" if identity.serial else None,
            f"uuid_{identity.uuid}" if identity.uuid else None,
            *(f"{kind}_{host}:{port}" for kind in ("onvif", "rtsp") for port in ports if port),
        }
        for flow in self._async_in_progress(include_uninitialized=True):
            context = flow["context"]
            if context.get("source") in OFFER_SOURCES and context.get("unique_id") in keys:
                self.hass.config_entries.flow.async_abort(flow["flow_id"])

    async def async_step_discovery_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask before adding a discovered camera."""
        if self._offer_configured():
            # Added by hand since it was offered (an offer keyed by the
            # camera's UUID, which an entry added by URL does not know).
            return self.async_abort(reason="already_configured")
        if user_input is None:
            return self.async_show_form(
                step_id="discovery_confirm", description_placeholders=self._placeholders
            )
        if self._discovered["kind"] == "rtsp":
            return await self.async_step_url()
        return await self.async_step_onvif()

    def _offer_configured(self) -> bool:
        """Whether an entry now configures the camera this offer was made for.

        At the offer's address, and nothing the offer announced says it is
        another device (the rule ``_async_discovered`` applies on arrival).
        """
        host = self._discovered.get(CONF_HOST)
        return any(
            entry_host(entry) == host
            and not Identity.from_dict(entry.data.get(CONF_IDENTITY)).differs(self._offered)
            for entry in self._async_current_entries(include_ignore=False)
        )

    async def _async_follow(self, entry: LocalCamConfigEntry, host: str) -> bool:
        """Move an entry to its camera's new address, only after an identity check.

        The device at the new address must prove to be the configured camera
        (``Identity.proves_move``: the MAC on the link, or every stored field
        with the serial). Otherwise the entry stays where it is: an address,
        or a MAC or UUID that any device can copy from a broadcast, is never
        enough. Return False when the device there is shown to be another one
        (so it may be offered as a camera of its own), True otherwise. The
        device's other streams at the same address move with it.
        """
        if self.source == SOURCE_ZEROCONF and is_loopback_literal(host):
            # HA's zeroconf passes on any address but link-local ones: an mDNS
            # reply from the LAN may name this machine, where no camera moves
            # (as a WS-Discovery reply from the LAN may not; HA's DHCP drops it).
            return True
        stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
        old_host = entry_host(entry)
        new_data = _with_host(entry.data, host)
        if entry.data.get(CONF_ONVIF) and await self._async_at_home(entry, stored, new_data):
            LOGGER.info(
                "Not asking the device at %s who it is: %s still answers at %s",
                host,
                entry.title,
                old_host,
            )
            return True
        try:
            seen = await async_observe_identity(self.hass, new_data, entry.options, expected=stored)
        except LocalCamError as err:
            LOGGER.info("Not moving %s to %s: %s", entry.title, host, err)
            return True
        if not stored.proves_move(seen.identity, seen.link_mac):
            LOGGER.warning(
                "Not moving %s to %s: the device there is not shown to be the same camera",
                entry.title,
                host,
            )
            return not stored.differs(Identity(mac=seen.link_mac).merged(seen.identity))
        if stored.mac and seen.link_mac and await self._async_still_answers(entry, stored.mac):
            # Two addresses, one MAC: not a move. A Wi-Fi repeater that puts
            # its own MAC on all its clients' traffic shows the same MAC for
            # every camera behind it; moving would show another one here.
            LOGGER.warning(
                "Not moving %s to %s: it still answers at %s, and the device at %s shows "
                "the same MAC (a repeater that puts its own MAC on its clients?)",
                entry.title,
                host,
                old_host,
                host,
            )
            return True
        # The streams that move: this entry, and the device's other entries
        # added by URL at the same address. ``entry_unique_id`` keeps a
        # device's streams at one address when they are added, so the
        # identity just checked holds for them too.
        moving = [entry] + [
            other
            for other in self._async_current_entries(include_ignore=False)
            if other is not entry
            and not other.data.get(CONF_ONVIF)
            and entry_host(other) == old_host
            and Identity.from_dict(other.data.get(CONF_IDENTITY)).key == stored.key
        ]
        for moved in moving:
            LOGGER.info("%s moved to %s (identity checked)", moved.title, host)
            self.hass.config_entries.async_update_entry(moved, data=_with_host(moved.data, host))
            self.hass.config_entries.async_schedule_reload(moved.entry_id)
        return True

    async def _async_at_home(
        self, entry: LocalCamConfigEntry, stored: Identity, new_data: Mapping[str, Any]
    ) -> bool:
        """Whether an ONVIF camera that only asking could find elsewhere is still at home.

        Where the link cannot tell the device at the new address (no MAC
        there: routed, IPv6, or a camera pinned by serial), only asking it
        can, with the camera's credentials (a WS-Security digest, open to
        replay and offline guessing). The address came from an announcement
        anyone on the LAN can send, naming the camera's UUID. So the camera
        is asked at its own address first (as each health check asks it):
        while it proves to be there, it has not moved, and the new address
        is sent nothing. Only a camera gone from its address is looked for.
        """
        if stored.mac:
            try:
                if await async_link_mac(self.hass, new_data, entry.options) is not None:
                    return False  # the link decides there, nothing sent (async_observe_identity)
            except LocalCamError:
                return False  # nothing answers there: the look that follows says so
        try:
            seen = await async_observe_identity(self.hass, entry.data, entry.options)
        except LocalCamError:
            return False  # gone from its address: the new one may be it
        return stored.proves_move(seen.identity, seen.link_mac)

    async def _async_mac_shared(
        self, there: LocalCamConfigEntry, identity: Identity, data: Mapping[str, Any]
    ) -> bool:
        """Whether a new camera and the configured one ``there`` are two devices, one MAC.

        Both addresses are literals (a host name may be the other address's
        name: the same camera), differ, and the link shows the camera's MAC
        answering at the configured one's now: it did not move, so the new
        one is another device behind a repeater that gives both its MAC.
        """
        if not identity.mac or not is_ip(entry_host(there)) or not is_ip(data_host(data)):
            return False
        return await self._async_still_answers(there, identity.mac)

    async def _async_still_answers(self, entry: LocalCamConfigEntry, mac: str) -> bool:
        """Whether the link still shows ``mac`` answering at the entry's own address.

        A fresh look (a bare connection, nothing sent): a camera that moved no
        longer answers there, or another device with another MAC does.
        """
        try:
            return await async_link_mac(self.hass, entry.data, entry.options) == mac
        except LocalCamError:
            return False

    async def _async_test(
        self,
        user_input: Mapping[str, Any],
        options: Mapping[str, Any],
        errors: dict[str, str],
        *,
        pinned: Identity | None = None,
    ) -> tuple[dict[str, Any] | None, StreamInfo | None]:
        """Test before configure; fill ``errors`` and return the entry data.

        Credentials typed into a URL are moved to the username and password
        fields, so that no URL we store, log or show holds a secret. With
        ``pinned`` (a configured camera's MAC: reauth, reconfigure), they go
        only to a device that shows that MAC on the link
        (``CameraClient.guard_credentials``); another one is the error
        ``identity_mismatch``, sent nothing.
        """
        self._placeholders = {}
        snapshot_url: str | None = None
        snap_user: str | None = None
        snap_password: str | None = None
        field = CONF_STREAM_URL
        try:
            # A URL yarl cannot parse (a port out of range, an open bracket)
            # is an error on its field, not a crash of the flow.
            stream_url, url_user, url_password = split_credentials(
                str(user_input[CONF_STREAM_URL]).strip()
            )
            if raw_snapshot := str(user_input.get(CONF_SNAPSHOT_URL) or "").strip():
                field = CONF_SNAPSHOT_URL
                snapshot_url, snap_user, snap_password = split_credentials(raw_snapshot)
            username = user_input.get(CONF_USERNAME) or url_user or snap_user or None
            password = user_input.get(CONF_PASSWORD) or url_password or snap_password or None
            typed = (url_user, url_password) if url_password else (snap_user, snap_password)
            if not user_input.get(CONF_PASSWORD) and typed[1]:
                # A password typed into a URL goes with the user typed with it,
                # never with another name in the username field (an autofill).
                username = typed[0] or username
            policy = policy_from_options(options)
            field = CONF_STREAM_URL
            await policy.check(stream_url, schemes=STREAM_SCHEMES)
            if snapshot_url is not None:
                field = CONF_SNAPSHOT_URL
                await policy.check(snapshot_url, schemes=SNAPSHOT_SCHEMES)
            field = "base"
            source = _test_source(user_input, options, stream_url, snapshot_url, username, password)
            if pinned is not None:
                source = replace(source, identity=pinned)
            async with self._client(policy, source) as client:
                info = await client.probe(PROBE_TIMEOUT)
                target = await client.stream_target()
                mac = await self.hass.async_add_executor_job(neighbour_mac, target.address)
                if snapshot_url is not None:
                    field = CONF_SNAPSHOT_URL
                    await client.fetch_snapshot(timeout=SNAPSHOT_TIMEOUT)
        except (InvalidUrlError, NotLocalError) as err:
            errors[field] = err.translation_key
            self._placeholders = dict(err.placeholders)
            return None, None
        except InvalidImageError as err:
            errors[CONF_SNAPSHOT_URL] = err.translation_key
            self._placeholders = dict(err.placeholders)
            return None, None
        except LocalCamError as err:
            errors["base"] = err.translation_key
            self._placeholders = dict(err.placeholders)
            return None, None
        except Exception:  # noqa: BLE001 - a flow must never crash on a device
            LOGGER.exception("Unexpected error while testing a camera")
            errors["base"] = "unknown"
            return None, None
        return {
            CONF_STREAM_URL: stream_url,
            CONF_SNAPSHOT_URL: snapshot_url,
            CONF_USERNAME: username,
            CONF_PASSWORD: password,
            CONF_VERIFY_SSL: source.verify_ssl,
            CONF_IDENTITY: Identity(mac=mac).as_dict(),
            CONF_CODEC: info.codec,
            CONF_WIDTH: info.width,
            CONF_HEIGHT: info.height,
        }, info


def _snapshot_uris(stored: Mapping[str, Any], tested: Mapping[str, Any]) -> dict[str, Any]:
    """An ONVIF entry's snapshot URIs as just tested; its profiles otherwise as stored."""
    fresh = {p["token"]: p.get("snapshot_url") for p in tested[CONF_PROFILES]}
    return {
        CONF_SNAPSHOT_URL: tested[CONF_SNAPSHOT_URL],
        CONF_PROFILES: [
            {**p, "snapshot_url": fresh.get(p["token"], p.get("snapshot_url"))}
            for p in stored[CONF_PROFILES]
        ],
    }


def _test_source(
    user_input: Mapping[str, Any],
    options: Mapping[str, Any],
    stream_url: str,
    snapshot_url: str | None,
    username: str | None,
    password: str | None,
) -> CameraSource:
    """The source a flow tests before it configures a camera (no camera id yet)."""
    return CameraSource(
        camera_id="config_flow",
        stream_url=stream_url,
        snapshot_url=snapshot_url,
        username=username,
        password=password,
        verify_ssl=bool(user_input.get(CONF_VERIFY_SSL, True)),
        rtsp_transport=rtsp_transport(options),
    )


def _onvif_schema(*, adding: bool = False) -> probatio.Schema:
    """Return the form for an ONVIF camera (and, to add one, its networks)."""
    schema = probatio.Schema(
        {
            probatio.Required(CONF_HOST): TextSelector(),
            probatio.Required(CONF_PORT, default=DEFAULT_ONVIF_PORT): NumberSelector(
                NumberSelectorConfig(min=1, max=65535, mode=NumberSelectorMode.BOX)
            ),
            probatio.Optional(CONF_USERNAME): TextSelector(
                TextSelectorConfig(autocomplete="username")
            ),
            probatio.Optional(CONF_PASSWORD): TextSelector(
                TextSelectorConfig(type=TextSelectorType.PASSWORD, autocomplete="current-password")
            ),
            probatio.Required(CONF_VERIFY_SSL, default=True): bool,
        }
    )
    return schema.extend(_allowed_networks_field()) if adding else schema


def _networks_error(text: str) -> str | None:
    """Why extra allowed networks typed into a form are refused; None when they are valid."""
    try:
        parse_networks(text)
    except ValueError as err:
        return str(err)
    return None


def _checked_identity(entry: LocalCamConfigEntry, data: Mapping[str, Any]) -> Identity | None:
    """The entry's identity merged with what answered at ``data``'s URL.

    None when a field known on both sides differs: another device answers.
    """
    stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
    observed = Identity.from_dict(data[CONF_IDENTITY])
    try:
        stored.check(observed, _title(data[CONF_STREAM_URL]))
    except IdentityMismatchError:
        return None
    return stored.merged(observed)


def _pinned_mac(entry: LocalCamConfigEntry) -> Identity | None:
    """The MAC a flow's test must see on the link before it sends credentials, if any."""
    stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
    return Identity(mac=stored.mac) if stored.mac else None


def _onvif_identity(entry: LocalCamConfigEntry, data: Mapping[str, Any]) -> Identity | None:
    """The entry's identity merged with what the ONVIF device at ``data`` reports.

    None when the entry knows the device and no field it reports confirms it.
    The MAC is the one just observed (``Identity.as_seen_on``): where the
    link now shows another MAC than the device reports, the stored one is
    dropped too, and the camera is checked by asking it from then on.
    """
    stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
    observed = Identity.from_dict(data[CONF_IDENTITY])
    if stored.known and not stored.confirms(observed):
        return None
    return replace(stored.merged(observed), mac=observed.mac)


def _keep_stored_password(user_input: dict[str, Any], entry: LocalCamConfigEntry) -> dict[str, Any]:
    """The credentials a reconfigure form means, its password field being empty.

    Credentials typed into a URL are the new ones: they win over the username
    field, which the form prefilled with the stored one. An empty password
    keeps the stored password, for the same username only: passwords are
    never sent back to the browser to prefill the form, and a new username is
    never tried with the old account's password.
    """
    url_user, url_password = _url_credentials(user_input)
    username = url_user or user_input.get(CONF_USERNAME)
    password = user_input.get(CONF_PASSWORD) or url_password
    if not password and username == entry.data.get(CONF_USERNAME):
        password = entry.data.get(CONF_PASSWORD)
    return {**user_input, CONF_USERNAME: username, CONF_PASSWORD: password}


def _url_credentials(user_input: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The user and password typed into the stream or snapshot URL, if any.

    An unparsable URL has none here; its own test says why it is refused.
    """
    for field in URL_FIELDS:
        try:
            _, user, password = split_credentials(str(user_input.get(field) or "").strip())
        except InvalidUrlError:
            continue
        if user or password:
            return user, password
    return None, None


def _bracket(host: str) -> str:
    """An IPv6 literal in brackets, for URLs."""
    return f"[{host}]" if ":" in host else host


def _with_host(data: Mapping[str, Any], host: str) -> dict[str, Any]:
    """Entry data with the camera's URLs (and the ONVIF host) moved to ``host``.

    Only URLs on the camera's old address move: a still URL on another
    device (an NVR) stays where it is.
    """
    old = data_host(data)

    def moved(url: str | None) -> str | None:
        if not url or yarl.URL(url).host != old:
            return url
        return str(yarl.URL(url).with_host(host))

    new = dict(data)
    new[CONF_STREAM_URL] = moved(data.get(CONF_STREAM_URL))
    new[CONF_SNAPSHOT_URL] = moved(data.get(CONF_SNAPSHOT_URL))
    if data.get(CONF_ONVIF):
        new[CONF_HOST] = host
        new[CONF_PROFILES] = [
            {
                **profile,
                "stream_url": moved(profile["stream_url"]),
                "snapshot_url": moved(profile.get("snapshot_url")),
            }
            for profile in data[CONF_PROFILES]
        ]
    return new


# The userinfo of a URL as typed: up to the authority's last "@" (as yarl splits it).
# With or without its scheme ("admin:pw@192.168.1.5/stream" is refused, and shown again).
_USERINFO_RE = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.\-]*://)?)([^/?#]*)@")
# A password typed raw may hold "/", "?", "#" or "@" ("admin:pa/ss@host"), which
# ends the authority early for any parser: then any "user:" with an "@" after it
# is taken for userinfo, up to the last "@".
_LOOSE_USERINFO_RE = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.\-]*://)?+)([^@]*?:.*)@", re.S)


# "admin:2024/pw@host": a raw password's leading digits parse as a port and its
# rest as the path (or query, fragment). An "@" after a port, with no "=" before
# it (not a query's value), ends a userinfo.
_PORT_THEN_AT_RE = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^/?#@]*:\d*[/?#][^=]*@")


def _plainly_without_userinfo(url: str) -> bool:
    """Whether a URL as typed parses, with a host and no userinfo (nothing to hide in it).

    Such a URL is shown again unchanged, an "@" in its query included; any
    other (no host, a user, unparsable, an "@" after its port outside a
    query's value) loses what may be a password.
    """
    if _PORT_THEN_AT_RE.match(url):
        return False
    try:
        parsed = yarl.URL(url.strip())
        return parsed.raw_user is None and parsed.raw_password is None and bool(parsed.host)
    except ValueError, UnicodeError:
        return False


def _without_password(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return form values to show again, never including the password.

    Nor one typed into a URL: the URL comes back without its userinfo (found
    by its spelling, so an unparsable URL loses it too), its user name in the
    username field when that is empty.
    """
    shown = {k: v for k, v in (values or {}).items() if k != CONF_PASSWORD and v is not None}
    for field in URL_FIELDS:
        url = shown.get(field)
        if not isinstance(url, str) or _plainly_without_userinfo(url):
            continue
        if m := _LOOSE_USERINFO_RE.match(url) or _USERINFO_RE.match(url):
            shown[field] = m.group(1) + url[m.end() :]
            if (user := unquote(m.group(2).partition(":")[0])) and not shown.get(CONF_USERNAME):
                shown[CONF_USERNAME] = user
    return shown


class LocalCamOptionsFlow(OptionsFlowWithReload):
    """Behaviour of a configured camera; saving reloads the entry."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Edit max age, RTSP transport and extra allowed networks."""
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {"reason": ""}
        if user_input is not None:
            reason = _networks_error(user_input.get(CONF_ALLOWED_NETWORKS, ""))
            if not math.isfinite(user_input[CONF_SNAPSHOT_MAX_AGE]):
                # NaN passes the selector's range check (every comparison is
                # False); saved, no frame's age would ever be within it.
                errors[CONF_SNAPSHOT_MAX_AGE] = "invalid_max_age"
            elif reason is None:
                return self.async_create_entry(data=user_input)
            if reason is not None:
                errors[CONF_ALLOWED_NETWORKS] = "invalid_networks"
                placeholders["reason"] = reason
        schema = probatio.Schema(
            {
                probatio.Required(
                    CONF_SNAPSHOT_MAX_AGE, default=DEFAULT_SNAPSHOT_MAX_AGE
                ): NumberSelector(
                    NumberSelectorConfig(
                        min=MIN_SNAPSHOT_MAX_AGE,
                        max=MAX_SNAPSHOT_MAX_AGE,
                        step=0.1,
                        unit_of_measurement="s",
                        mode=NumberSelectorMode.BOX,
                    )
                ),
                probatio.Required(
                    CONF_RTSP_TRANSPORT, default=DEFAULT_RTSP_TRANSPORT
                ): SelectSelector(
                    SelectSelectorConfig(
                        options=list(RTSP_TRANSPORTS),
                        translation_key=CONF_RTSP_TRANSPORT,
                        mode=SelectSelectorMode.DROPDOWN,
                    )
                ),
                **_allowed_networks_field(),
            }
        )
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                schema, user_input or self.config_entry.options
            ),
            errors=errors,
            description_placeholders=placeholders,
        )
