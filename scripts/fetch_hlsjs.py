"""Fetch hls.js from the npm registry into LocalCam's cache (for the cast player test).

tests/test_cast_player.py plays a cast URL the way a Cast receiver's web
player does, with hls.js, beside Chromium's own HLS player. Tests send no
packet off loopback, so this installer (run by scripts/install_e2e_deps)
downloads it beforehand: one pinned version, checked against the registry's
sha512 integrity, unpacked to ~/.cache/localcam/hls.js-<version>/hls.min.js.
Prints that path. Stdlib only; bounded by a timeout and a size cap.
"""

import base64
import hashlib
import io
import os
from pathlib import Path
import sys
import tarfile
import urllib.request

VERSION = "1.7.4"
# The registry's dist.integrity for that version.
INTEGRITY = (
    "sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEU"
    "mHQeNGyjC8U62+bruqW/Tpm+tg=="
)
TARBALL = f"https://registry.npmjs.org/hls.js/-/hls.js-{VERSION}.tgz"
MEMBER = "package/dist/hls.min.js"
MAX_BYTES = 64 * 1024 * 1024


def target() -> Path:
    """Where the file lives (shared with tests/test_cast_player.py)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "localcam" / f"hls.js-{VERSION}" / "hls.min.js"


def main() -> int:
    """Download, verify and unpack once; later runs find the file and stay offline."""
    path = target()
    if path.is_file():
        print(path)
        return 0
    with urllib.request.urlopen(TARBALL, timeout=60) as response:
        data = response.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        print(f"fetch_hlsjs: {TARBALL} is larger than {MAX_BYTES} bytes", file=sys.stderr)
        return 1
    got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != INTEGRITY:
        print(f"fetch_hlsjs: integrity mismatch for {TARBALL}: {got}", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            print(f"fetch_hlsjs: {MEMBER} missing from {TARBALL}", file=sys.stderr)
            return 1
        script = member.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(script)
    partial.replace(path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
