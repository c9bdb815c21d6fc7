"""Errors raised by LocalCam's core; the only exceptions core lets escape.

Every error carries a ``translation_key`` (shared by the config flow's error
strings and the ``exceptions`` section of translations/en.json) and
placeholders for the translated message. Placeholders never hold credentials,
query strings or tokens: only hosts, codec names and short reason words.
"""

from typing import ClassVar


class LocalCamError(Exception):
    """Base class of every error core raises."""

    translation_key: ClassVar[str] = "unknown"

    def __init__(self, message: str = "", **placeholders: str) -> None:
        """Keep a human message (for logs) and translation placeholders."""
        super().__init__(message or self.translation_key)
        self.placeholders: dict[str, str] = placeholders


def copy_error[E: LocalCamError](err: E) -> E:
    """A new instance of ``err`` with its message and fields, to raise once more.

    Not ``copy.copy``: that calls the constructor with the message alone,
    which most of these errors do not take.
    """
    new = type(err).__new__(type(err))
    new.args = err.args
    new.__dict__.update(err.__dict__)
    return new


class InvalidUrlError(LocalCamError):
    """The URL is malformed or uses a scheme LocalCam does not fetch."""

    translation_key = "invalid_url"

    def __init__(self, reason: str) -> None:
        """Name the reason, never the URL (it may hold secrets)."""
        super().__init__(f"invalid URL: {reason}", reason=reason)
        self.reason = reason


class NotLocalError(LocalCamError):
    """The host is, or resolves to, an address outside the allowed networks."""

    translation_key = "not_local"

    def __init__(self, host: str, reason: str) -> None:
        """Name the host and why it is refused."""
        super().__init__(f"{host} is not on the local network: {reason}", host=host, reason=reason)
        self.host = host
        self.reason = reason


class InvalidNetworksError(LocalCamError):
    """The extra allowed networks stored in an entry's options cannot be used."""

    translation_key = "invalid_networks"

    def __init__(self, reason: str) -> None:
        """Name what is wrong with them."""
        super().__init__(f"invalid allowed networks: {reason}", reason=reason)


class CannotConnectError(LocalCamError):
    """The camera refused, reset or could not be reached."""

    translation_key = "cannot_connect"


class RedirectedError(CannotConnectError):
    """The camera sent LocalCam's RTSP request elsewhere (3xx): LocalCam never follows.

    FFmpeg (Home Assistant's stream, LocalCam's grabs) would follow the same
    redirect to wherever it points, unchecked; the glue stops such a stream.
    """

    translation_key = "redirected"

    def __init__(self, status: int) -> None:
        """Name the status only: the Location may point anywhere, and is not repeated."""
        super().__init__(
            f"camera redirects its stream elsewhere (RTSP {status})", status=str(status)
        )


class CertificateError(CannotConnectError):
    """The camera's TLS certificate failed the check its settings ask for."""

    translation_key = "invalid_certificate"

    def __init__(self, reason: str) -> None:
        """Name what the check found (OpenSSL's words: a host name at most)."""
        super().__init__(f"camera certificate not accepted: {reason}", reason=reason)


def certificate_reason(err: BaseException) -> str:
    """OpenSSL's short reason for a refused certificate ("self-signed certificate")."""
    reason = getattr(err, "verify_message", None) or getattr(err, "reason", None)
    return str(reason or "not trusted").rstrip(".")


class StreamRefusedError(CannotConnectError):
    """The device answered, but refused this one stream (RTSP 404, 503, ...).

    An NVR answers so for the channel of a camera that is unplugged: the
    device is there, its other streams may play.
    """


class ReplyTooLargeError(CannotConnectError):
    """The reply was longer than the caller allows (it was not read to the end)."""


class InvalidAuthError(LocalCamError):
    """The camera answered 401: missing or wrong credentials."""

    translation_key = "invalid_auth"


class CameraTimeoutError(LocalCamError):
    """The camera did not answer within the time LocalCam allows."""

    translation_key = "timeout"


class NoVideoError(LocalCamError):
    """The stream opened but carried no decodable video."""

    translation_key = "no_video"


class InvalidImageError(LocalCamError):
    """The camera returned something that is not a sound JPEG."""

    translation_key = "invalid_image"

    def __init__(self, reason: str, *, kind: str) -> None:
        """Name what was wrong with the image, and its kind (one fixed word, for counters).

        ``reason`` may carry what the camera sent (a content type, a size);
        ``kind`` never does, so counters keyed by it stay bounded whatever a
        camera sends.
        """
        super().__init__(f"invalid image: {reason}", reason=reason)
        self.reason = reason
        self.kind = kind


class ProtocolError(LocalCamError):
    """The camera answered, but not in a form LocalCam can use (bad SOAP, faults)."""

    translation_key = "onvif_error"

    def __init__(self, message: str) -> None:
        """The message doubles as the reason shown to the user (no secrets in it)."""
        super().__init__(message, reason=message)
