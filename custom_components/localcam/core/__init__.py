"""HA-free core of LocalCam: LAN policy, camera I/O and frame handling.

Nothing in this package imports ``homeassistant`` (tests/core/test_boundary.py
enforces it). Glue modules one level up adapt it to Home Assistant.
"""
