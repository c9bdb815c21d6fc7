"""Health of one camera: a light DESCRIBE a minute, never an image."""

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
import math
from typing import TYPE_CHECKING, Any, Final, override

from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from homeassistant.util import dt as dt_util
from homeassistant.util.hass_dict import HassKey

from .const import CONF_IDENTITY, CONF_ONVIF, DOMAIN, HEALTH_INTERVAL_SECONDS, LOGGER
from .core.errors import InvalidAuthError, LocalCamError, NoVideoError, StreamRefusedError
from .core.identity import Identity, IdentityMismatchError
from .core.netpolicy import Target, host_and_port
from .core.snapshot import CameraClient
from .helpers import async_observe_identity, entry_is_running, other_streams

IDENTITY_ISSUE_PREFIX = "identity_mismatch_"
# Checks of a round that one host and port (an NVR serving several channels
# as several entries) answers at a time; the others start as these end.
HEALTH_CHECKS_PER_HOST: Final = 2
# A camera checked this recently (its setup, update_entity) skips a round.
HEALTH_RECHECK_SECONDS: Final = HEALTH_INTERVAL_SECONDS / 4
DATA_HEALTH_ROUNDS: HassKey[HealthRounds] = HassKey(f"{DOMAIN}_health_rounds")

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
    # Streams (profiles) the device answered but refused in this check: the
    # main one, when another stream of the device proved it healthy.
    down: frozenset[str] = frozenset()


class HealthRounds:
    """Every LocalCam camera's health check, started together once a minute.

    One timer for all cameras instead of one per coordinator (each of which
    DataUpdateCoordinator staggers by a random fraction of a second): an idle
    Home Assistant then wakes once a minute for all its cameras, and their
    checks run concurrently while the event loop, the interpreter's caches
    and the CPU are awake. Spread over the minute, every check paid that
    wake-up alone: on this project's machines a check cost about 1.3 ms of
    CPU alone and 0.3-0.4 ms in a round of 32, and bench/run's idle window
    (32 cameras) went from 0.08-0.12 % of a core to about 0.05 %.

    The rounds keep DataUpdateCoordinator's rules for when to poll: only a
    coordinator that has listeners (an entity), not while the entry's polling
    is disabled, not after an authentication failure (the reauth flow
    reloads the entry), not while Home Assistant stops, never a second check
    of one camera while its previous one runs or waits, and none right after
    a check that ran otherwise (setup, ``homeassistant.update_entity``, a
    stream's identity failure): as a refresh re-arms the coordinator's own
    timer. UpdateFailed's ``retry_after`` is not honoured (LocalCam raises
    none). One host and port (an NVR's channels, added as several entries)
    gets HEALTH_CHECKS_PER_HOST checks of a round at a time; the others start
    as those end. Checks outside the rounds are not held back.
    """

    def __init__(self, hass: HomeAssistant) -> None:
        """No timer runs until a camera joins."""
        self.hass = hass
        self.interval = timedelta(seconds=HEALTH_INTERVAL_SECONDS)
        # Each member's last check started by a round (None: none yet).
        self._members: dict[LocalCamCoordinator, asyncio.Task[None] | None] = {}
        self._waiting: set[LocalCamCoordinator] = set()  # due, behind its host's other checks
        self._unsub_timer: CALLBACK_TYPE | None = None

    @classmethod
    def of(cls, hass: HomeAssistant) -> HealthRounds:
        """This Home Assistant's rounds."""
        if (rounds := hass.data.get(DATA_HEALTH_ROUNDS)) is None:
            rounds = hass.data[DATA_HEALTH_ROUNDS] = cls(hass)
        return rounds

    @property
    def running(self) -> bool:
        """Whether the round timer runs (some camera is a member)."""
        return self._unsub_timer is not None

    @callback
    def async_join(self, coordinator: LocalCamCoordinator) -> None:
        """Check this camera in every round from now on."""
        self._members.setdefault(coordinator, None)
        if self._unsub_timer is None:
            self._unsub_timer = async_track_time_interval(
                self.hass,
                self._async_round,
                self.interval,
                name=f"{DOMAIN} health checks",
                cancel_on_shutdown=True,
            )

    @callback
    def async_leave(self, coordinator: LocalCamCoordinator) -> None:
        """Stop checking this camera; the timer stops with the last one."""
        self._members.pop(coordinator, None)
        self._waiting.discard(coordinator)
        if not self._members and self._unsub_timer is not None:
            self._unsub_timer()
            self._unsub_timer = None

    @callback
    def _async_round(self, _now: datetime) -> None:
        """Start every due camera's check (eagerly: each runs to its first wait)."""
        if self.hass.is_stopping:
            return
        recent = self.hass.loop.time() - HEALTH_RECHECK_SECONDS
        hosts: dict[str, deque[LocalCamCoordinator]] = {}
        for coordinator, previous in self._members.items():
            if coordinator in self._waiting or (previous is not None and not previous.done()):
                continue  # still checking: a hanging camera gets no second check
            if not coordinator.polls or coordinator.check_started > recent:
                continue
            hosts.setdefault(coordinator.host, deque()).append(coordinator)
            self._waiting.add(coordinator)
        for queue in hosts.values():
            for _ in range(HEALTH_CHECKS_PER_HOST):
                self._async_start_next(queue)

    @callback
    def _async_start_next(self, queue: deque[LocalCamCoordinator]) -> None:
        """Start the next check of one host's queue; its end starts the one after."""
        while queue:
            coordinator = queue.popleft()
            self._waiting.discard(coordinator)
            if coordinator not in self._members or self.hass.is_stopping:
                continue  # it left (unloaded) while it waited
            entry = coordinator.config_entry
            # An entry's task: cancelled if the entry unloads during the check.
            task = entry.async_create_background_task(
                self.hass,
                coordinator.async_refresh(),
                name=f"{coordinator.name} - {entry.title} - refresh",
                eager_start=True,
            )
            self._members[coordinator] = task
            task.add_done_callback(lambda _task: self._async_start_next(queue))
            return


class LocalCamCoordinator(DataUpdateCoordinator[CameraHealth]):
    """Checks that the camera answers; drives entity availability.

    DataUpdateCoordinator logs once when the check starts failing and once
    when it recovers, which is the log-when-unavailable behaviour we want.
    Its own timer is off: HealthRounds checks every camera together.
    """

    config_entry: LocalCamConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: LocalCamConfigEntry,
        client: CameraClient,
        main: str = "",
        others: Mapping[str, CameraClient] | None = None,
    ) -> None:
        """Bind the main stream's client, and the device's other streams' (by profile)."""
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {entry.title}",
            update_interval=None,
            always_update=False,
        )
        self.client = client
        self.main = main
        self.others = dict(others or {})
        self.last_error: str | None = None
        self._rounds = HealthRounds.of(hass)
        # A device serving several streams serves them on one host and port.
        self.host = host_and_port(client.source.stream_url)
        self.check_started = -math.inf  # loop time of the last check's start
        self._listening = 0
        # Whether a re-pin by serial was tried since the last good check (_async_relink).
        self._relink_tried = False

    @property
    def polls(self) -> bool:
        """Whether the rounds check this camera (DataUpdateCoordinator's own rules)."""
        if self.config_entry.pref_disable_polling:
            return False
        return self.last_update_success or not isinstance(
            self.last_exception, ConfigEntryAuthFailed
        )

    @property
    def check_interval(self) -> timedelta | None:
        """How often the rounds check this camera now (None: they do not)."""
        return self._rounds.interval if self._listening and self.polls else None

    @override
    @callback
    def async_add_listener(
        self, update_callback: CALLBACK_TYPE, context: Any = None
    ) -> Callable[[], None]:
        """Join the rounds with the first listener, leave them with the last."""
        remove = super().async_add_listener(update_callback, context)
        self._listening += 1
        if self._listening == 1:
            self._rounds.async_join(self)
        removed = False

        @callback
        def remove_listener() -> None:
            nonlocal removed
            if removed:
                return
            removed = True
            remove()
            self._listening -= 1
            if not self._listening:
                self._rounds.async_leave(self)

        return remove_listener

    @override
    async def async_shutdown(self) -> None:
        """Leave the rounds too."""
        self._rounds.async_leave(self)
        await super().async_shutdown()

    @override
    async def _async_update_data(self) -> CameraHealth:
        """Run one health check."""
        self.check_started = self.hass.loop.time()
        down: frozenset[str] = frozenset()
        try:
            try:
                target = await self.client.check_health()
            except (StreamRefusedError, NoVideoError) as err:
                target = await self._async_other_stream(err)
                # Every profile on the refused URL: the main one, and any other
                # that reports the same stream (it is the same refusal).
                refused = self.client.source.stream_url
                down = frozenset(
                    {self.main}
                    | {p for p, c in self.others.items() if c.source.stream_url == refused}
                )
        except IdentityMismatchError as err:
            self.last_error = err.translation_key
            if err.field == "mac" and await self._async_relink():
                # Not the mismatch: the same camera, re-pinned; its entry reloads.
                raise UpdateFailed(
                    translation_domain=DOMAIN,
                    translation_key="health_identity_relinked",
                    translation_placeholders=err.placeholders,
                ) from err
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
        self._relink_tried = False
        ir.async_delete_issue(self.hass, DOMAIN, self._identity_issue_id)
        return CameraHealth(
            checked_at=dt_util.utcnow(), address=str(target.address), target=target, down=down
        )

    async def _async_other_stream(self, refused: LocalCamError) -> Target:
        """The device answered but refused its main stream: is another of its streams served?

        An NVR's channels are one ONVIF entry: the channel of an unplugged
        camera (404, no video) must not take every other channel down with
        it. Other stream URLs are tried one at a time, OTHER_STREAM_TRIES at
        most; the first that passes the whole check (identity included)
        proves the device. Otherwise the main stream's refusal stands, unless
        another stream showed more: a 401 (reauth) or another device at the
        address (the repair), which the refusal would hide.
        """
        for client in other_streams(
            self.client, self.others.values(), lambda c: c.source.stream_url
        ):
            try:
                return await client.check_health()
            except InvalidAuthError, IdentityMismatchError:
                raise
            except LocalCamError:
                continue
        raise refused

    async def _async_relink(self) -> bool:
        """Re-pin an ONVIF camera by its serial when the link shows another MAC than it reports.

        The entry holds the MAC the device reports over ONVIF (stored while
        the link showed none, or by an earlier LocalCam); a Wi-Fi repeater
        that rewrites MACs, or the camera's other network interface, shows
        another one on the link, and every check of the same camera failed.
        The device is asked who it is (with the entry's credentials, at its
        own address); only if it repeats every other stored field, the serial
        among them (``Identity.proves_move``, as for following a camera), is
        the entry pinned as the config flow pins such a camera now: serial
        and UUID, checked by asking it after each fetch. It reloads; any
        other answer is the mismatch it was (the caller raises the repair).
        """
        entry = self.config_entry
        stored = Identity.from_dict(entry.data.get(CONF_IDENTITY))
        if not entry.data.get(CONF_ONVIF) or not stored.serial or not entry_is_running(entry):
            return False
        if self._relink_tried:
            # Asked once since the last good check: a device that did not
            # repeat the camera's serial then is not asked again each minute
            # (every read carries the camera's WS-Security digest).
            return False
        self._relink_tried = True
        data = entry.data
        try:
            seen = await async_observe_identity(self.hass, data, entry.options)
        except LocalCamError:
            return False
        if not entry_is_running(entry) or entry.data is not data:
            # Unloaded, removed or reconfigured while its device was read (a
            # check outside the entry's tasks, such as update_entity's): what
            # was read is no longer this entry's device to re-pin.
            return False
        without_mac = Identity(serial=stored.serial, uuid=stored.uuid)
        # A MAC kept in ``seen`` means the link agrees with the device's report
        # (or shows none): then the mismatch is real, not a rewritten MAC.
        if seen.identity.mac is not None or not without_mac.proves_move(seen.identity, None):
            return False
        LOGGER.warning(
            "%s: the link shows another MAC than the camera reports (a repeater that rewrites "
            "MACs, or its other network interface); pinned by its serial from now on",
            entry.title,
        )
        self.hass.config_entries.async_update_entry(
            entry, data={**entry.data, CONF_IDENTITY: seen.identity.as_dict()}
        )
        self.hass.config_entries.async_schedule_reload(entry.entry_id)
        return True

    @property
    def _identity_issue_id(self) -> str:
        """One repair issue per entry for 'a different device answers'."""
        return f"{IDENTITY_ISSUE_PREFIX}{self.config_entry.entry_id}"
