"""Print the pinned requirements of the integrations Home Assistant always loads.

The demo and the real-hass test start `hass --skip-pip` (no installs at run
time), so the venv must already hold what HA's frontend, its default
integrations and camera/stream import. Their manifests pin the versions.
Dependencies and after-dependencies are both followed: an integration may
import its after-dependency's module when loaded (HA 2026.11's analytics
imports hassio's, which needs aiohasupervisor).
Usage: .venv/bin/python scripts/ha_requirements.py > requirements_demo.txt (then
restore the header comment).
"""

import json
from pathlib import Path

from homeassistant import bootstrap


def main() -> None:
    """Walk the dependency graph of the always-loaded integrations."""
    components = Path(bootstrap.__file__).parent / "components"
    todo = {
        *bootstrap.DEFAULT_INTEGRATIONS,
        *bootstrap.CORE_INTEGRATIONS,
        *bootstrap.LOGGING_AND_HTTP_DEPS_INTEGRATIONS,
        "frontend",
        "config",
        "camera",
        "stream",
        "http",
    }
    seen: set[str] = set()
    requirements: set[str] = set()
    while todo:
        domain = todo.pop()
        if domain in seen:
            continue
        seen.add(domain)
        manifest = components / domain / "manifest.json"
        if not manifest.exists():
            continue
        data = json.loads(manifest.read_text())
        requirements.update(data.get("requirements", []))
        todo.update(data.get("dependencies", []))
        todo.update(data.get("after_dependencies", []))
    print("\n".join(sorted(requirements)))


if __name__ == "__main__":
    main()
