"""LocalCam actions: ``localcam.cast`` and ``localcam.stop_cast``."""

from typing import Final

from homeassistant.auth.permissions.const import POLICY_CONTROL
from homeassistant.components.camera.const import (
    DATA_COMPONENT as CAMERA_DATA_COMPONENT,
    DOMAIN as CAMERA_DOMAIN,
)
from homeassistant.components.media_player.const import DOMAIN as MP_DOMAIN
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
    split_entity_id,
)
from homeassistant.exceptions import (
    HomeAssistantError,
    ServiceValidationError,
    Unauthorized,
    UnknownUser,
)
from homeassistant.helpers import (
    config_validation as cv,
    entity_registry as er,
    target as target_helpers,
)
import probatio

from .camera import LocalCamCamera
from .cast import (
    ATTR_DURATION,
    ATTR_FORCE,
    ATTR_KEEP_ALIVE,
    ATTR_MEDIA_PLAYER,
    ATTR_MODE,
    ATTR_REFRESH,
    DEFAULT_DURATION,
    DEFAULT_REFRESH,
    MAX_DURATION,
    MAX_REFRESH,
    MIN_REFRESH,
    SERVICE_CAST,
    SERVICE_STOP_CAST,
    async_get_cast_manager,
)
from .cast_views import async_setup_cast
from .const import DOMAIN
from .core.cast_links import CastMode

# Casting adds Cast-specific media info (fMP4 HLS, live stream type) to the
# LOAD, so only Google Cast media players are valid targets.
CAST_PLATFORM: Final = "cast"

CAST_SCHEMA: Final = cv.make_entity_service_schema(
    {
        probatio.Required(ATTR_MEDIA_PLAYER): cv.entity_ids,
        probatio.Optional(ATTR_MODE, default=CastMode.LIVE.value): probatio.In(
            [mode.value for mode in CastMode]
        ),
        probatio.Optional(ATTR_DURATION, default=DEFAULT_DURATION): probatio.All(
            probatio.Coerce(float), probatio.Range(min=0, max=MAX_DURATION)
        ),
        probatio.Optional(ATTR_KEEP_ALIVE, default=True): cv.boolean,
        probatio.Optional(ATTR_REFRESH, default=DEFAULT_REFRESH): probatio.All(
            probatio.Coerce(float), probatio.Range(min=MIN_REFRESH, max=MAX_REFRESH)
        ),
        probatio.Optional(ATTR_FORCE, default=False): cv.boolean,
    }
)
STOP_CAST_SCHEMA: Final = probatio.Schema({probatio.Required(ATTR_MEDIA_PLAYER): cv.entity_ids})


async def _async_check_permission(call: ServiceCall, entity_ids: list[str]) -> None:
    """Refuse entities a non-admin user may not control (as entity actions do)."""
    if not call.context.user_id:
        return
    user = await call.hass.auth.async_get_user(call.context.user_id)
    if user is None:
        # A user deleted since (a long script they started): refused, as
        # HA's own entity actions refuse them, not treated as an admin.
        raise UnknownUser(
            context=call.context, permission=POLICY_CONTROL, user_id=call.context.user_id
        )
    if user.is_admin:
        return
    for entity_id in entity_ids:
        if not user.permissions.check_entity(entity_id, POLICY_CONTROL):
            raise Unauthorized(context=call.context, entity_id=entity_id, permission=POLICY_CONTROL)


def _cast_receivers(hass: HomeAssistant, entity_ids: list[str]) -> list[str]:
    """Return the receivers, or raise when one is not a Google Cast media player.

    An empty list (a blueprint with no display picked, a template that
    rendered none) is an error too: the action would do nothing, silently.
    """
    if not entity_ids:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="cast_no_receiver")
    registry = er.async_get(hass)
    for entity_id in entity_ids:
        entry = registry.async_get(entity_id)
        if (
            split_entity_id(entity_id)[0] != MP_DOMAIN
            or entry is None
            or entry.platform != CAST_PLATFORM
        ):
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="cast_not_a_cast_device",
                translation_placeholders={"entity_id": entity_id},
            )
    return entity_ids


async def _async_target_camera(call: ServiceCall) -> LocalCamCamera:
    """Return the one LocalCam camera the action targets."""
    hass = call.hass
    registry = er.async_get(hass)
    selected = target_helpers.async_extract_referenced_entity_ids(
        hass, target_helpers.TargetSelection(call.data)
    )
    # As HA's entity actions: a disabled entity reached through a label or an
    # area (which index disabled entities too) is not a target; one named
    # explicitly still is (and is then refused as unavailable).
    cameras = sorted(
        entity_id
        for entity_id in selected.referenced | selected.indirectly_referenced
        if split_entity_id(entity_id)[0] == CAMERA_DOMAIN
        and (entry := registry.async_get(entity_id)) is not None
        and entry.platform == DOMAIN
        and (entity_id in selected.referenced or not entry.disabled)
    )
    if len(cameras) != 1:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="cast_one_camera",
            translation_placeholders={"count": str(len(cameras))},
        )
    component = hass.data.get(CAMERA_DATA_COMPONENT)
    entity = component.get_entity(cameras[0]) if component is not None else None
    if not isinstance(entity, LocalCamCamera) or not entity.available:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="cast_camera_unavailable",
            translation_placeholders={"entity_id": cameras[0]},
        )
    return entity


async def _async_cast(call: ServiceCall) -> ServiceResponse:
    """Handle ``localcam.cast``; respond with each display's outcome, if asked.

    With several displays the action succeeds when one shows the camera; an
    automation that asks for the response (``response_variable``) learns
    which displays did: ``{"displays": {"media_player.x": "started" or the
    reason it was left out, e.g. "cast_receiver_busy"}}``.
    """
    camera = await _async_target_camera(call)
    receivers = _cast_receivers(call.hass, call.data[ATTR_MEDIA_PLAYER])
    await _async_check_permission(call, [camera.entity_id, *receivers])
    duration: float = call.data[ATTR_DURATION]
    outcomes = await async_get_cast_manager(call.hass).async_cast(
        camera,
        receivers,
        mode=CastMode(call.data[ATTR_MODE]),
        duration=duration or None,  # 0: until stopped
        keep_alive=call.data[ATTR_KEEP_ALIVE],
        refresh=call.data[ATTR_REFRESH],
        force=call.data[ATTR_FORCE],
        context=call.context,
    )
    return {"displays": dict(outcomes)} if call.return_response else None


async def _async_stop_cast(call: ServiceCall) -> None:
    """Handle ``localcam.stop_cast``; a receiver without a cast is not an error."""
    receivers = _cast_receivers(call.hass, call.data[ATTR_MEDIA_PLAYER])
    await _async_check_permission(call, receivers)
    await async_get_cast_manager(call.hass).async_stop(receivers, context=call.context)


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register LocalCam's actions (once), with the cast manager they drive."""
    async_setup_cast(hass)
    if hass.services.has_service(DOMAIN, SERVICE_CAST):
        return
    hass.services.async_register(
        DOMAIN,
        SERVICE_CAST,
        _async_cast,
        schema=CAST_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN, SERVICE_STOP_CAST, _async_stop_cast, schema=STOP_CAST_SCHEMA
    )
