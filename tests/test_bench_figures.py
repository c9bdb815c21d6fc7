"""The benchmarks' arithmetic: what they print must be what they claim to measure.

No benchmark runs here (they print figures; bench/run runs them); these check
the functions that turn samples into figures and verdicts.
"""

from typing import Any

from bench import snapshots
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
