"""The core library never imports Home Assistant."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "custom_components" / "localcam" / "core"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_has_modules() -> None:
    """The boundary test looks at real files (guards against a wrong path)."""
    assert {"netpolicy.py", "snapshot.py", "rtsp.py", "jpeg.py"} <= {
        p.name for p in CORE.glob("*.py")
    }


def test_core_never_imports_homeassistant() -> None:
    """No module in core/ imports homeassistant, at any depth of the file."""
    offenders = {
        path.name: sorted(m for m in _imported_modules(path) if m.split(".")[0] == "homeassistant")
        for path in CORE.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
