"""plugin_manifest.json against KAREN's manifest rules, as written at Zeus-Eternal/AI-Karen@166eab1f.

Paths below are relative to src/ai_karen_engine/ in that commit.
"""

import ast
import re
from dataclasses import fields

import pytest

from karen_extension.config import ClientConfig
from tests.karen_extension.karen_loader import LEGACY_KEYS
from tests.karen_extension.karen_standin import KEBAB_NAME, SEMVER, ExtensionRole, HookPoint, Manifest

# extensions/platform/core/registry/canonical_validator.py, CanonicalStructureValidator.VALID_CATEGORIES
KAREN_CATEGORIES = {
    "plugins", "sys_extensions", "channels", "analytics", "automation", "communication",
    "development", "experimental", "integration", "productivity", "security",
}  # fmt: skip
# extensions/platform/core/registry/validator.py, ExtensionValidator.VALID_*_PERMISSIONS
NETWORK_PERMISSIONS = {"outbound_http", "outbound_https", "inbound", "webhook"}
DATA_PERMISSIONS = {"read", "write", "delete", "admin", "memory:read", "memory:write", "memory:admin"}
PLUGIN_PERMISSIONS = {"execute", "manage"}
SYSTEM_PERMISSIONS = {"metrics", "logs", "config", "admin", "chat:write", "copilot:assist"} | {
    "memory:read", "memory:write", "memory:admin",
}  # fmt: skip


def test_manifest_has_none_of_the_legacy_keys_the_loader_refuses(manifest):
    """extensions/platform/core/host/loader.py: _is_legacy_plugin_manifest refuses plugin_api_version,
    entry_point, module, intent and plugin_type with "still uses the legacy plugin manifest"."""
    assert not set(LEGACY_KEYS) & set(manifest)


def test_manifest_passes_karens_manifest_model(manifest):
    """extensions/platform/core/manifest.py: ExtensionManifest (restated in karen_standin.Manifest)."""
    parsed = Manifest(**manifest)
    assert parsed.hook_points == [HookPoint.PRE_LLM_PROMPT, HookPoint.POST_LLM_RESULT]


def test_id_equals_name_and_name_is_kebab_case(manifest):
    """registry/manifest_enforcer.py warns when id != name; manifest.py NAME_PATTERN is kebab-case, 1-50 chars."""
    assert manifest["id"] == manifest["name"]
    assert re.match(KEBAB_NAME, manifest["name"]) and len(manifest["name"]) <= 50


def test_plugin_directory_is_named_after_the_plugin(manifest, plugin_dir):
    """host/router.py (reload) records extensions_dir/<id>; host/prompt_renderer.py reads prompts
    from extensions_dir/<manifest.name>/<prompt_files.system>: the directory must carry the name."""
    assert plugin_dir.name == manifest["name"]


def test_version_is_semver(manifest):
    """manifest.py: version matches SEMVER_PATTERN."""
    assert re.match(SEMVER, manifest["version"])


@pytest.mark.parametrize("field", ["name", "version", "display_name", "description", "author", "license", "category"])
def test_required_text_fields_are_present_and_not_empty(manifest, field):
    """registry/validator.py: _validate_manifest_format_consistency requires each one non-empty."""
    assert isinstance(manifest[field], str) and manifest[field].strip()


def test_description_is_10_to_500_characters(manifest):
    """registry/validator.py: _validate_with_unified_patterns checks the description with
    ValidationUtils.validate_text_content(min_length=10, max_length=500) (api_routes/shared/schemas.py)."""
    assert 10 <= len(manifest["description"].strip()) <= 500


def test_category_is_one_karen_allows(manifest):
    """registry/canonical_validator.py VALID_CATEGORIES (manifest_enforcer.py validates with it)."""
    assert manifest["category"] == "integration" and manifest["category"] in KAREN_CATEGORIES


def test_tags_are_short_plain_words(manifest):
    """api_routes/shared/schemas.py ValidationUtils.validate_tags: strings of [a-zA-Z0-9_-], at most 50."""
    assert manifest["tags"]
    for tag in manifest["tags"]:
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,50}", tag), tag


def test_entrypoint_names_a_class_defined_in_handler(manifest, plugin_dir):
    """host/loader.py: entrypoint splits on ':' into exactly two parts, the module is 'handler',
    and the class must exist in handler.py."""
    module, class_name = manifest["entrypoint"].split(":")
    tree = ast.parse((plugin_dir / "handler.py").read_text(encoding="utf-8"))
    assert module == "handler"
    assert class_name in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def test_permissions_ask_only_for_outbound_http_and_are_known_to_karen(manifest):
    """registry/validator.py _validate_permissions: each list holds only the VALID_* values;
    registry/manifest_enforcer.py RootManifestModel: each permission is a bool or a list of strings."""
    permissions = manifest["permissions"]
    assert permissions["network_access"] == ["outbound_http"]
    assert set(permissions.get("data_access", [])) <= DATA_PERMISSIONS
    assert set(permissions.get("plugin_access", [])) <= PLUGIN_PERMISSIONS
    assert set(permissions.get("system_access", [])) <= SYSTEM_PERMISSIONS
    assert all(isinstance(v, bool) or all(isinstance(i, str) for i in v) for v in permissions.values())
    assert set(permissions["network_access"]) <= NETWORK_PERMISSIONS


def test_rbac_names_karen_roles_and_is_enabled_by_default(manifest):
    """manifest.py ExtensionRBAC: allowed_roles from ExtensionRole; host/base.py sets
    `enabled = manifest.rbac.default_enabled`."""
    assert {ExtensionRole(r) for r in manifest["rbac"]["allowed_roles"]} == {
        ExtensionRole.USER, ExtensionRole.ADMIN, ExtensionRole.DEVELOPER,
    }  # fmt: skip
    assert manifest["rbac"]["default_enabled"] is True


def test_hook_points_are_karens_and_include_the_one_dispatch_calls(manifest):
    """manifest.py HookPoint values; host/router.py PluginRouter.dispatch executes POST_LLM_RESULT."""
    assert {HookPoint(h) for h in manifest["hook_points"]} >= {HookPoint.POST_LLM_RESULT}
    assert "pre_llm_prompt" in manifest["hook_points"]


def test_prompt_files_are_strings_naming_files_that_exist(manifest, plugin_dir):
    """registry/manifest_enforcer.py RootManifestModel: prompt_files is Dict[str, Optional[str]]
    (so no `templates` object, no `prompt_first` bool); it also notes a missing `primary`."""
    files = manifest["prompt_files"]
    assert files["primary"] == files["system"]
    for path in files.values():
        assert isinstance(path, str) and (plugin_dir / path).is_file()


def test_system_prompt_renders_in_karens_strict_jinja(manifest, plugin_dir):
    """host/prompt_renderer.py compiles prompt files with Jinja2 and StrictUndefined: a stray
    `{{` or `{%` would be a syntax error or an undefined variable."""
    text = (plugin_dir / manifest["prompt_files"]["system"]).read_text(encoding="utf-8")
    assert "KAREN" in text and not re.search(r"\{\{|\{%|\{#", text)


def test_config_schema_gives_every_setting_a_default_and_requires_none(manifest):
    """host/loader.py builds the plugin with the config manager's config, `{}` by default
    (host/config.py get_extension_config), so every setting needs a default."""
    schema = manifest["config_schema"]
    assert schema["type"] == "object" and schema["required"] == []
    assert all("default" in spec for spec in schema["properties"].values())


def test_config_schema_defaults_are_the_clients_defaults(manifest):
    """One set of defaults: the manifest shows KAREN what ClientConfig uses."""
    defaults = {f.name: getattr(ClientConfig(), f.name) for f in fields(ClientConfig)}
    schema = {name: spec["default"] for name, spec in manifest["config_schema"]["properties"].items()}
    assert schema == defaults


def test_manifest_leaves_out_keys_karens_two_manifest_models_read_differently(manifest):
    """`dependencies` is an object in manifest.py ExtensionDependencies but a list in
    services/plugin_discovery.py PluginManifest: any value breaks one of them. `parameters`
    would be read as per-parameter rules by services/plugin_execution.py."""
    assert "dependencies" not in manifest and "parameters" not in manifest


def test_capabilities_are_booleans(manifest):
    """registry/manifest_enforcer.py RootManifestModel: capabilities is Dict[str, bool]."""
    assert all(isinstance(v, bool) for v in manifest["capabilities"].values())
