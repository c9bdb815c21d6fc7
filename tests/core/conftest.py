"""Fixtures shared by the core tests."""

from typing import Any

import pytest

from custom_components.localcam.core import rtsp


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every decode core.rtsp makes (``_decode``), by whether it produced a picture."""
    made: list[bool] = []
    real_decode = rtsp._decode

    def decode(*args: Any, **kwargs: Any) -> Any:
        frame = real_decode(*args, **kwargs)
        made.append(frame is not None)
        return frame

    monkeypatch.setattr(rtsp, "_decode", decode)
    return made
