"""Cast tokens without Home Assistant: scope, expiry, renewal, revocation, bounds."""

from datetime import UTC, datetime, timedelta
import hashlib
import logging
import re
import secrets
from unittest.mock import patch

from freezegun import freeze_time
import pytest

from custom_components.localcam.core import cast_links
from custom_components.localcam.core.cast_links import (
    DEFAULT_GRACE,
    TOKEN_RE,
    CastGrant,
    CastLinkLimitError,
    CastLinks,
    CastMode,
)
from custom_components.localcam.core.errors import LocalCamError

PORCH = CastGrant("cam_porch", "media_player.kitchen", CastMode.LIVE)
GARAGE = CastGrant("cam_garage", "media_player.hall", CastMode.SNAPSHOT)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        """Start at an arbitrary instant."""
        self.now = 1000.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock."""
    return FakeClock()


@pytest.fixture
def links(clock: FakeClock) -> CastLinks:
    """A token table on the fake clock: 5 s grace, 60 s lease."""
    return CastLinks(clock=clock, grace=5.0, lease=60.0, max_links=4)


def test_tokens_are_256_bit_and_unique(links: CastLinks) -> None:
    """Each token is token_urlsafe(32): 43 URL-safe characters, never repeated."""
    tokens = {
        links.issue(CastGrant("cam", f"media_player.r{i}", CastMode.LIVE), duration=10)
        for i in range(4)
    }
    assert len(tokens) == 4
    assert all(TOKEN_RE.match(token) for token in tokens)
    assert all(len(token) == 43 for token in tokens)


def test_scope(links: CastLinks) -> None:
    """A token opens its own camera in its own mode, nothing else."""
    token = links.issue(PORCH, duration=60)
    assert links.resolve(token) == PORCH
    assert links.resolve(token, camera_id="cam_porch", mode=CastMode.LIVE) == PORCH
    assert links.resolve(token, camera_id="cam_garage") is None
    assert links.resolve(token, camera_id="cam_porc") is None
    assert links.resolve(token, mode=CastMode.SNAPSHOT) is None
    other = links.issue(GARAGE, duration=60)
    assert links.resolve(other, camera_id="cam_porch") is None
    assert links.resolve(other, camera_id="cam_garage") == GARAGE


def test_a_token_opens_only_its_own_stream_of_the_camera(links: CastLinks) -> None:
    """A camera's profiles (main, sub) are separate grants: a token opens its own only."""
    main = CastGrant("cam_porch", "media_player.kitchen", CastMode.LIVE, stream="porch_main")
    token = links.issue(main, duration=60)
    assert links.resolve(token, camera_id="cam_porch", stream="porch_main") == main
    assert links.resolve(token, camera_id="cam_porch", stream="porch_sub") is None
    assert links.resolve(token, camera_id="cam_porch", stream="") is None
    assert links.resolve(token, camera_id="cam_porch", stream="porch_mai") is None


@pytest.mark.parametrize(
    "token",
    ["", "x", "A" * 42, "A" * 44, "A" * 42 + "/", "A" * 42 + "é", "../" * 15, None],
)
def test_unknown_and_malformed_tokens(links: CastLinks, token: str | None) -> None:
    """Garbage never resolves (and never raises)."""
    links.issue(PORCH, duration=60)
    value = secrets.token_urlsafe(32) if token is None else token
    assert links.resolve(value) is None
    assert links.renew(value) is False
    assert links.revoke(value) is False
    assert links.expires_in(value) is None


def test_expiry_at_end_of_duration_plus_grace(links: CastLinks, clock: FakeClock) -> None:
    """A 30 s cast's token works until 30 s + grace, then never again."""
    token = links.issue(PORCH, duration=30)
    clock.now += 30 + 5 - 0.001
    assert links.resolve(token) == PORCH
    clock.now += 0.001
    assert links.resolve(token) is None
    clock.now -= 10  # a later lookup cannot bring it back
    assert links.resolve(token) is None
    assert len(links) == 0


def test_renewal_is_stepwise_and_bounded_by_the_duration(
    links: CastLinks, clock: FakeClock
) -> None:
    """Renewal adds one lease step, never past the cast's end."""
    token = links.issue(PORCH, duration=150)
    assert links.expires_in(token) == pytest.approx(65)  # one 60 s lease + grace
    clock.now += 50
    assert links.renew(token)
    assert links.expires_in(token) == pytest.approx(65)
    clock.now += 50
    assert links.renew(token)
    # 100 s in: the next lease would reach 160 s, past the 150 s end.
    assert links.expires_in(token) == pytest.approx(55)
    clock.now += 55
    assert links.resolve(token) is None
    assert links.renew(token) is False


def test_begin_starts_the_duration_when_the_cast_starts_showing(
    links: CastLinks, clock: FakeClock
) -> None:
    """Issued before a slow LOAD, the token gets its cast's end when the cast starts."""
    token = links.issue(PORCH, duration=None)  # on its lease while the LOAD is in flight
    clock.now += 20  # the receiver took 20 s, longer than the grace
    assert links.begin(token, duration=30)
    assert links.expires_in(token) == pytest.approx(30 + 5)
    clock.now += 30 + 5 - 0.001
    assert links.resolve(token) == PORCH
    clock.now += 0.001
    assert links.resolve(token) is None
    assert links.begin(token, duration=30) is False  # an expired token stays dead
    # Until stopped: from now on, it lives on renewals only.
    token = links.issue(PORCH, duration=None)
    assert links.begin(token, duration=None)
    assert links.expires_in(token) == pytest.approx(60 + 5)


def test_expiry_is_measured_on_the_tables_clock(links: CastLinks, clock: FakeClock) -> None:
    """now() reads the injected clock: what the cast manager times its casts by."""
    assert links.now() == clock.now
    clock.now += 7.5
    assert links.now() == clock.now


@pytest.mark.parametrize("step", [timedelta(minutes=3), -timedelta(hours=1)])
def test_wall_clock_steps_neither_kill_nor_extend_a_token(step: timedelta) -> None:
    """By default expiry is monotonic: an NTP step forward or back changes nothing."""
    links = CastLinks()
    token = links.issue(PORCH, duration=30)
    left = links.expires_in(token)
    assert left is not None
    with freeze_time(datetime.now(UTC) + step):
        assert links.resolve(token) == PORCH
        assert links.expires_in(token) == pytest.approx(left, abs=1.0)


def test_until_stopped_lives_on_renewals_only(links: CastLinks, clock: FakeClock) -> None:
    """duration None: a forgotten token still dies one lease after its last renewal."""
    token = links.issue(PORCH, duration=None)
    for _ in range(10):
        clock.now += 59
        assert links.renew(token)
    clock.now += 65
    assert links.resolve(token) is None


def test_revocation(links: CastLinks) -> None:
    """Stop, replacement, unload: each revokes exactly what it should."""
    porch = links.issue(PORCH, duration=60)
    garage = links.issue(GARAGE, duration=60)
    assert links.revoke(porch)
    assert links.resolve(porch) is None
    assert not links.revoke(porch)
    assert links.resolve(garage) == GARAGE
    # Replacement: a new token for the same receiver kills the old one.
    again = links.issue(GARAGE, duration=60)
    assert links.resolve(garage) is None
    assert links.resolve(again) == GARAGE
    # Unload of one camera, then everything.
    porch = links.issue(PORCH, duration=60)
    assert links.revoke_camera("cam_garage") == 1
    assert links.resolve(again) is None
    assert links.resolve(porch) == PORCH
    assert links.revoke_receiver("media_player.kitchen") == 1
    links.issue(PORCH, duration=60)
    assert links.revoke_all() == 1
    assert len(links) == 0


def test_restart_revokes_by_construction(links: CastLinks) -> None:
    """Tokens live in memory: a new table (a restart) knows none of them."""
    token = links.issue(PORCH, duration=60)
    assert CastLinks().resolve(token) is None


def test_bounded(links: CastLinks, clock: FakeClock) -> None:
    """At most max_links live tokens; expired ones make room again."""
    for i in range(4):
        links.issue(CastGrant("cam", f"media_player.r{i}", CastMode.LIVE), duration=10)
    with pytest.raises(CastLinkLimitError) as err:
        links.issue(CastGrant("cam", "media_player.r9", CastMode.LIVE), duration=10)
    assert isinstance(err.value, LocalCamError)
    assert err.value.translation_key == "cast_too_many"
    assert err.value.placeholders == {"limit": "4"}
    clock.now += 16
    links.issue(CastGrant("cam", "media_player.r9", CastMode.LIVE), duration=10)
    assert len(links) == 1


def test_lookup_is_by_digest_and_compare_digest(links: CastLinks) -> None:
    """The table holds digests only, and every hit is confirmed with compare_digest."""
    token = links.issue(PORCH, duration=60)
    # No token string is stored anywhere in the table.
    for link in links._links.values():
        fields = [getattr(link, name) for name in link.__slots__]
        assert token not in repr(fields)
        assert token.encode() not in fields
    assert hashlib.sha256(token.encode()).digest() in links._links
    with patch.object(
        cast_links.hmac, "compare_digest", wraps=cast_links.hmac.compare_digest
    ) as compare:
        assert links.resolve(token) == PORCH
        assert links.resolve(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    # The hit was confirmed in constant time; the miss never compared bytes of a
    # real token (its digest found nothing).
    assert compare.call_count == 1
    digest = hashlib.sha256(token.encode()).digest()
    assert compare.call_args.args == (digest, digest)


def test_tokens_never_in_reprs_or_logs(
    links: CastLinks, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """reprs show counts; the module logs nothing at all."""
    caplog.set_level(logging.DEBUG)
    token = links.issue(PORCH, duration=60)
    links.renew(token)
    links.resolve(token)
    links.revoke(token)
    assert token not in repr(links)
    assert re.fullmatch(r"CastLinks\(live=\d+, max=4\)", repr(links))
    assert all(token not in repr(link) for link in links._links.values())
    assert caplog.records == []


def test_invalid_arguments() -> None:
    """Nonsense configuration and negative durations are refused."""
    with pytest.raises(ValueError, match="grace"):
        CastLinks(grace=-1)
    with pytest.raises(ValueError, match="lease"):
        CastLinks(lease=0)
    with pytest.raises(ValueError, match="max_links"):
        CastLinks(max_links=0)
    with pytest.raises(ValueError, match="duration"):
        CastLinks().issue(PORCH, duration=-1)
    links = CastLinks()
    with pytest.raises(ValueError, match="duration"):
        links.begin(links.issue(PORCH, duration=None), duration=-1)


def test_default_grace_meets_the_404_target() -> None:
    """Even unrevoked, an ended cast's URL dies within ten seconds."""
    assert DEFAULT_GRACE <= 10
