"""LocalCam tests."""
