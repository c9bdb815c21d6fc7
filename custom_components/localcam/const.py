"""Constants for LocalCam."""

import logging
from typing import Final

from homeassistant.config_entries import SOURCE_DHCP, SOURCE_INTEGRATION_DISCOVERY, SOURCE_ZEROCONF

DOMAIN: Final = "localcam"
LOGGER: Final = logging.getLogger(__package__)

# Config entry data (connection): how to reach the camera.
CONF_STREAM_URL: Final = "stream_url"
CONF_SNAPSHOT_URL: Final = "snapshot_url"
CONF_VERIFY_SSL: Final = "verify_ssl"
# The camera's stable identity, fixed when the entry is created. Entity and
# device ids derive from it, so a reconfigured URL keeps the same entities.
CONF_CAMERA_ID: Final = "camera_id"
# What identifies the device (MAC, ONVIF serial, UUID): checked at setup, at
# every connection where the MAC is visible, and at every health check.
CONF_IDENTITY: Final = "identity"
# ONVIF cameras: one entity per media profile; the main one is enabled.
CONF_ONVIF: Final = "onvif"
CONF_PROFILES: Final = "profiles"
CONF_MAIN_PROFILE: Final = "main_profile"
CONF_DEVICE_INFO: Final = "device_info"
DEFAULT_ONVIF_PORT: Final = 80
# The profile key of a camera added by URL (it has one stream).
MAIN_PROFILE: Final = "main"
# Recorded by the test before configure; shown in diagnostics.
CONF_CODEC: Final = "codec"
CONF_WIDTH: Final = "width"
CONF_HEIGHT: Final = "height"

# Options (behaviour).
CONF_SNAPSHOT_MAX_AGE: Final = "snapshot_max_age"
CONF_RTSP_TRANSPORT: Final = "rtsp_transport"
CONF_ALLOWED_NETWORKS: Final = "allowed_networks"

# A still older than this is never served as current. Dashboards refresh
# camera cards every 10 s and the more-info dialog every second or so; one
# second keeps a burst of viewers on one upstream fetch without showing an
# outdated picture.
DEFAULT_SNAPSHOT_MAX_AGE: Final = 1.0
MIN_SNAPSHOT_MAX_AGE: Final = 0.1
MAX_SNAPSHOT_MAX_AGE: Final = 10.0
RTSP_TRANSPORTS: Final = ("tcp", "udp")
# TCP interleaving survives Wi-Fi loss and NAT-less LANs best; UDP is for
# cameras whose TCP mode is broken.
DEFAULT_RTSP_TRANSPORT: Final = "tcp"

# The health coordinator's interval: one light RTSP DESCRIBE a minute. Images
# are never polled.
HEALTH_INTERVAL_SECONDS: Final = 60

# Must stay below Home Assistant's CAMERA_IMAGE_TIMEOUT (10 s), so a failure
# reaches the user as LocalCam's own translated error, not a generic 500.
SNAPSHOT_TIMEOUT: Final = 9.0
# Test before configure: opening the stream and decoding the first keyframe.
PROBE_TIMEOUT: Final = 10.0

# LocalCam's still view: the provenance headers beside each JPEG.
HEADER_CAMERA: Final = "X-LocalCam-Camera"  # the entity's unique id
HEADER_CAPTURED_AT: Final = "X-LocalCam-Captured-At"  # ISO 8601, wall clock
HEADER_SOURCE: Final = "X-LocalCam-Source"  # snapshot_url, stream_keyframe, rtsp_grab
HEADER_AGE: Final = "X-LocalCam-Age"  # seconds since capture, as sent

# The sources of offers the user has not answered yet (discovery_confirm):
# a reauth or reconfigure flow also carries its entry's unique id, but is none.
OFFER_SOURCES: Final = frozenset({SOURCE_DHCP, SOURCE_INTEGRATION_DISCOVERY, SOURCE_ZEROCONF})
# When the device answers but refuses the main stream (an NVR's channel whose
# camera is unplugged), how many of its other streams the check tries, one
# at a time, before it calls the device down.
OTHER_STREAM_TRIES: Final = 4
