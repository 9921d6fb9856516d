"""A stand-in for the few KAREN modules the plugin touches, shaped as KAREN is at 166eab1f.

KAREN cannot be installed here (its loader pulls in its whole dependency stack), so
this restates, in our own words, the parts of Zeus-Eternal/AI-Karen the plugin relies on:

- src/ai_karen_engine/extensions/platform/core/manifest.py: the HookPoint and
  ExtensionRole values, the ExtensionContext dataclass, HookContext, and the
  ExtensionManifest field rules (kebab-case name of 1-50 chars, semver version,
  "module:Class" entrypoint, roles and hook points from the enums, string prompt files,
  a config_schema with type/properties/required).
- src/ai_karen_engine/extensions/platform/core/host/base.py: ExtensionBase, built as
  `Class(manifest, context)`, with abstract async initialize/shutdown/execute_hook and
  `enabled = manifest.rbac.default_enabled`.
"""

import logging
import sys
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEBAB_NAME = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"


class HookPoint(str, Enum):  # noqa: UP042 - KAREN's enums are (str, Enum), whose str() differs
    PRE_INTENT_DETECTION = "pre_intent_detection"
    PRE_MEMORY_RETRIEVAL = "pre_memory_retrieval"
    POST_MEMORY_RETRIEVAL = "post_memory_retrieval"
    PRE_LLM_PROMPT = "pre_llm_prompt"
    POST_LLM_RESULT = "post_llm_result"
    POST_RESPONSE = "post_response"


class ExtensionRole(str, Enum):  # noqa: UP042
    SYSTEM = "system"
    ADMIN = "admin"
    DEVELOPER = "developer"
    USER = "user"
    GUEST = "guest"


class Permissions(BaseModel):
    tools: list[str] = []
    data_access: list[str] = []
    plugin_access: list[str] = []
    system_access: list[str] = []
    network_access: list[str] = []


class RBAC(BaseModel):
    allowed_roles: list[ExtensionRole] = []
    default_enabled: bool = True


class PromptFiles(BaseModel):
    system: str | None = None
    user: str | None = None
    templates: dict[str, str] = {}
    prompt_first: bool = True


class ConfigSchema(BaseModel):
    type: str = "object"
    properties: dict[str, Any] = {}
    required: list[str] = []


class Manifest(BaseModel):
    """The rules of KAREN's ExtensionManifest that a plugin manifest can break."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=KEBAB_NAME, min_length=1, max_length=50)
    version: str = Field(pattern=SEMVER)
    display_name: str
    description: str
    author: str
    license: str
    category: str
    tags: list[str] = []
    entrypoint: str | None = None
    permissions: Permissions = Permissions()
    rbac: RBAC = RBAC()
    hook_points: list[HookPoint] = []
    prompt_files: PromptFiles = PromptFiles()
    config_schema: ConfigSchema | None = None

    @field_validator("entrypoint")
    @classmethod
    def _module_and_class(cls, value: str | None) -> str | None:
        if value and ":" not in value:
            raise ValueError("entrypoint is 'module:ClassName'")
        return value


@dataclass
class ExtensionContext:
    plugin_router: Any
    db_session: Any
    app_instance: Any
    tenant_id: str | None = None
    user_id: str | None = None
    extension_dir: Path | None = None
    config: dict[str, Any] | None = None


class HookContext:
    def __init__(self, hook_point: HookPoint, data: dict[str, Any], user_context: dict[str, Any] | None = None):
        self.hook_point = hook_point
        self.data = data
        self.user_context = user_context or {}
        self.results: dict[str, Any] = {}


class ExtensionBase(ABC):
    def __init__(self, manifest: Manifest, context: ExtensionContext):
        self.manifest = manifest
        self.context = context
        self.logger = logging.getLogger(f"extension.{manifest.name}")
        self._is_initialized = False
        self._is_shutdown = False
        self.enabled = manifest.rbac.default_enabled

    @abstractmethod
    async def initialize(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    async def execute_hook(self, hook_point: HookPoint, context: HookContext) -> dict[str, Any]: ...

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_status(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "initialized": self._is_initialized,
            "shutdown": self._is_shutdown,
            "hook_points": [hp.value for hp in self.manifest.hook_points],
        }


MODULES = {
    "ai_karen_engine.extensions.platform.core.host.base": {
        "ExtensionBase": ExtensionBase, "ExtensionContext": ExtensionContext,
        "HookContext": HookContext, "HookPoint": HookPoint,
    },
    "ai_karen_engine.extensions.platform.core.manifest": {
        "ExtensionManifest": Manifest, "ExtensionContext": ExtensionContext,
        "HookContext": HookContext, "HookPoint": HookPoint, "ExtensionRole": ExtensionRole,
    },
}  # fmt: skip


def stand_in_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries that make `from ai_karen_engine...host.base import ExtensionBase` work."""
    modules: dict[str, types.ModuleType] = {}
    for dotted, names in MODULES.items():
        parts = dotted.split(".")
        for depth in range(1, len(parts)):
            package = ".".join(parts[:depth])
            modules.setdefault(package, types.ModuleType(package)).__path__ = []
        module = types.ModuleType(dotted)
        module.__dict__.update(names)
        modules[dotted] = module
    return modules


def install() -> None:
    """Put the stand-in into sys.modules for good (for a child process)."""
    sys.modules.update(stand_in_modules())
