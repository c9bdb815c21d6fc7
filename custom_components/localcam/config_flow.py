"""Config flow for LocalCam: add a camera by URL, reconfigure, reauth, options."""

from collections.abc import Mapping
from typing import Any, override

from homeassistant.config_entries import (
    ConfigFlow,
    ConfigFlowResult,
    OptionsFlowWithReload,
)
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.selector import (
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
import probatio
import yarl

from .const import (
    CONF_ALLOWED_NETWORKS,
    CONF_CAMERA_ID,
    CONF_CODEC,
    CONF_HEIGHT,
    CONF_IDENTITY,
    CONF_RTSP_TRANSPORT,
    CONF_SNAPSHOT_MAX_AGE,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    CONF_WIDTH,
    DEFAULT_RTSP_TRANSPORT,
    DEFAULT_SNAPSHOT_MAX_AGE,
    DOMAIN,
    LOGGER,
    MAX_SNAPSHOT_MAX_AGE,
    MIN_SNAPSHOT_MAX_AGE,
    PROBE_TIMEOUT,
    RTSP_TRANSPORTS,
    SNAPSHOT_TIMEOUT,
)
from .core.errors import (
    InvalidImageError,
    InvalidUrlError,
    LocalCamError,
    NotLocalError,
)
from .core.identity import Identity, IdentityMismatchError, neighbour_mac
from .core.models import CameraSource, RtspTransport, StreamInfo
from .core.netpolicy import normalized_identity, parse_networks, split_credentials
from .core.snapshot import SNAPSHOT_SCHEMES, STREAM_SCHEMES, CameraClient
from .data import LocalCamConfigEntry
from .helpers import policy_from_options

URL_FIELDS = (CONF_STREAM_URL, CONF_SNAPSHOT_URL)


def _url_schema(defaults: Mapping[str, Any]) -> probatio.Schema:
    """Return the form for a camera's URLs and credentials."""
    return probatio.Schema(
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


def _credentials_schema(username: str | None) -> probatio.Schema:
    """Return the reauth form."""
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
        """Start with no placeholders."""
        self._placeholders: dict[str, str] = {}

    @staticmethod
    @callback
    @override
    def async_get_options_flow(config_entry: LocalCamConfigEntry) -> LocalCamOptionsFlow:
        """Return the options flow."""
        return LocalCamOptionsFlow()

    @override
    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Offer the ways to add a camera (discovery adds entries here)."""
        return self.async_show_menu(step_id="user", menu_options=["url"])

    async def async_step_url(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Add a camera by its RTSP URL (and optional HTTP snapshot URL)."""
        errors: dict[str, str] = {}
        if user_input is not None:
            data, info = await self._async_test(user_input, {}, errors)
            if data is not None and info is not None:
                # The MAC (when the camera is on this link) identifies the
                # camera whatever URL it is reached by; else the URL does.
                unique_id = Identity.from_dict(data[CONF_IDENTITY]).key or normalized_identity(
                    data[CONF_STREAM_URL]
                )
                await self.async_set_unique_id(unique_id)
                self._abort_if_unique_id_configured()
                data[CONF_CAMERA_ID] = unique_id
                return self.async_create_entry(title=_title(data[CONF_STREAM_URL]), data=data)
        return self.async_show_form(
            step_id="url",
            data_schema=self.add_suggested_values_to_schema(
                _url_schema({}), _without_password(user_input)
            ),
            errors=errors,
            description_placeholders=self._placeholders,
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Change the URLs or credentials of a configured camera."""
        entry: LocalCamConfigEntry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            # An empty password field keeps the stored one: passwords are
            # never sent back to the browser to prefill the form.
            if not user_input.get(CONF_PASSWORD) and user_input.get(
                CONF_USERNAME
            ) == entry.data.get(CONF_USERNAME):
                user_input = {**user_input, CONF_PASSWORD: entry.data.get(CONF_PASSWORD)}
            data, info = await self._async_test(user_input, entry.options, errors)
            if data is not None and info is not None:
                stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
                observed = Identity.from_dict(data[CONF_IDENTITY])
                try:
                    stored.check(observed, _title(data[CONF_STREAM_URL]))
                except IdentityMismatchError:
                    return self.async_abort(reason="wrong_camera")
                identity = stored.merged(observed)
                data[CONF_IDENTITY] = identity.as_dict()
                unique_id = identity.key or normalized_identity(data[CONF_STREAM_URL])
                if unique_id != entry.unique_id and (
                    self.hass.config_entries.async_entry_for_domain_unique_id(DOMAIN, unique_id)
                ):
                    return self.async_abort(reason="already_configured")
                return self.async_update_reload_and_abort(
                    entry, unique_id=unique_id, data_updates=data
                )
        defaults = user_input or dict(entry.data)
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _url_schema(defaults), _without_password(defaults)
            ),
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
            data, info = await self._async_test(candidate, entry.options, errors)
            if data is not None and info is not None:
                return self.async_update_reload_and_abort(
                    entry,
                    data_updates={
                        CONF_USERNAME: data[CONF_USERNAME],
                        CONF_PASSWORD: data[CONF_PASSWORD],
                    },
                )
        self._placeholders.setdefault("name", entry.title)
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=_credentials_schema(entry.data.get(CONF_USERNAME)),
            errors=errors,
            description_placeholders={**self._placeholders, "name": entry.title},
        )

    async def _async_test(
        self,
        user_input: Mapping[str, Any],
        options: Mapping[str, Any],
        errors: dict[str, str],
    ) -> tuple[dict[str, Any] | None, StreamInfo | None]:
        """Test before configure; fill ``errors`` and return the entry data.

        Credentials typed into a URL are moved to the username and password
        fields, so that no URL we store, log or show holds a secret.
        """
        self._placeholders = {}
        stream_url, url_user, url_password = split_credentials(
            str(user_input[CONF_STREAM_URL]).strip()
        )
        snapshot_url: str | None = None
        snap_user: str | None = None
        snap_password: str | None = None
        if raw_snapshot := str(user_input.get(CONF_SNAPSHOT_URL) or "").strip():
            snapshot_url, snap_user, snap_password = split_credentials(raw_snapshot)
        username = user_input.get(CONF_USERNAME) or url_user or snap_user or None
        password = user_input.get(CONF_PASSWORD) or url_password or snap_password or None
        policy = policy_from_options(options)
        field = CONF_STREAM_URL
        try:
            await policy.check(stream_url, schemes=STREAM_SCHEMES)
            if snapshot_url is not None:
                field = CONF_SNAPSHOT_URL
                await policy.check(snapshot_url, schemes=SNAPSHOT_SCHEMES)
            field = "base"
            source = CameraSource(
                camera_id="config_flow",
                stream_url=stream_url,
                snapshot_url=snapshot_url,
                username=username,
                password=password,
                verify_ssl=bool(user_input.get(CONF_VERIFY_SSL, True)),
                rtsp_transport=RtspTransport(
                    options.get(CONF_RTSP_TRANSPORT, DEFAULT_RTSP_TRANSPORT)
                ),
            )
            client = CameraClient(async_get_clientsession(self.hass), policy, source)
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


def _without_password(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return form values to show again, never including the password."""
    return {k: v for k, v in (values or {}).items() if k != CONF_PASSWORD and v is not None}


class LocalCamOptionsFlow(OptionsFlowWithReload):
    """Behaviour of a configured camera; saving reloads the entry."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Edit max age, RTSP transport and extra allowed networks."""
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {"reason": ""}
        if user_input is not None:
            try:
                parse_networks(user_input.get(CONF_ALLOWED_NETWORKS, ""))
            except ValueError as err:
                errors[CONF_ALLOWED_NETWORKS] = "invalid_networks"
                placeholders["reason"] = str(err)
            else:
                return self.async_create_entry(data=user_input)
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
                probatio.Optional(CONF_ALLOWED_NETWORKS, default=""): TextSelector(
                    TextSelectorConfig(multiline=True)
                ),
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
