"""Single-camera, expiring cast tokens: the credential in every cast URL.

A Cast receiver cannot log in to Home Assistant, so the URL it is given must
carry its own credential. This module is the layer that guarantees what such a
URL can open:

- each token is 256 random bits (``secrets.token_urlsafe(32)``), bound to one
  grant: (camera id, receiver entity id, mode);
- it dies at the end of its cast's duration plus a short grace, and without
  renewal after one lease step (minutes, never hours), so a token the manager
  forgot still dies on its own; a cast's duration may start after the token
  is issued (``begin``: when its first LOAD landed), so the URL lives exactly
  as long as the cast however slowly the receiver answered;
- expiry runs on a monotonic clock: a wall-clock step (NTP, a user setting the
  time) neither kills a running cast nor keeps an ended one open;
- a receiver holds at most one live token: issuing a new one revokes the old;
- tokens live in memory only, so a restart revokes every one of them;
- lookups are keyed by the token's SHA-256 and confirmed with
  ``hmac.compare_digest``, so response time does not depend on how much of a
  guessed token matches a real one;
- the number of live tokens is bounded.

The token string itself is returned once, by ``issue``; nothing here stores,
logs or shows it (reprs show counts only).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
import hashlib
import hmac
import re
import secrets
import time
from typing import Final, override

from .errors import LocalCamError

type Clock = Callable[[], float]

TOKEN_BYTES: Final = 32  # 256 bits
# token_urlsafe(32) is 43 characters of the URL-safe base64 alphabet.
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")
# After the cast's end, the token still opens for this long: the end timer and
# the token's own expiry may disagree by a moment, and this keeps the two from
# racing. Short enough that an ended cast 404s within ten seconds even if the
# manager never revoked it.
DEFAULT_GRACE: Final = 5.0
# Without renewal a token lives one lease step past its last renewal, even
# for casts "until stopped": a crashed or forgotten cast cannot leave a door
# open for hours.
DEFAULT_LEASE: Final = 120.0
# Each live token is one cast to one receiver; homes have a handful of Cast
# devices. The bound keeps a runaway automation from growing memory.
DEFAULT_MAX_LINKS: Final = 64


class CastMode(StrEnum):
    """What a cast token opens: the HLS stream or a still."""

    LIVE = "live"
    SNAPSHOT = "snapshot"


class CastLinkLimitError(LocalCamError):
    """Too many cast tokens are live at once."""

    translation_key = "cast_too_many"

    def __init__(self, limit: int) -> None:
        """Name the limit."""
        super().__init__(f"at most {limit} casts may run at once", limit=str(limit))
        self.limit = limit


@dataclass(frozen=True, slots=True)
class CastGrant:
    """What one token opens: one camera, for one receiver, in one mode."""

    camera_id: str
    receiver: str
    mode: CastMode
    # The entity's unique id: which of the camera's streams (ONVIF profiles)
    # the token opens. The camera id alone would open its other profiles too.
    stream: str = ""


@dataclass(slots=True, repr=False)
class _Link:
    """A live token's state, keyed by the token's digest (never the token)."""

    grant: CastGrant
    digest: bytes
    ends_at: float | None  # None: until stopped
    expires_at: float = field(default=0.0)


def token_digest(token: str) -> bytes:
    """SHA-256 of a token: the only form in which tokens are kept."""
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


class CastLinks:
    """The live cast tokens of one Home Assistant instance (memory only)."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        grace: float = DEFAULT_GRACE,
        lease: float = DEFAULT_LEASE,
        max_links: int = DEFAULT_MAX_LINKS,
    ) -> None:
        """Create an empty table; the clock is injectable for tests."""
        if grace < 0 or lease <= 0 or max_links < 1:
            raise ValueError("grace must be >= 0, lease > 0 and max_links >= 1")
        self._clock = clock
        self.grace = grace
        self.lease = lease
        self.max_links = max_links
        self._links: dict[bytes, _Link] = {}

    def __len__(self) -> int:
        """Return how many tokens are live (expired ones are purged first)."""
        self.purge()
        return len(self._links)

    @override
    def __repr__(self) -> str:
        """Show counts only: a repr must never carry a token."""
        return f"CastLinks(live={len(self._links)}, max={self.max_links})"

    def now(self) -> float:
        """Return the clock every expiry is measured on (monotonic unless injected)."""
        return self._clock()

    def _expiry(self, now: float, ends_at: float | None) -> float:
        """One lease step from now, never past the cast's end, plus the grace."""
        lease_end = now + self.lease
        if ends_at is not None:
            lease_end = min(lease_end, ends_at)
        return lease_end + self.grace

    def issue(self, grant: CastGrant, *, duration: float | None) -> str:
        """Create a token for the grant, revoking the receiver's previous token.

        ``duration`` is the cast's length in seconds, or None for a cast that
        runs until stopped (it then lives on renewals only).
        """
        if duration is not None and duration < 0:
            raise ValueError("duration must be >= 0 or None")
        self.purge()
        # A receiver shows one thing at a time; its older URL must stop working.
        self.revoke_receiver(grant.receiver)
        if len(self._links) >= self.max_links:
            raise CastLinkLimitError(self.max_links)
        now = self._clock()
        ends_at = None if duration is None else now + duration
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_digest(token)
        self._links[digest] = _Link(
            grant=grant,
            digest=digest,
            ends_at=ends_at,
            expires_at=self._expiry(now, ends_at),
        )
        return token

    def _find(self, token: str) -> _Link | None:
        """Return the live link of a token, dropping it when expired."""
        if not TOKEN_RE.match(token):
            # The format is public; refusing malformed input early leaks nothing.
            return None
        digest = token_digest(token)
        link = self._links.get(digest)
        # The dict lookup is keyed by the digest, which an attacker cannot steer
        # towards a real token's; compare_digest then confirms in constant time.
        if link is None or not hmac.compare_digest(link.digest, digest):
            return None
        if self._clock() >= link.expires_at:
            del self._links[digest]
            return None
        return link

    def resolve(
        self,
        token: str,
        *,
        camera_id: str | None = None,
        mode: CastMode | None = None,
        stream: str | None = None,
    ) -> CastGrant | None:
        """Return the token's grant, or None if unknown, expired, revoked or out of scope."""
        link = self._find(token)
        if link is None:
            return None
        grant = link.grant
        if camera_id is not None and not hmac.compare_digest(
            grant.camera_id.encode(), camera_id.encode()
        ):
            return None
        if stream is not None and not hmac.compare_digest(grant.stream.encode(), stream.encode()):
            return None
        if mode is not None and grant.mode is not mode:
            return None
        return grant

    def begin(self, token: str, *, duration: float | None) -> bool:
        """Start a live token's cast duration now (its cast starts showing only now).

        A token issued before a slow LOAD (until stopped, on its lease) gets
        its cast's end here, the moment the cast's own end timer starts.
        """
        if duration is not None and duration < 0:
            raise ValueError("duration must be >= 0 or None")
        link = self._find(token)
        if link is None:
            return False
        now = self._clock()
        link.ends_at = None if duration is None else now + duration
        link.expires_at = self._expiry(now, link.ends_at)
        return True

    def renew(self, token: str) -> bool:
        """Extend a live token by one lease step (never past its cast's end)."""
        link = self._find(token)
        if link is None:
            return False
        link.expires_at = self._expiry(self._clock(), link.ends_at)
        return True

    def expires_in(self, token: str) -> float | None:
        """Seconds until the token expires, or None when it is not live."""
        link = self._find(token)
        if link is None:
            return None
        return max(link.expires_at - self._clock(), 0.0)

    def revoke(self, token: str) -> bool:
        """Revoke one token; True when it was live."""
        link = self._find(token)
        if link is None:
            return False
        del self._links[link.digest]
        return True

    def _revoke_where(self, match: Callable[[CastGrant], bool]) -> int:
        """Revoke every token whose grant matches; return how many."""
        doomed = [digest for digest, link in self._links.items() if match(link.grant)]
        for digest in doomed:
            del self._links[digest]
        return len(doomed)

    def revoke_receiver(self, receiver: str) -> int:
        """Revoke the tokens issued for a receiver."""
        return self._revoke_where(lambda grant: grant.receiver == receiver)

    def revoke_camera(self, camera_id: str) -> int:
        """Revoke the tokens of a camera (its entry unloads)."""
        return self._revoke_where(lambda grant: grant.camera_id == camera_id)

    def revoke_all(self) -> int:
        """Revoke every token (unload, shutdown)."""
        count = len(self._links)
        self._links.clear()
        return count

    def purge(self) -> int:
        """Drop expired tokens; return how many."""
        now = self._clock()
        doomed = [digest for digest, link in self._links.items() if now >= link.expires_at]
        for digest in doomed:
            del self._links[digest]
        return len(doomed)
