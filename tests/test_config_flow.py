"""Config flow: every step, every error, recovery after each error, aborts."""

from typing import Any
from unittest.mock import patch

from homeassistant.config_entries import SOURCE_USER, ConfigEntryState
from homeassistant.const import CONF_PASSWORD, CONF_USERNAME
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
import pytest

from custom_components.localcam.config_flow import _title
from custom_components.localcam.const import (
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
    DOMAIN,
)
from custom_components.localcam.core.errors import CannotConnectError
from custom_components.localcam.core.netpolicy import normalized_identity
from virtualcam import Fault, VirtualCamera

from .conftest import CAM_PASSWORD, CAM_USER, make_entry, setup_entry

pytestmark = pytest.mark.usefixtures("secrets_absent_from_logs")


async def _url_form(hass: HomeAssistant) -> str:
    """Open the flow, pick the URL entry of the menu, return the flow id."""
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.MENU
    assert result["menu_options"] == ["scan", "onvif", "url"]
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"next_step_id": "url"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "url"
    assert result["errors"] == {}
    return str(result["flow_id"])


def _input(cam: VirtualCamera, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        CONF_STREAM_URL: cam.rtsp_url,
        CONF_SNAPSHOT_URL: cam.snapshot_url,
        CONF_USERNAME: CAM_USER,
        CONF_PASSWORD: CAM_PASSWORD,
        CONF_VERIFY_SSL: True,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


async def test_add_camera(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """A camera that streams and snapshots is tested, then created."""
    flow_id = await _url_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == f"127.0.0.1:{camera.rtsp_port}"
    data = result["data"]
    assert data[CONF_STREAM_URL] == camera.rtsp_url
    assert data[CONF_SNAPSHOT_URL] == camera.snapshot_url
    assert data[CONF_USERNAME] == CAM_USER
    assert data[CONF_PASSWORD] == CAM_PASSWORD
    # What the test before configure decoded from the first frame.
    assert (data[CONF_CODEC], data[CONF_WIDTH], data[CONF_HEIGHT]) == ("h264", 320, 180)
    entry = result["result"]
    assert entry.unique_id == normalized_identity(camera.rtsp_url)
    assert data[CONF_CAMERA_ID] == entry.unique_id
    assert entry.options == {}  # no extra allowed networks unless typed in
    assert CAM_PASSWORD not in entry.unique_id
    assert camera.stats.play_sessions >= 1
    assert camera.stats.snapshot_requests >= 1


async def test_a_self_signed_rtsps_camera_is_added_with_verification_off(
    hass: HomeAssistant, rtsps_camera: VirtualCamera
) -> None:
    """rtsps with a self-signed certificate: refused while verifying, added once it is off.

    The test before configure decodes a frame through the loopback relay,
    which holds the TLS connection as "Verify SSL certificate" says.
    """
    flow_id = await _url_form(hass)
    values = _input(rtsps_camera, **{CONF_SNAPSHOT_URL: None})
    result = await hass.config_entries.flow.async_configure(flow_id, values)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_certificate"}
    assert result["description_placeholders"]["reason"] == "self-signed certificate"
    result = await hass.config_entries.flow.async_configure(
        flow_id, {**values, CONF_VERIFY_SSL: False}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"][CONF_STREAM_URL] == rtsps_camera.rtsp_url
    assert (result["data"][CONF_CODEC], result["data"][CONF_WIDTH]) == ("h264", 320)
    assert rtsps_camera.stats.play_sessions >= 1


async def test_credentials_typed_into_the_url_are_moved_out(
    hass: HomeAssistant, rtsp_only_camera: VirtualCamera
) -> None:
    """rtsp://user:pass@host/ works, and no stored URL keeps the secret."""
    flow_id = await _url_form(hass)
    url = rtsp_only_camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_STREAM_URL: url, CONF_VERIFY_SSL: True}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    data = result["data"]
    assert data[CONF_STREAM_URL] == rtsp_only_camera.rtsp_url
    assert data[CONF_SNAPSHOT_URL] is None
    assert (data[CONF_USERNAME], data[CONF_PASSWORD]) == (CAM_USER, CAM_PASSWORD)
    assert CAM_PASSWORD not in result["title"]


async def test_camera_on_a_vpn_range_is_added_with_its_network_allowed(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """The add form's extra allowed networks let a VPN address through, and become options.

    Options exist only once the entry does: without the field, a camera on
    100.64.0.0/10 (Tailscale) could never pass the test before configure.
    """
    flow_id = await _url_form(hass)
    vpn = {CONF_STREAM_URL: "rtsp://100.64.0.5/stream", CONF_SNAPSHOT_URL: None}
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera, **vpn))
    assert result["errors"] == {CONF_STREAM_URL: "not_local"}
    too_wide = _input(camera, **vpn, **{CONF_ALLOWED_NETWORKS: "0.0.0.0/0"})  # refused
    result = await hass.config_entries.flow.async_configure(flow_id, too_wide)
    assert result["errors"] == {CONF_ALLOWED_NETWORKS: "invalid_networks"}
    assert result["description_placeholders"]["reason"]
    # Allowed, the address reaches the probe, stubbed: no packet leaves this host.
    allowed = {CONF_ALLOWED_NETWORKS: "100.64.0.0/10"}
    with patch(
        "custom_components.localcam.config_flow.CameraClient.probe",
        side_effect=CannotConnectError("stub"),
    ) as probe:
        result = await hass.config_entries.flow.async_configure(
            flow_id, _input(camera, **vpn, **allowed)
        )
    assert result["errors"] == {"base": "cannot_connect"}
    assert probe.called
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera, **allowed))
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].options == allowed


@pytest.mark.parametrize(
    ("overrides", "field", "error", "placeholders"),
    [
        ({CONF_STREAM_URL: "ftp://127.0.0.1/stream"}, CONF_STREAM_URL, "invalid_url", {"reason"}),
        ({CONF_STREAM_URL: "not a url"}, CONF_STREAM_URL, "invalid_url", {"reason"}),
        (
            {CONF_STREAM_URL: "rtsp://203.0.113.9/stream"},
            CONF_STREAM_URL,
            "not_local",
            {"host", "reason"},
        ),
        (
            {CONF_STREAM_URL: "rtsp://[2001:db8::1]/s"},
            CONF_STREAM_URL,
            "not_local",
            {"host", "reason"},
        ),
        ({CONF_STREAM_URL: "rtsp://2130706433/stream"}, CONF_STREAM_URL, "invalid_url", {"reason"}),
        (
            {CONF_SNAPSHOT_URL: "http://198.51.100.7/snap.jpg"},
            CONF_SNAPSHOT_URL,
            "not_local",
            {"host", "reason"},
        ),
        (
            {CONF_SNAPSHOT_URL: "rtsp://127.0.0.1/snap"},
            CONF_SNAPSHOT_URL,
            "invalid_url",
            {"reason"},
        ),
        (
            {CONF_STREAM_URL: "rtsp://127.0.0.1:99999/stream"},
            CONF_STREAM_URL,
            "invalid_url",
            {"reason"},
        ),
        ({CONF_SNAPSHOT_URL: "http://[::1/snap.jpg"}, CONF_SNAPSHOT_URL, "invalid_url", {"reason"}),
        ({CONF_PASSWORD: "wrong"}, "base", "invalid_auth", set()),
    ],
    ids=[
        "scheme",
        "garbage",
        "public-v4",
        "public-v6",
        "decimal-ip",
        "public-snapshot",
        "snapshot-scheme",
        "unparsable",
        "unparsable-snapshot",
        "wrong-password",
    ],
)
async def test_errors_and_recovery(
    hass: HomeAssistant,
    camera: VirtualCamera,
    overrides: dict[str, Any],
    field: str,
    error: str,
    placeholders: set[str],
) -> None:
    """Each input error shows on its field, and fixing it completes the flow."""
    flow_id = await _url_form(hass)
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera, **overrides))
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {field: error}
    assert placeholders <= set(result["description_placeholders"] or {})
    if "host" in placeholders:
        assert result["description_placeholders"]["host"] in str(overrides)
    # The password is never echoed back into the form.
    assert CAM_PASSWORD not in str(result["data_schema"].schema)
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.REFUSE, "cannot_connect"),
        (Fault.HANG, "timeout"),
        (Fault.UNAUTHORIZED, "invalid_auth"),
    ],
)
async def test_camera_faults_and_recovery(
    hass: HomeAssistant, camera: VirtualCamera, fault: Fault, error: str
) -> None:
    """A refusing, hanging or 401-answering camera gives its error; then works."""
    flow_id = await _url_form(hass)
    camera.fault = fault
    with patch("custom_components.localcam.config_flow.PROBE_TIMEOUT", 1.0):
        result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": error}
    camera.fault = None
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


@pytest.mark.parametrize("fault", [Fault.TRUNCATED_JPEG, Fault.WRONG_CONTENT_TYPE])
async def test_broken_snapshot_url(
    hass: HomeAssistant, camera: VirtualCamera, fault: Fault
) -> None:
    """A snapshot URL that serves a broken image is refused on its field."""
    flow_id = await _url_form(hass)
    camera.fault = fault
    # The stream still works (faults on HTTP only affect the snapshot).
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["errors"] == {CONF_SNAPSHOT_URL: "invalid_image"}
    assert result["description_placeholders"]["reason"]
    camera.fault = None
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_unexpected_error_and_recovery(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """An unexpected exception becomes 'unknown' instead of crashing the flow."""
    flow_id = await _url_form(hass)
    with patch(
        "custom_components.localcam.config_flow.CameraClient.probe", side_effect=RuntimeError
    ):
        result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["errors"] == {"base": "unknown"}
    result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_already_configured(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """The same stream, spelled differently, is recognised and aborted."""
    make_entry(camera).add_to_hass(hass)
    flow_id = await _url_form(hass)
    spelled = camera.rtsp_url.replace("/stream", "/stream").replace("rtsp://", "RTSP://")
    result = await hass.config_entries.flow.async_configure(
        flow_id, _input(camera, **{CONF_STREAM_URL: spelled})
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_reconfigure(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """Reconfigure drops the snapshot URL and keeps the stored password."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    result = await entry.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"
    # A typo first: the error shows and nothing is saved.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: "rtsp://198.51.100.1/x", CONF_USERNAME: CAM_USER, CONF_VERIFY_SSL: True},
    )
    assert result["errors"] == {CONF_STREAM_URL: "not_local"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: camera.rtsp_url, CONF_USERNAME: CAM_USER, CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert entry.data[CONF_SNAPSHOT_URL] is None
    assert entry.data[CONF_PASSWORD] == CAM_PASSWORD
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED


async def test_reconfigure_names_stored_networks_setup_refuses(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Networks in the options that setup refuses (an older release's, a hand edit).

    The form says what is wrong with them, not "unexpected error" with a
    traceback in the log; the options fix them.
    """
    entry = make_entry(camera, options={CONF_ALLOWED_NETWORKS: "10.0.0.0/33"})
    await setup_entry(hass, entry)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {CONF_STREAM_URL: camera.rtsp_url, CONF_USERNAME: CAM_USER, CONF_VERIFY_SSL: True},
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_networks"}
    assert "10.0.0.0/33" in result["description_placeholders"]["reason"]


async def test_reconfigure_takes_a_new_password_typed_into_the_url(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """rtsp://user:NEWPASS@host/ wins over the stored password; no stored URL keeps it."""
    entry = make_entry(camera, snapshot=False)
    entry.add_to_hass(hass)
    # The camera's password was changed; the entry still holds the old one.
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_PASSWORD: "old-password"}
    )
    result = await entry.start_reconfigure_flow(hass)
    # The form comes back with the stored username; the password field stays empty.
    form = {CONF_USERNAME: CAM_USER, CONF_VERIFY_SSL: True}
    unparsable = camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@[")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_STREAM_URL: unparsable, **form}
    )
    assert result["errors"] == {CONF_STREAM_URL: "invalid_url"}
    url = camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_STREAM_URL: url, **form}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    assert entry.data[CONF_PASSWORD] == CAM_PASSWORD
    assert entry.data[CONF_STREAM_URL] == camera.rtsp_url


async def test_reconfigure_takes_the_user_typed_into_the_url_too(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """rtsp://user:pass@host/ names the account: the prefilled old username does not win."""
    entry = make_entry(camera, snapshot=False)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_USERNAME: "olduser", CONF_PASSWORD: "old-password"}
    )
    result = await entry.start_reconfigure_flow(hass)
    url = camera.rtsp_url.replace("rtsp://", f"rtsp://{CAM_USER}:{CAM_PASSWORD}@")
    # As the frontend submits it: the stored username prefilled, the password empty.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_STREAM_URL: url, CONF_USERNAME: "olduser", CONF_VERIFY_SSL: True}
    )
    assert result["type"] is FlowResultType.ABORT, result.get("errors")
    assert result["reason"] == "reconfigure_successful"
    assert (entry.data[CONF_USERNAME], entry.data[CONF_PASSWORD]) == (CAM_USER, CAM_PASSWORD)
    assert entry.data[CONF_STREAM_URL] == camera.rtsp_url


async def test_reconfigure_new_url_keeps_identity(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """A new stream URL updates the unique id; entities keep the camera id."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    camera_id = entry.data[CONF_CAMERA_ID]
    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _input(rtsp_only_camera, **{CONF_SNAPSHOT_URL: None})
    )
    assert result["reason"] == "reconfigure_successful"
    assert entry.unique_id == normalized_identity(rtsp_only_camera.rtsp_url)
    assert entry.data[CONF_CAMERA_ID] == camera_id


async def test_reconfigure_onto_another_configured_camera(
    hass: HomeAssistant, camera: VirtualCamera, rtsp_only_camera: VirtualCamera
) -> None:
    """Reconfiguring onto a camera that has its own entry is refused."""
    first = make_entry(camera)
    make_entry(rtsp_only_camera).add_to_hass(hass)
    await setup_entry(hass, first)
    result = await first.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], _input(rtsp_only_camera, **{CONF_SNAPSHOT_URL: None})
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"
    assert first.data[CONF_STREAM_URL] == camera.rtsp_url


async def test_reauth(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """Wrong new credentials show invalid_auth; the right ones reload the entry."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    result = await entry.start_reauth_flow(hass)
    assert result["step_id"] == "reauth_confirm"
    assert result["description_placeholders"]["name"] == entry.title
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_USERNAME: CAM_USER, CONF_PASSWORD: "nope"}
    )
    assert result["errors"] == {"base": "invalid_auth"}
    # The camera's still is broken: the form (credentials only) says so above its fields.
    camera.fault = Fault.TRUNCATED_JPEG
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    )
    assert result["errors"] == {"base": "invalid_image"}
    camera.fault = None
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"


async def test_reauth_refuses_a_different_device(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """New credentials are not saved when another device (MAC) answers at the camera's address."""
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry,
        data={
            **entry.data,
            CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"},
            CONF_PASSWORD: "old-password",
        },
    )
    result = await entry.start_reauth_flow(hass)
    credentials = {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    with patch(
        "custom_components.localcam.config_flow.neighbour_mac", return_value="aa:bb:cc:00:11:99"
    ):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], credentials)
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_camera"
    assert entry.data[CONF_PASSWORD] == "old-password"
    result = await entry.start_reauth_flow(hass)
    with patch(
        "custom_components.localcam.config_flow.neighbour_mac", return_value="aa:bb:cc:00:11:22"
    ):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], credentials)
    assert result["reason"] == "reauth_successful"
    assert entry.data[CONF_PASSWORD] == CAM_PASSWORD


@pytest.mark.parametrize("flow", ["reauth", "reconfigure"])
async def test_a_different_device_at_the_address_is_sent_no_credentials(
    hass: HomeAssistant, camera: VirtualCamera, flow: str
) -> None:
    """Reauth and reconfigure test the typed password only on the device with the camera's MAC.

    Before, the probe sent it (and the still's request) to whatever answered
    at the address, and only then compared MACs.
    """
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"}}
    )
    if flow == "reauth":
        result = await entry.start_reauth_flow(hass)
        typed = {CONF_USERNAME: CAM_USER, CONF_PASSWORD: CAM_PASSWORD}
    else:
        result = await entry.start_reconfigure_flow(hass)
        typed = _input(camera)
    other = "aa:bb:cc:00:11:99"
    with (
        patch("custom_components.localcam.config_flow.neighbour_mac", return_value=other),
        patch("custom_components.localcam.core.snapshot.neighbour_mac", return_value=other),
    ):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], typed)
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_camera"
    assert camera.stats.credentialed_requests == 0


async def test_options_flow(hass: HomeAssistant, camera: VirtualCamera) -> None:
    """Bad networks are refused with a reason; good options reload the entry."""
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["step_id"] == "init"
    options = {
        CONF_SNAPSHOT_MAX_AGE: 0.5,
        CONF_RTSP_TRANSPORT: "udp",
        CONF_ALLOWED_NETWORKS: "0.0.0.0/0",  # refused: wider than /8
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], options)
    assert result["errors"] == {CONF_ALLOWED_NETWORKS: "invalid_networks"}
    assert result["description_placeholders"]["reason"]
    options[CONF_ALLOWED_NETWORKS] = "100.64.0.0/10, fd12:3456::/48"
    with patch("custom_components.localcam.async_setup_entry", return_value=True) as setup:
        result = await hass.config_entries.options.async_configure(result["flow_id"], options)
        await hass.async_block_till_done()
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.options == options
    assert len(setup.mock_calls) == 1  # OptionsFlowWithReload reloaded the entry


async def test_options_flow_refuses_a_max_age_that_is_not_a_number(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """NaN (the options API passes "nan" on) gets past the selector's range: refused here.

    Saved, no frame's age was ever within it (every still failed), and HA
    stores it as null, on which setup failed after a restart.
    """
    entry = make_entry(camera)
    await setup_entry(hass, entry)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    options = {CONF_SNAPSHOT_MAX_AGE: "nan", CONF_RTSP_TRANSPORT: "tcp"}
    result = await hass.config_entries.options.async_configure(result["flow_id"], options)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_SNAPSHOT_MAX_AGE: "invalid_max_age"}
    assert CONF_SNAPSHOT_MAX_AGE not in entry.options
    options[CONF_SNAPSHOT_MAX_AGE] = 2.0
    result = await hass.config_entries.options.async_configure(result["flow_id"], options)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options[CONF_SNAPSHOT_MAX_AGE] == 2.0


@pytest.mark.parametrize(
    ("url", "title"),
    [
        ("rtsp://192.168.1.20/stream", "192.168.1.20"),
        ("rtsp://192.168.1.20:8554/stream", "192.168.1.20:8554"),
        ("rtsp://[fd00::20]:8554/stream", "[fd00::20]:8554"),
    ],
)
def test_title(url: str, title: str) -> None:
    """Entries are named after the host, the port only when not the default."""
    assert _title(url) == title


async def test_camera_on_the_link_is_identified_by_its_mac(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """A MAC in the kernel's neighbour table becomes the unique id and identity."""
    flow_id = await _url_form(hass)
    with patch(
        "custom_components.localcam.config_flow.neighbour_mac", return_value="aa:bb:cc:00:11:22"
    ):
        result = await hass.config_entries.flow.async_configure(flow_id, _input(camera))
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["result"].unique_id == "aa:bb:cc:00:11:22"
    assert result["data"][CONF_IDENTITY] == {"mac": "aa:bb:cc:00:11:22"}
    assert result["data"][CONF_CAMERA_ID] == "aa:bb:cc:00:11:22"


async def test_reconfigure_refuses_a_different_device(
    hass: HomeAssistant, camera: VirtualCamera
) -> None:
    """Reconfigure onto an address where another device (MAC) answers is refused."""
    entry = make_entry(camera)
    entry.add_to_hass(hass)
    hass.config_entries.async_update_entry(
        entry, data={**entry.data, CONF_IDENTITY: {"mac": "aa:bb:cc:00:11:22"}}
    )
    result = await entry.start_reconfigure_flow(hass)
    with patch(
        "custom_components.localcam.config_flow.neighbour_mac", return_value="aa:bb:cc:00:11:99"
    ):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _input(camera))
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_camera"
    result = await entry.start_reconfigure_flow(hass)
    with patch(
        "custom_components.localcam.config_flow.neighbour_mac", return_value="aa:bb:cc:00:11:22"
    ):
        result = await hass.config_entries.flow.async_configure(result["flow_id"], _input(camera))
    assert result["reason"] == "reconfigure_successful"
    assert entry.unique_id == "aa:bb:cc:00:11:22"
