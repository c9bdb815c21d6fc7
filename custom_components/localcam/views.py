"""LocalCam's own still endpoint, with the frame's provenance in its headers."""

from http import HTTPStatus
import time
from typing import Final

from aiohttp import web
from homeassistant.auth.permissions.const import POLICY_READ
from homeassistant.components.camera.const import DATA_COMPONENT
from homeassistant.components.http.const import KEY_HASS_USER
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError, Unauthorized
from homeassistant.helpers.http import KEY_HASS, HomeAssistantView

from .camera import LocalCamCamera
from .const import HEADER_AGE
from .helpers import still_error_status

MAX_SIZE: Final = 8192


@callback
def async_register_views(hass: HomeAssistant) -> None:
    """Register the views once per Home Assistant instance."""
    hass.http.register_view(LocalCamSnapshotView())


def _size(request: web.Request, name: str) -> int | None:
    """Parse an optional positive size from the query (400 otherwise)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    # ASCII digits only (str.isdigit also accepts "²", which int() refuses),
    # and few of them (int() refuses thousands of digits).
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5) or not 0 < int(raw) <= MAX_SIZE:
        raise web.HTTPBadRequest(text=f"{name} must be an integer from 1 to {MAX_SIZE}")
    return int(raw)


def _none_match(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match names this frame (RFC 9110 13.1.2).

    Weak comparison (a client may send W/"..."), "*" matches the current
    frame, and every If-None-Match header counts.
    """
    for value in request.headers.getall("If-None-Match", ()):
        for listed in value.split(","):
            if listed.strip().removeprefix("W/") in (etag, "*"):
                return True
    return False


class LocalCamSnapshotView(HomeAssistantView):
    """GET /api/localcam/snapshot/{entity_id}: a fresh still of one LocalCam camera.

    Beside the JPEG it says which camera (unique id), when the frame arrived
    from the camera and from which source, with a content ETag so a client
    that already has this frame gets a 304, and ``Cache-Control: no-store``
    so no browser or proxy cache can ever serve it in place of a new one.
    """

    url = "/api/localcam/snapshot/{entity_id}"
    name = "api:localcam:snapshot"
    requires_auth = True

    async def get(self, request: web.Request, entity_id: str) -> web.StreamResponse:
        """Serve the still or a plain error status."""
        hass = request.app[KEY_HASS]
        # Read permission on the camera entity, as HA's states API checks it
        # (a user whose policy leaves the camera out gets 401, whether or
        # not it exists).
        if not request[KEY_HASS_USER].permissions.check_entity(entity_id, POLICY_READ):
            raise Unauthorized(entity_id=entity_id, permission=POLICY_READ)
        component = hass.data.get(DATA_COMPONENT)
        entity = component.get_entity(entity_id) if component else None
        if not isinstance(entity, LocalCamCamera):
            return web.Response(status=HTTPStatus.NOT_FOUND)
        width = height = None
        if request.query_string:  # most clients ask for the camera's own size
            width, height = _size(request, "width"), _size(request, "height")
            if (width is None) != (height is None):
                raise web.HTTPBadRequest(text="give both width and height, or neither")
        try:
            # A warm camera's frame without a coroutine; otherwise wait for one.
            snapshot = entity.cached_snapshot(width, height) or await entity.async_snapshot(
                width, height
            )
        except HomeAssistantError as err:
            return web.Response(status=still_error_status(err), text=err.translation_key or "error")
        provenance = entity.provenance_headers(snapshot)
        etag = provenance["ETag"]
        # Its age as it is sent, on the monotonic clock it was stamped with:
        # never over max age (a client can check it; the wall clock of
        # Captured-At may differ between hosts).
        age = f"{max(time.monotonic() - snapshot.captured_at, 0.0):.3f}"
        if _none_match(request, etag):
            # RFC 9110 15.4.5: a 304 repeats ETag and Cache-Control, and
            # SHOULD NOT resend the representation's other metadata: the
            # client holds this very frame, with its camera, capture time
            # and source from the 200 that brought it.
            return web.Response(
                status=HTTPStatus.NOT_MODIFIED,
                headers={"ETag": etag, "Cache-Control": "no-store", HEADER_AGE: age},
            )
        return web.Response(
            body=snapshot.jpeg, content_type="image/jpeg", headers={**provenance, HEADER_AGE: age}
        )
