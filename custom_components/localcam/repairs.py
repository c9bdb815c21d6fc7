"""Fix flows for LocalCam's repair issues.

Only "a different device answers at the camera's address" has one: when the
user replaced the camera (same address, new device), they confirm, LocalCam
reads the identity of the device now answering, pins the entry to it and
reloads it. Nothing is trusted without that confirmation: until then every
frame from the other device is refused (core.identity / core.snapshot).
"""

from typing import Any

from homeassistant import data_entry_flow
from homeassistant.components.repairs import RepairsFlow, RepairsFlowResult
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir

from .const import CONF_IDENTITY, CONF_ONVIF, CONF_STREAM_URL, DOMAIN, LOGGER
from .coordinator import IDENTITY_ISSUE_PREFIX
from .core.errors import LocalCamError
from .helpers import async_observe_identity, entry_unique_id


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
        entry = self.hass.config_entries.async_get_entry(self._entry_id)
        if entry is None or entry.domain != DOMAIN:
            return self.async_abort(reason="entry_removed")
        if user_input is not None:
            try:
                observed = (
                    await async_observe_identity(self.hass, entry.data, entry.options)
                ).identity
            except LocalCamError as err:
                LOGGER.info("Cannot read the identity at %s's address: %s", entry.title, err)
                return self.async_abort(reason="cannot_connect")
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
                entry, data={**entry.data, CONF_IDENTITY: observed.as_dict()}, unique_id=unique_id
            )
            ir.async_delete_issue(self.hass, DOMAIN, f"{IDENTITY_ISSUE_PREFIX}{entry.entry_id}")
            self.hass.config_entries.async_schedule_reload(entry.entry_id)
            return self.async_create_entry(data={})
        return self.async_show_form(
            step_id="confirm", description_placeholders={"name": entry.title}
        )


async def async_create_fix_flow(
    hass: HomeAssistant, issue_id: str, data: dict[str, Any] | None
) -> RepairsFlow:
    """The fix flow of a fixable issue (only identity mismatches are fixable)."""
    if not issue_id.startswith(IDENTITY_ISSUE_PREFIX) or not data or "entry_id" not in data:
        raise data_entry_flow.UnknownHandler(issue_id)
    return TrustReplacedCameraFlow(str(data["entry_id"]))
