"""The benchmarks' arithmetic: what they print must be what they claim to measure.

No benchmark runs here (they print figures; bench/run runs them); these check
the functions that turn samples into figures and verdicts.
"""

from typing import Any

import pytest

from bench import idle_hass, snapshots
from bench.harness import cpu_ns_between, percentile


def test_percentiles_are_nearest_rank() -> None:
    """ceil(p/100 * n)-th value: p99 of 100 is the 99th, of an even count the lower middle."""
    assert percentile([float(i) for i in range(1, 101)], 99) == 99
    assert percentile([float(i) for i in range(1, 301)], 99) == 297
    assert percentile([float(i) for i in range(1, 11)], 99) == 10  # fewer than 100: the max
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2
    assert percentile([float(i) for i in range(1, 7)], 50) == 3
    assert percentile([5.0], 99) == 5
    assert percentile([], 50) is None


def test_cpu_between_two_readings_counts_threads_not_sums() -> None:
    """A thread that exits no longer takes its lifetime out of the window; a new one counts."""
    before = {"1": 1_000, "2": 5_000_000}  # thread 2 exits during the window
    after = {"1": 51_000, "3": 20_000}  # thread 3 was born in it
    assert cpu_ns_between(before, after) == (50_000 + 20_000, 1)


def _cold(who: str, seconds: float, status: Any = 200, right: bool = True) -> dict[str, Any]:
    return {
        "who": who,
        "camera": "rtsp1",
        "gop": 1.0,
        "scenario": "idle",
        "status": status,
        "seconds": seconds,
        "right_camera": right,
    }


def _verdict(results: dict[str, Any], measure: str) -> str:
    """The `met` column of the summary row whose measure starts with `measure`."""
    for line in snapshots.summary(results).splitlines():
        if line.startswith(measure):
            return line.split()[-1]
    raise AssertionError(f"no row {measure!r}")


def test_a_failed_or_slow_cold_try_is_not_met() -> None:
    """Every LocalCam try must be its own camera's 200, the slowest within GOP + 150 ms."""
    reference = [_cold(snapshots.LIMIT, 0.19), _cold(snapshots.FFMPEG, 3.0)]
    good = [_cold(snapshots.LOCALCAM, s) for s in (0.2, 0.21, 0.2)]
    row = "cold still, idle camera"
    assert _verdict({"cold": reference + good}, row) == "yes"
    failed = [*good[:2], _cold(snapshots.LOCALCAM, 30.0, "timeout", right=False)]
    assert _verdict({"cold": reference + failed}, row) == "NO"
    slow = [*good[:2], _cold(snapshots.LOCALCAM, 1.2)]  # over 1 s + 150 ms
    assert _verdict({"cold": reference + slow}, row) == "NO"
    wrong = [*good[:2], _cold(snapshots.LOCALCAM, 0.2, right=False)]
    assert _verdict({"cold": reference + wrong}, row) == "NO"


def test_fanout_p99_pools_every_viewer_of_every_burst() -> None:
    """The worst burst is not hidden by a median of the bursts' p99s."""
    rows = [
        {
            "camera": "rtsp1",
            "who": snapshots.LOCALCAM,
            "viewers": 100,
            "upstream_fetches": 1,
            "upstream": {},
            "ok": 100,
            "right_camera": 100,
            "p50": 0.1,
            "p99": p99,
            # Two slow bursts: a tenth of their viewers waited 2 s.
            "latencies": [0.1] * (100 - slow) + [p99] * slow,
        }
        for p99, slow in ((0.2, 2), (0.2, 2), (0.2, 2), (2.0, 10), (2.1, 10))
    ]
    [summary] = snapshots.fanout_summary(rows)
    assert summary["worst_p99"] == 2.1
    # The 495th of 500 viewers waited 2.1 s; the median of the bursts' p99s said 0.2.
    assert summary["p99"] == 2.1


def test_delay_to_phase_lands_on_the_frame_clock() -> None:
    """The wait ends at the asked fraction of the frame interval, never a whole interval later."""
    epoch, fps = 1000.0, 10.0
    for now in (1000.0, 1000.03, 1000.0999, 1234.567):
        for phase in (0.0, 0.1, 0.5, 0.9):
            wait = snapshots.delay_to_phase(now, epoch, fps, phase)
            assert 0 <= wait < 0.1
            into = ((now + wait - epoch) * fps) % 1.0
            assert min(abs(into - phase), 1 - abs(into - phase)) < 1e-6
    assert snapshots.delay_to_phase(1000.02, epoch, fps, 0.5) == pytest.approx(0.03)


def _fan(viewers: int, phase: float, seconds: float) -> dict[str, Any]:
    return {
        "camera": "rtsp1",
        "who": snapshots.LOCALCAM,
        "viewers": viewers,
        "phase": phase,
        "upstream_fetches": 1,
        "upstream": {"play_sessions": 1},
        "ok": viewers,
        "right_camera": viewers,
        "p50": seconds,
        "p99": seconds,
        "latencies": [seconds] * viewers,
    }


def test_fanout_is_held_against_single_stills_at_the_same_frame_phases() -> None:
    """Like with like: the bursts' pooled p99 against the singles' p99 over the same phases.

    A camera whose frame clock makes a cold still take 50 to 140 ms: the
    slow-phase burst is compared with the slow-phase single, not with the
    median single (which would count the clock's 90 ms as fan-out cost).
    """
    phases = (0.1, 0.3, 0.5, 0.7, 0.9)
    singles = dict(zip(phases, (0.05, 0.06, 0.07, 0.12, 0.14), strict=True))
    rows = [_fan(1, ph, s) for ph, s in singles.items()]
    row = "200 viewers, RTSP-only camera: p99"
    within = rows + [_fan(200, ph, s + 0.03) for ph, s in singles.items()]
    assert _verdict({"fanout": within}, row) == "yes"
    assert [round(d, 3) for _, d in snapshots.phase_pairs(within, 200)] == [0.03] * 5
    # One burst 60 ms over its single: the pooled p99 is that burst's.
    over = [*rows, *(_fan(200, ph, s + 0.03) for ph, s in list(singles.items())[:4])]
    over.append(_fan(200, 0.9, 0.14 + 0.06))
    assert _verdict({"fanout": over}, row) == "NO"
    # A single without a burst at its phase pairs with nothing.
    assert len(snapshots.phase_pairs([*rows, _fan(200, 0.5, 0.1)], 200)) == 1


def test_the_limit_row_holds_bursts_to_the_limit_at_their_own_phases() -> None:
    """The bursts' p99 against the physical limit's p99 over the same frame phases.

    A camera whose frame clock alone makes any still take 100 to 200 ms: a
    LocalCam as fast as the limit at every phase meets the 1.15x bar. Held
    to [3]'s tries instead (one try, mid-interval, in a quick run), it failed.
    """

    def cold_still(phase: float) -> float:
        return 0.100 + 0.100 * phase

    phases = [(rep + 0.5) / 3 for rep in range(3)]
    fan = [_fan(viewers, ph, cold_still(ph)) for viewers in (1, 200) for ph in phases]
    limit = [
        {"camera": "rtsp1", "phase": ph, "status": 200, "seconds": cold_still(ph)} for ph in phases
    ]
    cold = [_cold(snapshots.LIMIT, cold_still(0.5))]
    row = "200 viewers, RTSP-only camera: p99 vs the physical limit"
    assert _verdict({"fanout": fan, "fanout_limit": limit, "cold": cold}, row) == "yes"
    slower = [_fan(200, ph, cold_still(ph) * 1.2) for ph in phases]
    assert _verdict({"fanout": fan[:3] + slower, "fanout_limit": limit}, row) == "NO"


def test_idle_hass_compares_each_process_with_hass_alone_and_judges_localcam() -> None:
    """bench/idle_hass: differences and ratio of the right rows; the verdict is LocalCam's."""

    def row(pct: float) -> dict[str, Any]:
        return {"pct_one_core": pct, "windows": [pct, pct], "median_window": pct}

    result = {
        "seconds": 120.0,
        "processes": {
            idle_hass.NONE: row(0.030),
            idle_hass.LOCALCAM: row(0.045),
            idle_hass.GENERIC: row(0.050),
        },
        "requests_per_camera_per_minute": 1.0,
    }
    text = idle_hass.table(result, 32)
    assert "LocalCam - hass alone: +0.015 %" in text
    assert "generic - hass alone: +0.020 %" in text
    assert "LocalCam / generic: 0.90" in text
    assert "met (0.045 %)" in text
    assert "NOT met" not in text
    result["processes"][idle_hass.LOCALCAM] = row(0.101)
    assert "NOT met (0.101 %)" in idle_hass.table(result, 32)
