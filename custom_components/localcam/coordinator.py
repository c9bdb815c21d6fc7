"""Health of one camera: a light DESCRIBE a minute, never an image."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, override

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from homeassistant.util import dt as dt_util

from .const import DOMAIN, HEALTH_INTERVAL_SECONDS, LOGGER
from .core.errors import InvalidAuthError, LocalCamError
from .core.identity import IdentityMismatchError
from .core.netpolicy import Target
from .core.snapshot import CameraClient
from .helpers import entry_is_running

IDENTITY_ISSUE_PREFIX = "identity_mismatch_"

if TYPE_CHECKING:
    from .data import LocalCamConfigEntry


@dataclass(frozen=True, slots=True)
class CameraHealth:
    """The result of the last successful health check.

    Two healthy results compare equal whatever their time, so a check that
    changes nothing writes no entity state (the coordinator's always_update
    is off); the time is still kept for diagnostics. The address the camera's
    host resolved to does compare: when it changes (a camera known by host
    name moved), the entities hear of it and point a running stream there:
    ``target``, the very address checked, not a later lookup's answer.
    """

    checked_at: datetime = field(compare=False)
    address: str
    target: Target = field(compare=False)


class LocalCamCoordinator(DataUpdateCoordinator[CameraHealth]):
    """Checks that the camera answers; drives entity availability.

    DataUpdateCoordinator logs once when the check starts failing and once
    when it recovers, which is the log-when-unavailable behaviour we want.
    """

    config_entry: LocalCamConfigEntry

    def __init__(
        self, hass: HomeAssistant, entry: LocalCamConfigEntry, client: CameraClient
    ) -> None:
        """Bind the camera client."""
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {entry.title}",
            update_interval=timedelta(seconds=HEALTH_INTERVAL_SECONDS),
            always_update=False,
        )
        self.client = client
        self.last_error: str | None = None

    @override
    async def _async_update_data(self) -> CameraHealth:
        """Run one health check."""
        try:
            target = await self.client.check_health()
        except IdentityMismatchError as err:
            self.last_error = err.translation_key
            # Not for a check that was under way when the entry was unloaded
            # or removed: its issues went with it (async_remove_entry), and
            # none may come back for an entry that is not there.
            if entry_is_running(self.config_entry):
                ir.async_create_issue(
                    self.hass,
                    DOMAIN,
                    self._identity_issue_id,
                    # Fixable: if the user replaced the camera, they can trust the new device.
                    is_fixable=True,
                    data={"entry_id": self.config_entry.entry_id},
                    severity=ir.IssueSeverity.ERROR,
                    translation_key="identity_mismatch",
                    translation_placeholders={"host": err.host, "name": self.config_entry.title},
                )
            raise UpdateFailed(
                translation_domain=DOMAIN,
                translation_key="health_identity_mismatch",
                translation_placeholders=err.placeholders,
            ) from err
        except InvalidAuthError as err:
            self.last_error = err.translation_key
            raise ConfigEntryAuthFailed(
                translation_domain=DOMAIN, translation_key="auth_failed"
            ) from err
        except LocalCamError as err:
            self.last_error = err.translation_key
            raise UpdateFailed(
                translation_domain=DOMAIN,
                translation_key=f"health_{err.translation_key}",
                translation_placeholders=err.placeholders,
            ) from err
        self.last_error = None
        ir.async_delete_issue(self.hass, DOMAIN, self._identity_issue_id)
        return CameraHealth(checked_at=dt_util.utcnow(), address=str(target.address), target=target)

    @property
    def _identity_issue_id(self) -> str:
        """One repair issue per entry for 'a different device answers'."""
        return f"{IDENTITY_ISSUE_PREFIX}{self.config_entry.entry_id}"
