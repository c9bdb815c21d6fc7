"""What hassfest would check, for a custom integration it skips.

The quality scale's 54 rules; translations used and present; icons; services;
manifest, hacs.json and the test requirements in agreement; the HACS layout.
"""

import ast
import asyncio
import json
from pathlib import Path
import re
import runpy
import string
from typing import Any

from packaging.requirements import Requirement
import pytest
import yaml

from custom_components.localcam import config_flow as cf
from custom_components.localcam.const import RTSP_TRANSPORTS
from custom_components.localcam.core import errors as core_errors, identity as core_identity
from custom_components.localcam.helpers import credentials_schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "custom_components" / "localcam"
RULES = {
    # Bronze
    "action-setup", "appropriate-polling", "brands", "common-modules",
    "config-flow-test-coverage", "config-flow", "dependency-transparency", "docs-actions",
    "docs-conditions", "docs-high-level-description", "docs-installation-instructions",
    "docs-removal-instructions", "docs-triggers", "entity-event-setup", "entity-unique-id",
    "has-entity-name", "runtime-data", "test-before-configure", "test-before-setup",
    "unique-config-entry",
    # Silver
    "action-exceptions", "config-entry-unloading", "docs-configuration-parameters",
    "docs-installation-parameters", "entity-unavailable", "integration-owner",
    "log-when-unavailable", "parallel-updates", "reauthentication-flow", "test-coverage",
    # Gold
    "devices", "diagnostics", "discovery-update-info", "discovery", "docs-data-update",
    "docs-examples", "docs-known-limitations", "docs-supported-devices",
    "docs-supported-functions", "docs-troubleshooting", "docs-use-cases", "dynamic-devices",
    "entity-category", "entity-device-class", "entity-disabled-by-default",
    "entity-translations", "exception-translations", "icon-translations",
    "reconfiguration-flow", "repair-issues", "stale-devices",
    # Platinum
    "async-dependency", "inject-websession", "strict-typing",
}  # fmt: skip


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _code() -> dict[Path, str]:
    return {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def _error_keys() -> set[str]:
    """translation_key of every error class core can raise."""
    keys = set()
    for module in (core_errors, core_identity):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, core_errors.LocalCamError):
                keys.add(value.translation_key)
    return keys


def test_quality_scale_has_all_54_rules_with_a_reason() -> None:
    """Every rule is listed, and each is done or exempt with a one-line reason."""
    rules = yaml.safe_load((PACKAGE / "quality_scale.yaml").read_text())["rules"]
    assert len(RULES) == 54
    assert set(rules) == RULES
    for name, rule in rules.items():
        assert isinstance(rule, dict), f"{name}: give a status and a comment"
        assert rule["status"] in {"done", "exempt"}, name
        assert rule.get("comment", "").strip(), f"{name}: say why"


def test_demo_requirements_are_what_the_pinned_ha_manifests_pin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """requirements_demo.txt is scripts/ha_requirements.py's output for the pinned HA.

    The demo and the real-hass test start hass without pip: a requirement the
    walk finds but the file lacks (or an old pin left after raising HA's)
    would fail only there, as an integration that cannot be imported.
    """
    runpy.run_path(str(ROOT / "scripts" / "ha_requirements.py"), run_name="__main__")
    generated = capsys.readouterr().out.split()
    listed = [
        line
        for line in (ROOT / "requirements_demo.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert listed == generated
    # Followed through an after-dependency (analytics imports hassio's module).
    assert any(line.startswith("aiohasupervisor==") for line in listed)


def test_manifest_hacs_and_requirements_agree() -> None:
    """Versions and pins in the manifest, hacs.json and requirements_test.txt match."""
    manifest = _json(PACKAGE / "manifest.json")
    hacs = _json(ROOT / "hacs.json")
    pins = {}
    for file in ("requirements_test.txt", "requirements_demo.txt"):
        for line in (ROOT / file).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    for requirement in manifest["requirements"]:
        # At least the version the tests run, and no more than a lower bound:
        # each is also pinned by HA (camera/stream, onvif), and an exact pin
        # would stop LocalCam loading (or reinstall HA's onvif library) the
        # day HA raises its own.
        (specifier,) = Requirement(requirement).specifier
        assert specifier.operator == ">=", requirement
        assert pins.get(Requirement(requirement).name.lower()) == specifier.version, requirement
    ha_version = pins["homeassistant"]
    assert tuple(map(int, hacs["homeassistant"].split("."))) <= tuple(
        map(int, ha_version.split("."))
    )
    assert manifest["domain"] == "localcam"
    assert manifest["integration_type"] == "device"
    assert manifest["iot_class"].startswith("local_")
    assert "cast" in manifest.get("after_dependencies", [])
    assert "cast" not in manifest["dependencies"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"])
    import homeassistant.const as ha_const

    assert ha_const.__version__ == ha_version


def test_hacs_layout() -> None:
    """One integration under custom_components/, hacs.json and a README at the root."""
    assert [p.name for p in (ROOT / "custom_components").iterdir() if p.is_dir()] == ["localcam"]
    assert (ROOT / "README.md").is_file()
    hacs = _json(ROOT / "hacs.json")
    assert hacs["name"] == "LocalCam"
    assert hacs["render_readme"] is True
    for name in ("icon", "logo"):
        for variant in ("", "dark_"):
            for scale in ("", "@2x"):
                assert (PACKAGE / "brand" / f"{variant}{name}{scale}.png").is_file()


def test_translations_are_full_strings() -> None:
    """No [%key:...] references: custom integrations do not resolve them."""
    text = (PACKAGE / "translations" / "en.json").read_text()
    assert "[%key:" not in text


def test_every_exception_key_has_a_message_and_every_message_is_used() -> None:
    """translation_key in code <-> exceptions in en.json, both directions."""
    strings = _json(PACKAGE / "translations" / "en.json")
    exceptions = strings["exceptions"]
    static = set()
    for source in _code().values():
        static |= set(re.findall(r'translation_key="([a-z0-9_]+)"', source))
    errors = _error_keys()
    # Health failures are translated as health_<error key> (coordinator.py).
    # (Not invalid_networks: setup refuses those before any health check runs.)
    health = {
        f"health_{key}"
        for key in errors - {"invalid_auth", "invalid_image", "unknown", "invalid_networks"}
    }
    used_as_exception = (static | errors | health) - set(strings.get("issues", {}))
    for key in used_as_exception:
        if key in {"main"}:  # entity translation key, not an exception
            continue
        assert key in exceptions or key in strings["config"]["error"], key
    for key, value in exceptions.items():
        assert set(value) == {"message"}, key
        assert key in static | errors | health, f"unused exception string {key}"


def test_every_placeholder_an_exception_message_names_is_passed() -> None:
    """A message naming {x} that its raise does not pass shows a raw "{x}" to the user.

    Checked for every raise with a literal translation_key and a literal
    placeholder dict (the others pass theirs through helpers the flow tests run).
    """
    strings = _json(PACKAGE / "translations" / "en.json")
    problems: list[str] = []
    checked = 0
    for path, source in _code().items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            key = keywords.get("translation_key")
            if "translation_domain" not in keywords or not isinstance(key, ast.Constant):
                continue
            message = strings["exceptions"].get(key.value) or strings["issues"].get(key.value)
            if message is None:
                problems.append(f"{path.name}:{node.lineno}: no string for {key.value}")
                continue
            passed = keywords.get("translation_placeholders")
            if passed is not None and not isinstance(passed, ast.Dict):
                continue
            names = (
                set()
                if passed is None
                else {k.value for k in passed.keys if isinstance(k, ast.Constant)}
            )
            wanted = set(re.findall(r"\{([a-z_]+)\}", json.dumps(message)))
            checked += 1
            if wanted - names:
                problems.append(f"{path.name}:{node.lineno}: {key.value} lacks {wanted - names}")
    assert checked > 10
    assert not problems, problems


def test_config_flow_errors_and_aborts_are_translated() -> None:
    """Every error the flow can show, and every abort reason, has a string."""
    strings = _json(PACKAGE / "translations" / "en.json")["config"]
    flow = (PACKAGE / "config_flow.py").read_text()
    for reason in set(re.findall(r'reason="([a-z_]+)"', flow)) | {
        "reauth_successful",
        "reconfigure_successful",
        "already_configured",
    }:
        assert reason in strings["abort"], reason
    options_errors = _json(PACKAGE / "translations" / "en.json")["options"]["error"]
    for key in _error_keys() | set(re.findall(r'errors\[[^\]]+\] = "([a-z_]+)"', flow)):
        # Each is shown by the config flow or by the options flow (or both).
        assert key in strings["error"] or key in options_errors, key


def test_readme_describes_every_field_of_the_forms_that_add_a_camera() -> None:
    """docs-installation-parameters: each field of the URL, ONVIF and search forms."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0].lower()
    steps = json.loads(
        (ROOT / "custom_components" / "localcam" / "translations" / "en.json").read_text()
    )["config"]["step"]
    missing = sorted(
        f"{step}: {label}"
        for step in ("url", "onvif", "scan")
        for label in steps[step]["data"].values()
        if label.lower() not in section
    )
    assert not missing, missing


def test_entities_have_icons() -> None:
    """Every entity translation key has an icon in icons.json."""
    icons = _json(PACKAGE / "icons.json")
    keys: set[tuple[str, str]] = set()
    for path, source in _code().items():
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Assign)
                and any(
                    (isinstance(t, ast.Name) and t.id == "_attr_translation_key")
                    or (isinstance(t, ast.Attribute) and t.attr == "_attr_translation_key")
                    for t in node.targets
                )
                and isinstance(node.value, ast.Constant)
            ):
                keys.add((path.stem, str(node.value.value)))
    assert keys
    for platform, key in keys:
        assert key in icons["entity"][platform], (platform, key)


def test_services_strings_and_icons_agree() -> None:
    """Each action and field in services.yaml has strings, each action an icon, each option text."""
    services = yaml.safe_load((PACKAGE / "services.yaml").read_text())
    strings = _json(PACKAGE / "translations" / "en.json")
    icons = _json(PACKAGE / "icons.json")
    assert set(services) == set(strings["services"]) == set(icons["services"])
    for service, spec in services.items():
        fields = spec.get("fields", {})
        assert set(fields) == set(strings["services"][service].get("fields", {})), service
        assert icons["services"][service]["service"].startswith("mdi:")
        for field in fields.values():
            for selector in field.get("selector", {}).values():
                if selector and (key := selector.get("translation_key")):
                    assert set(selector["options"]) == set(strings["selector"][key]["options"])


def test_config_flow_select_options_are_translated() -> None:
    """The options flow's RTSP transport selector names each of its options."""
    strings = _json(PACKAGE / "translations" / "en.json")
    assert set(RTSP_TRANSPORTS) == set(strings["selector"]["rtsp_transport"]["options"])


def test_every_form_field_has_a_label_and_a_description() -> None:
    """quality_scale config-flow: data and data_description for every field of every form."""
    strings = _json(PACKAGE / "translations" / "en.json")
    forms = {
        "url": cf._url_schema({}, adding=True),
        "reconfigure": cf._url_schema({}),
        "onvif": cf._onvif_schema(adding=True),
        "reconfigure_onvif": cf._onvif_schema(),
        "reauth_confirm": credentials_schema(None),
    }
    for step, schema in forms.items():
        fields = {str(key) for key in schema.schema}
        texts = strings["config"]["step"][step]
        assert fields == set(texts["data"]) == set(texts["data_description"]), step
    fix = strings["issues"]["identity_mismatch"]["fix_flow"]["step"]["credentials"]
    assert {str(k) for k in credentials_schema(None).schema} == set(fix["data"])


def test_every_repair_issue_has_strings_and_its_placeholders() -> None:
    """Each issue raised passes every placeholder its strings name (issues carry no domain).

    test_every_placeholder_an_exception_message_names_is_passed reads only
    calls with a translation_domain; ir.async_create_issue takes none.
    """
    strings = _json(PACKAGE / "translations" / "en.json")
    constants = {"ISSUE_NO_INTERNAL_URL": "no_internal_url"}
    problems = []
    checked: set[str] = set()
    for path, source in _code().items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func.endswith("create_issue"):
                key_node, passed = (
                    keywords.get("translation_key"),
                    keywords.get("translation_placeholders"),
                )
            elif func == "_async_warning" and len(node.args) == 4:
                key_node, passed = node.args[2], node.args[3]
            else:
                continue
            if key_node is None:
                continue
            if isinstance(key_node, ast.Constant):
                key = key_node.value
            else:
                key = constants.get(ast.unparse(key_node))
            if not isinstance(key, str):
                continue  # _async_warning's own create_issue call, keyed by its argument
            dicts = [n for n in ast.walk(passed) if isinstance(n, ast.Dict)] if passed else []
            names = {k.value for d in dicts for k in d.keys if isinstance(k, ast.Constant)}
            wanted = set(re.findall(r"\{(\w+)\}", json.dumps(strings["issues"][key])))
            checked.add(key)
            if wanted - names:
                problems.append(f"{path.name}:{node.lineno} {key} lacks {wanted - names}")
    assert not problems, problems
    assert checked == set(strings["issues"])


# hassfest's URL rule for strings (it validates a custom integration's en.json too).
_URL_IN_STRING = re.compile(
    r"(((ftp|ftps|scp|http|https|mqtt|mqtts|socket|socks5):\/\/|www\.)"
    r"[a-z0-9]+([\-\.]{1}[a-z0-9]+)*\.[a-z]{2,5}(:[0-9]{1,5})?(\/.*)?)",
    re.IGNORECASE,
)


def test_strings_pass_hassfests_value_rules() -> None:
    """No stray spaces, quoted placeholders, URLs, or placeholders that are not names."""

    def texts(value: object, path: str = "") -> list[tuple[str, str]]:
        if isinstance(value, dict):
            return [item for k, v in value.items() for item in texts(v, f"{path}.{k}")]
        return [(path[1:], str(value))]

    bad = []
    for key, text in texts(_json(PACKAGE / "translations" / "en.json")):
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f]
        if (
            text != text.strip()
            or re.search(r"'{\w+}'", text)
            or _URL_IN_STRING.search(text)
            or not all(f.isidentifier() for f in fields)
        ):
            bad.append(key)
    assert not bad, bad


def test_troubleshooting_covers_every_repair_issue() -> None:
    """docs-troubleshooting: the README's table has a row for each repair issue.

    "{name} reports an address outside your network" (uri_not_local) had none.
    """
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    missing = []
    for key, issue in _json(PACKAGE / "translations" / "en.json")["issues"].items():
        # The title's fixed words (the table shows placeholders as …).
        words = max(re.split(r"\{\w+\}", issue["title"]), key=len).strip()
        if words not in section:
            missing.append(f"{key}: {issue['title']}")
    assert not missing, missing


async def test_no_runtime_files_are_tracked() -> None:
    """A helper's PID file (blackhole.pid) was once committed at the repository root."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (a HACS download): nothing is tracked")
    # Through the loop: a blocking subprocess call in a test that shares a
    # worker with hass fixtures trips Home Assistant's blocking-call guard.
    git = await asyncio.create_subprocess_exec(
        "git", "ls-files", "*.pid", "*.log", "*.sock", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        tracked, _ = await git.communicate()
    assert git.returncode == 0
    assert tracked.split() == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_future_annotations(path: Path) -> None:
    """Python 3.14 style: no future-annotations import."""
    banned = "from __future__ " + "import annotations"  # split: the house grep reads files
    assert banned not in path.read_text()
