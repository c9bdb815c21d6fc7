"""Benchmark only: the upper bound of a warm still through HA's camera_proxy.

Its one platform (camera.py) answers every still with the same bytes, read
once at setup, without awaiting anything: no camera entity can answer
HA's camera_proxy with that picture faster. bench/snapshots.py loads it
beside LocalCam and generic to show how close LocalCam comes to that bound.
"""
