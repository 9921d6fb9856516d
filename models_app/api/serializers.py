"""What the management API reads and writes; the secret and its hash never appear in a read."""

import copy
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from inference.api.schemas import parse_keep_alive
from inference.engine import get_engine
from inference.engine.spec import ModelSpec
from models_app.api.permissions import is_admin
from models_app.choices import KVCacheType, Lane, OptimizeFor, Scope
from models_app.models import APIToken, LLMModel, ModelConfig, SelfTestResult, UsageRecord
from models_app.selectors import USAGE_GROUPS
from models_app.services import apply_config_changes
from models_app.usage_rollup import WINDOWS

# -- Models --------------------------------------------------------------------------


class LLMModelSerializer(serializers.ModelSerializer):
    """A registered model as lists show it; only `name`, `enabled` and `preload` are writable."""

    loaded = serializers.SerializerMethodField(help_text="Whether the engine holds it in memory now.")
    parameters = serializers.CharField(source="parameters_label", read_only=True, help_text="e.g. 135M, 7.2B")

    class Meta:
        model = LLMModel
        fields = ("id", "name", "enabled", "preload", "status", "status_reason", "loaded", "architecture",
                  "parameter_count", "parameters", "quantization", "context_length", "file_size", "sha256",
                  "scanned_at", "updated_at")  # fmt: skip
        read_only_fields = tuple(f for f in fields if f not in ("name", "enabled", "preload"))

    def get_loaded(self, model: LLMModel) -> bool:
        return model.pk in self.context.get("loaded_ids", ())


class LLMModelDetailSerializer(LLMModelSerializer):
    """One model with everything the scan read from its GGUF header."""

    class Meta(LLMModelSerializer.Meta):
        fields = (*LLMModelSerializer.Meta.fields, "file_path", "source_path", "file_mtime", "embedding_length",
                  "block_count", "tokenizer_model", "chat_template", "gguf_metadata", "created_at")  # fmt: skip
        read_only_fields = tuple(f for f in fields if f not in ("name", "enabled", "preload"))


class LoadOptionsSerializer(serializers.Serializer):
    keep_alive = serializers.CharField(
        required=False,
        allow_null=True,
        default=None,
        help_text="How long to stay loaded when idle: '5m', '30s', '1h', seconds, negative for ever. "
        "Omitted: the server's DEFAULT_KEEP_ALIVE_S.",
    )

    def validate_keep_alive(self, value: str | None) -> float | None:
        try:
            return parse_keep_alive(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class LoadResultSerializer(serializers.Serializer):
    id = serializers.CharField()
    loaded = serializers.BooleanField()
    load_ms = serializers.FloatField(
        help_text="How long llama.cpp took; a model already loaded reports its first load."
    )


class UnloadResultSerializer(serializers.Serializer):
    id = serializers.CharField()
    unloaded = serializers.BooleanField(help_text="False when it was not loaded.")


# -- Configs -------------------------------------------------------------------------


class ModelConfigSerializer(serializers.ModelSerializer):
    """A model's llama.cpp tunables, sampling defaults and system prompt, checked against the model."""

    optimize_for = serializers.ChoiceField(
        choices=OptimizeFor.choices,
        required=False,
        help_text="A preset: writes its tunables first; explicit fields in the same request win.",
        error_messages={
            "invalid_choice": f"'{{input}}' is not a preset; choose one of {', '.join(OptimizeFor.values)}."
        },
    )

    class Meta:
        model = ModelConfig
        fields = "__all__"
        read_only_fields = ("model", "updated_at")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        candidate = copy.copy(self.instance)
        apply_config_changes(config=candidate, changes=attrs)
        _check_fits_model(candidate)
        return attrs


def _check_fits_model(config: ModelConfig) -> None:
    """Refuse what would only fail at load time, where a failed load marks the model invalid."""
    model = config.model
    if model.context_length and config.n_ctx > model.context_length:
        raise serializers.ValidationError(
            {"n_ctx": f"{config.n_ctx} exceeds {model.id}'s trained context of {model.context_length} tokens."}
        )
    if config.cache_type_v != KVCacheType.F16 and not config.flash_attn:
        raise serializers.ValidationError(
            {"cache_type_v": f"A {config.cache_type_v} V cache needs flash_attn; enable it or use f16."}
        )
    spec = ModelSpec.from_model(_with_config(model, config))
    budget_mb = get_engine().status()["memory_budget_mb"]
    if spec.estimated_mb() > budget_mb:
        raise serializers.ValidationError(
            {
                "n_ctx": f"{model.id} would need about {spec.estimated_mb():.0f} MB with n_ctx={config.n_ctx} "
                f"(weights + KV cache), over MODEL_MEMORY_BUDGET_MB ({budget_mb:.0f}); lower n_ctx or use a q8_0 cache."
            }
        )


def _with_config(model: LLMModel, config: ModelConfig) -> LLMModel:
    # A copy whose `config` is the unsaved candidate, for ModelSpec.from_model.
    model = copy.copy(model)
    model.config = config
    return model


class ModelConfigChangeSerializer(ModelConfigSerializer):
    reload_required = serializers.BooleanField(
        read_only=True,
        help_text="True when the model is loaded now and a load-time setting changed (llama.cpp tunables or "
        "the system prompt): unload and load it to apply. Sampling defaults apply from the next request.",
    )


# -- Tokens --------------------------------------------------------------------------


class APITokenSerializer(serializers.ModelSerializer):
    """A token as anyone may read it: prefix, scopes and limits, never the secret or its hash."""

    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    models = serializers.SlugRelatedField(
        source="allowed_models", slug_field="id", many=True, read_only=True, help_text="Empty: every model."
    )
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = APIToken
        fields = ("id", "name", "owner", "prefix", "scopes", "models", "expires_at", "rate_limit_rpm",
                  "rate_limit_tpm", "max_concurrent", "lane", "revoked", "revoked_at", "is_active", "last_used_at",
                  "created_at")  # fmt: skip
        read_only_fields = fields


class CreatedTokenSerializer(APITokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown in this response only; store it now.")

    class Meta(APITokenSerializer.Meta):
        fields = (*APITokenSerializer.Meta.fields, "secret")
        read_only_fields = fields


_LIMIT_HELP = "Null: unlimited. Omitted on create: the caller's limit."


class TokenWriteSerializer(serializers.Serializer):
    """Create a token, or (partial) change one; the view checks the caller may grant what it asks for."""

    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False)
    models = serializers.ListField(
        child=serializers.SlugField(), required=False, default=list, help_text="Model ids; empty: every model."
    )
    # No defaults: on create, what is left out is the caller's own (models_app.grants); null means none.
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Null: never. Omitted on create: the caller's expiry."
    )
    rate_limit_rpm = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text=_LIMIT_HELP)
    rate_limit_tpm = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text=_LIMIT_HELP)
    max_concurrent = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text=_LIMIT_HELP)
    lane = serializers.ChoiceField(
        choices=Lane.choices, required=False, help_text="Omitted on create: the caller's lane."
    )

    def validate_models(self, value: list[str]) -> list[str]:
        known = set(LLMModel.objects.filter(pk__in=value).values_list("pk", flat=True))
        if missing := sorted(set(value) - known):
            raise serializers.ValidationError(f"Unknown model(s): {', '.join(missing)}.")
        return sorted(set(value))

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value


class TokenCreateSerializer(TokenWriteSerializer):
    owner = serializers.CharField(
        required=False, help_text="Username; only an admin may name someone else. Default: the caller."
    )

    def validate_owner(self, username: str) -> AbstractBaseUser:
        request = self.context["request"]
        if username == request.user.get_username():
            return request.user
        # Refuse before looking the name up, so a non-admin cannot probe which users exist.
        if not is_admin(request):
            raise PermissionDenied("Only an admin may create tokens for other users.", code="owner_not_allowed")
        owner = get_user_model().objects.filter(username=username, is_active=True).first()
        if owner is None:
            raise serializers.ValidationError(f"No active user is named '{username}'.")
        return owner


# -- Usage ---------------------------------------------------------------------------


class UsageRecordSerializer(serializers.ModelSerializer):
    total_tokens = serializers.IntegerField(read_only=True)

    class Meta:
        model = UsageRecord
        fields = ("id", "request_id", "token", "model", "endpoint", "lane", "status", "prompt_tokens",
                  "completion_tokens", "total_tokens", "time_to_first_token_ms", "duration_ms", "client_address",
                  "error_message", "created_at", "finished_at")  # fmt: skip
        read_only_fields = fields


class SelfTestResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = SelfTestResult
        fields = ("id", "model", "passed", "reason", "time_to_first_token_ms", "tokens_per_s", "completion_tokens",
                  "output_excerpt", "task_id", "created_at")  # fmt: skip
        read_only_fields = fields


class QueuedTaskSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The model.")
    task_id = serializers.CharField(help_text="The Celery task; its result shows in the admin.")


class UsageSummaryQuerySerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=USAGE_GROUPS, default="model")
    window = serializers.ChoiceField(
        choices=tuple(WINDOWS), required=False,
        help_text="24h (by hour) or 30d (by day): the admin dashboard's figures, from the hourly rollups: series per "
        "model, totals per model (with TTFT and decode tokens/s p50/p95) and per token, and requests by ending. "
        "Takes no other filter and no group_by.",
    )  # fmt: skip


class UsageSummaryRowSerializer(serializers.Serializer):
    key = serializers.JSONField(help_text="Token id, model id or UTC date (YYYY-MM-DD); null for rows without one.")
    label = serializers.CharField(help_text="Token or model name, or the date.")
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    mean_ttft_ms = serializers.FloatField(allow_null=True, help_text="Mean time to first token.")
    tokens_per_s = serializers.FloatField(
        allow_null=True, help_text="Completion tokens over decode time, summed over the timed rows."
    )


class UsageSummarySerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=USAGE_GROUPS)
    results = UsageSummaryRowSerializer(many=True)
