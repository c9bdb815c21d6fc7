"""A cast URL plays in the players a Cast receiver runs: hls.js and Chromium's own HLS.

HA core's LL-HLS fMP4 plays in hls.js, but Chromium's native HLS cannot parse it
(ANCHORS.md); a receiver whose app uses the native player shows nothing. This
test creates a network namespace holding only its own loopback and runs
tests/cast_player_netns.py in it under ``ip netns exec`` with pytest: Home
Assistant's cast integration (pychromecast mocked) receives LocalCam's LOAD,
and headless Debian Chromium plays the URL from it with hls.js (fetched by
scripts/install_e2e_deps from the npm registry, pinned) and with its native
player. Both must play the porch camera's colour. The namespace is deleted,
and every process left in it killed by PID, whatever happens.
"""

import importlib.util
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
from typing import Any

import pytest

from virtualcam import nearest_camera

from .netns import BROWSER_IN_NAMESPACE, loopback_namespace

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = f"lccast{os.getpid()}"
BUDGET = 150


def _hlsjs_path() -> Path:
    """Where scripts/fetch_hlsjs.py (run by scripts/install_e2e_deps) puts hls.js."""
    spec = importlib.util.spec_from_file_location(
        "fetch_hlsjs", ROOT / "scripts" / "fetch_hlsjs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.target()
    return path


HLSJS = _hlsjs_path()

pytestmark = [
    *BROWSER_IN_NAMESPACE,
    pytest.mark.skipif(
        not HLSJS.is_file(), reason=f"{HLSJS} is missing (scripts/install_e2e_deps)"
    ),
]


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations() -> None:
    """Override the suite's: Home Assistant runs in the inner pytest, not here."""


@pytest.fixture(autouse=True)
def _no_blocking_io() -> None:
    """Override the suite's: this test has no event loop and waits on a subprocess."""


# Max per-channel distance from the camera's colour after H.264 and scaling.
TOLERANCE = 40


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the inner test once in a fresh namespace; return what each player did."""
    out = tmp_path_factory.mktemp("cast_player") / "result.json"
    env = {**os.environ, "LOCALCAM_HLSJS": str(HLSJS), "LOCALCAM_CAST_PLAYER_OUT": str(out)}
    with loopback_namespace(NAMESPACE):
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", NAMESPACE,
                sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--no-cov", "-q",
                "-x", "--timeout", str(BUDGET), "tests/cast_player_netns.py",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            log, _ = proc.communicate(timeout=BUDGET + 30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)
            log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"the inner run failed:\n{log[-8000:]}"
    assert "1 passed" in log, log[-4000:]  # ran, not skipped
    result: dict[str, Any] = json.loads(out.read_text())
    print(
        "\ncast player: "
        + "; ".join(
            f"{kind}: LOAD after {result[f'{kind}_cast_call_seconds']:.2f} s, "
            + (
                f"playing {result[kind]['seconds_to_playing']:.2f} s after opening the URL"
                if not result[kind].get("error")
                else "did not play"
            )
            for kind in ("native", "hlsjs")
        )
    )
    return result


def _assert_played_the_camera(result: dict[str, Any], kind: str) -> None:
    """The player played, and its picture is the cast camera's colour."""
    state = result[kind]
    assert not state.get("error"), state["error"]
    palette = [tuple(c) for c in result["palette"]]
    expected = tuple(result["camera_colour"])
    seen = tuple(state["colour"])
    assert nearest_camera(seen, palette) == palette.index(expected), f"{kind}: {seen}"
    assert max(abs(a - b) for a, b in zip(seen, expected, strict=True)) <= TOLERANCE, (
        f"{kind}: {seen} is too far from {expected}"
    )


@pytest.mark.hass_process
@pytest.mark.timeout(BUDGET + 60)
def test_cast_url_plays_in_hlsjs(played: dict[str, Any]) -> None:
    """hls.js (the Default Media Receiver's kind of player) plays the cast camera."""
    _assert_played_the_camera(played, "hlsjs")


@pytest.mark.hass_process
@pytest.mark.timeout(BUDGET + 60)
def test_cast_url_plays_in_chromium_native_hls(played: dict[str, Any]) -> None:
    """Chromium's own HLS player plays the cast camera (ANCHORS: 'plays in both').

    It reloads the live playlist the moment it starts playing and quits if the
    reload lists nothing new; LocalCam's playlist view holds such a reload until
    the next part (custom_components/localcam/cast_views.py).
    """
    _assert_played_the_camera(played, "native")
