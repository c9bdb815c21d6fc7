"""Fix flows for LocalCam's repair issues.

Only "a different device answers at the camera's address" has one: when the
user replaced the camera (same address, new device), they confirm, LocalCam
reads the identity of the device now answering, pins the entry to it and
reloads it. Nothing is trusted without that confirmation: until then every
frame from the other device is refused (core.identity / core.snapshot). An
ONVIF camera that refuses the entry's credentials (a new camera, a new
password) is asked again with the ones the user types, which are kept with
the identity they proved.
"""

from collections.abc import Mapping
from typing import Any

from homeassistant import data_entry_flow
from homeassistant.components.repairs import RepairsFlow, RepairsFlowResult
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir

from .const import CONF_DEVICE_INFO, CONF_IDENTITY, CONF_ONVIF, CONF_STREAM_URL, DOMAIN, LOGGER
from .coordinator import IDENTITY_ISSUE_PREFIX
from .core.errors import InvalidAuthError, LocalCamError
from .data import LocalCamConfigEntry
from .helpers import async_observe_identity, credentials_schema, entry_unique_id


class TrustReplacedCameraFlow(RepairsFlow):
    """Pin a camera entry to the device now answering at its address."""

    def __init__(self, entry_id: str) -> None:
        """Bind the entry the issue is about."""
        self._entry_id = entry_id

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> RepairsFlowResult:
        """Start at the confirmation."""
        return await self.async_step_confirm()

    async def async_step_confirm(
        self, user_input: dict[str, str] | None = None
    ) -> RepairsFlowResult:
        """Explain; on confirmation read the new device's identity and pin the entry to it."""
        if (entry := self._entry()) is None:
            return self.async_abort(reason="entry_removed")
        if user_input is not None:
            try:
                return await self._async_trust(entry, entry.data)
            except InvalidAuthError:
                # The new camera (or the camera reset) has other credentials.
                return await self.async_step_credentials()
        return self.async_show_form(
            step_id="confirm", description_placeholders=self._placeholders(entry)
        )

    async def async_step_credentials(
        self, user_input: dict[str, str] | None = None
    ) -> RepairsFlowResult:
        """The device refused the entry's credentials: read it with the ones typed here."""
        if (entry := self._entry()) is None:
            return self.async_abort(reason="entry_removed")
        errors: dict[str, str] = {}
        if user_input is not None:
            data = {
                **entry.data,
                CONF_USERNAME: user_input.get(CONF_USERNAME) or None,
                CONF_PASSWORD: user_input.get(CONF_PASSWORD) or None,
            }
            try:
                return await self._async_trust(entry, data)
            except InvalidAuthError:
                errors["base"] = "invalid_auth"
        return self.async_show_form(
            step_id="credentials",
            data_schema=credentials_schema(entry.data.get(CONF_USERNAME)),
            errors=errors,
            description_placeholders=self._placeholders(entry),
        )

    def _entry(self) -> LocalCamConfigEntry | None:
        """The entry the issue is about, unless it was removed meanwhile."""
        entry = self.hass.config_entries.async_get_entry(self._entry_id)
        return entry if entry is not None and entry.domain == DOMAIN else None

    def _placeholders(self, entry: LocalCamConfigEntry) -> dict[str, str]:
        """The issue's own placeholders (the address), with the camera's current name."""
        issue = ir.async_get(self.hass).async_get_issue(
            DOMAIN, f"{IDENTITY_ISSUE_PREFIX}{entry.entry_id}"
        )
        known = dict(issue.translation_placeholders or {}) if issue is not None else {}
        return {**known, "name": entry.title}

    async def _async_trust(
        self, entry: LocalCamConfigEntry, data: Mapping[str, Any]
    ) -> RepairsFlowResult:
        """Read the identity at the entry's address with ``data``; pin the entry to it.

        Raises InvalidAuthError (the device refused those credentials); any
        other failure ends the flow with its reason.
        """
        try:
            observation = await async_observe_identity(self.hass, data, entry.options)
        except InvalidAuthError:
            raise
        except LocalCamError as err:
            LOGGER.info("Cannot read the identity at %s's address: %s", entry.title, err)
            return self.async_abort(reason="cannot_connect")
        if self._entry() is None:
            # Removed while its device was read: nothing left to pin.
            return self.async_abort(reason="entry_removed")
        observed = observation.identity
        if observed.key is None:
            return self.async_abort(reason="cannot_identify")
        # The entry now stands for the new device: it takes the device's
        # unique id too (with its stream's, for a further stream of a
        # device added by URL), unless another entry configures it already.
        unique_id, _ = entry_unique_id(
            self.hass.config_entries.async_entries(DOMAIN),
            observed,
            entry.data[CONF_STREAM_URL],
            onvif=bool(entry.data.get(CONF_ONVIF)),
            exclude=entry,
        )
        if unique_id is None:
            return self.async_abort(reason="already_configured")
        LOGGER.warning("%s is now pinned to the device at its address (replaced)", entry.title)
        self.hass.config_entries.async_update_entry(
            entry,
            data={
                **entry.data,
                CONF_USERNAME: data.get(CONF_USERNAME),
                CONF_PASSWORD: data.get(CONF_PASSWORD),
                CONF_IDENTITY: observed.as_dict(),
                # Its device page names the new camera (model, firmware);
                # setup gives the device the new MAC only.
                **(
                    {CONF_DEVICE_INFO: observation.device_info}
                    if observation.device_info is not None
                    else {}
                ),
            },
            unique_id=unique_id,
        )
        ir.async_delete_issue(self.hass, DOMAIN, f"{IDENTITY_ISSUE_PREFIX}{entry.entry_id}")
        self.hass.config_entries.async_schedule_reload(entry.entry_id)
        return self.async_create_entry(data={})


async def async_create_fix_flow(
    hass: HomeAssistant, issue_id: str, data: dict[str, Any] | None
) -> RepairsFlow:
    """The fix flow of a fixable issue (only identity mismatches are fixable)."""
    if not issue_id.startswith(IDENTITY_ISSUE_PREFIX) or not data or "entry_id" not in data:
        raise data_entry_flow.UnknownHandler(issue_id)
    return TrustReplacedCameraFlow(str(data["entry_id"]))
