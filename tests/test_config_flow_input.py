"""What users type into the setup forms: credentials inside URLs."""

from typing import Any

from homeassistant.config_entries import SOURCE_USER
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import config_validation as cv
import probatio
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.localcam.config_flow import _without_password
from custom_components.localcam.const import (
    CONF_CAMERA_ID,
    CONF_SNAPSHOT_URL,
    CONF_STREAM_URL,
    CONF_VERIFY_SSL,
    DOMAIN,
)
from custom_components.localcam.core.netpolicy import normalized_identity
from virtualcam import VirtualCamera

from .conftest import CAM_PASSWORD, CAM_USER

# Nothing listens here, and nothing is ever connected to: the snapshot URL is
# refused by the LAN policy before any connection is made.
STREAM = "rtsp://127.0.0.1:9/stream"
PUBLIC_SNAPSHOT = "http://198.51.100.7/snap.jpg"


def _as_sent(result: dict[str, Any]) -> str:
    """The form as Home Assistant's HTTP view sends it to the browser."""
    return str(
        probatio.to_field_list(result["data_schema"], custom_serializer=cv.custom_serializer)
    )


async def test_a_password_typed_into_the_url_is_not_echoed_back_by_the_add_form(
    hass: HomeAssistant,
) -> None:
    """rtsp://user:pass@host/ and a form error: the form comes back without the password.

    The password field is never sent back to the browser; the same password
    typed into the URL came back in the URL field's suggested value.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    url = STREAM.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url, CONF_SNAPSHOT_URL: PUBLIC_SNAPSHOT, CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_SNAPSHOT_URL: "not_local"}
    sent = _as_sent(result)
    assert CAM_PASSWORD not in sent
    # The address itself is kept for the user to fix the other field.
    assert "127.0.0.1:9/stream" in sent
    # Typed without its scheme, the URL is refused: and shown again without the password.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url.removeprefix("rtsp://"), CONF_VERIFY_SSL: True},
    )
    assert result["errors"] == {CONF_STREAM_URL: "invalid_url"}
    assert CAM_PASSWORD not in _as_sent(result)


async def test_a_password_typed_into_the_url_is_not_echoed_back_by_reconfigure(
    hass: HomeAssistant,
) -> None:
    """The same for the reconfigure form."""
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="127.0.0.1:9",
        unique_id=normalized_identity(STREAM),
        data={
            CONF_STREAM_URL: STREAM,
            CONF_SNAPSHOT_URL: None,
            CONF_USERNAME: CAM_USER,
            CONF_PASSWORD: "old-password",
            CONF_VERIFY_SSL: True,
            CONF_CAMERA_ID: normalized_identity(STREAM),
        },
    )
    entry.add_to_hass(hass)
    result = await entry.start_reconfigure_flow(hass)
    url = STREAM.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {
            CONF_STREAM_URL: url,
            CONF_SNAPSHOT_URL: PUBLIC_SNAPSHOT,
            CONF_USERNAME: CAM_USER,
            CONF_VERIFY_SSL: True,
        },
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_SNAPSHOT_URL: "not_local"}
    sent = _as_sent(result)
    assert CAM_PASSWORD not in sent
    assert "old-password" not in sent


# --- Credentials typed into the URL and into the fields -----------------------------


async def test_the_account_typed_into_the_url_is_not_paired_with_another_username(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """rtsp://user:pass@host/ with another name in the username field (a browser's autofill).

    The add form tried the field's username with the URL's password (an
    account that does not exist: invalid_auth); reconfigure already takes
    the account typed into the URL as a whole, and so does adding now.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    url = rtsp_only_camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: url, CONF_USERNAME: "homeassistant", CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result.get("errors")
    assert (result["data"][CONF_USERNAME], result["data"][CONF_PASSWORD]) == (
        CAM_USER,
        CAM_PASSWORD,
    )


RAW_SECRET = "Zq7x"


@pytest.mark.parametrize(
    "url",
    [
        # Generated passwords often hold these; typed raw, the URL does not parse.
        f"rtsp://admin:{RAW_SECRET}/w@127.0.0.1:9/stream",
        f"rtsp://admin:{RAW_SECRET}#w@127.0.0.1:9/stream",
        f"rtsp://admin:{RAW_SECRET}?w@127.0.0.1:9/stream",
        # Without its scheme but with the slashes: no parser's userinfo either.
        f"//admin:{RAW_SECRET}@127.0.0.1:9/stream",
        # An "@" in the password too ("a@127.0.0.1/Zq7x"): the URL parses, with
        # its host at the first "@" (nothing listens there); cut at the last one.
        f"rtsp://admin:a@127.0.0.1/{RAW_SECRET}@127.0.0.1:9/stream",
    ],
)
async def test_a_url_password_with_a_delimiter_is_not_echoed_back(
    hass: HomeAssistant, url: str, socket_enabled: None
) -> None:
    """A password typed raw with "/", "?", "#" or "@" in it: the form comes back without it.

    Such a URL does not parse (or parses with its host inside the password);
    the userinfo was only looked for before the first "/", "?" or "#", and the
    whole URL came back as the field's value.
    """
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_STREAM_URL: url, CONF_VERIFY_SSL: True}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"]
    assert RAW_SECRET not in _as_sent(result)


@pytest.mark.parametrize(
    "url",
    [
        # A password like "2024/Zq7x": the URL parses, with host "admin" and port 2024.
        f"rtsp://admin:2024/{RAW_SECRET}@127.0.0.1:9/stream",
        f"rtsp://admin:2024#{RAW_SECRET}@127.0.0.1:9/stream",
        f"rtsp://admin:2024?{RAW_SECRET}@127.0.0.1:9/stream",
        f"http://admin:8080/{RAW_SECRET}@127.0.0.1/snap.jpg",
    ],
)
def test_a_raw_password_that_starts_with_digits_is_not_shown_back(url: str) -> None:
    """Such a URL parses with a host and no user, and came back whole, password and all."""
    shown = _without_password({CONF_STREAM_URL: url})
    assert RAW_SECRET not in shown[CONF_STREAM_URL]


@pytest.mark.parametrize(
    "url",
    [
        "https://cam.local/snap.jpg?user=a@b.c&x=1",
        "rtsp://192.168.1.5:554/ch1?auth=a:b@c",
        "rtsp://[::1]:8554/a?b=c:d@e",
        "http://cam:80/snap?x=1:2@3",
        "rtsp://[fd00::5]:554/stream1",
        "http://[fe80::1%25eth0]/snap.jpg",
    ],
)
def test_a_url_without_userinfo_is_shown_unchanged(url: str) -> None:
    """An "@" in a query (key=value), IPv6 hosts, ports: nothing to hide, nothing changed."""
    assert _without_password({CONF_STREAM_URL: url}) == {CONF_STREAM_URL: url}
