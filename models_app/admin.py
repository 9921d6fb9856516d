"""The Django admin for the registry, configs, tokens and usage."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from models_app.choices import Scope
from models_app.models import APIToken, LLMModel, ModelConfig, UsageRecord
from models_app.scanning import rescan_model
from models_app.services import revoke_token


class ModelConfigInline(admin.StackedInline):
    model = ModelConfig
    can_delete = False
    fieldsets = (
        (None, {"fields": ("optimize_for", "system_prompt")}),
        (
            "llama.cpp",
            {
                "fields": (
                    ("n_ctx", "n_threads", "n_batch", "n_gpu_layers"),
                    ("use_mmap", "use_mlock", "flash_attn"),
                    ("rope_scaling", "rope_freq_base", "rope_freq_scale"),
                    ("cache_type_k", "cache_type_v"),
                )
            },
        ),
        ("Sampling defaults", {"fields": (("temperature", "top_p", "top_k", "repeat_penalty", "max_tokens"),)}),
    )


def _apply_changed_preset(config: ModelConfig, changed: list[str]) -> None:
    # A newly chosen preset writes its tunables; otherwise the fields as edited stand.
    if "optimize_for" in changed:
        config.apply_preset()


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "enabled", "preload", "architecture", "parameters", "quantization",
                    "context_length", "size", "updated_at")  # fmt: skip
    list_filter = ("status", "enabled", "preload", "architecture", "quantization")
    search_fields = ("id", "name", "file_path", "sha256")
    readonly_fields = ("id", "file_path", "source_path", "file_size", "file_mtime", "sha256", "architecture",
                       "parameter_count", "quantization", "context_length", "embedding_length", "block_count",
                       "tokenizer_model", "chat_template", "gguf_metadata", "status", "status_reason",
                       "scanned_at", "created_at", "updated_at")  # fmt: skip
    fieldsets = (
        (None, {"fields": ("id", "name", "enabled", "preload", "status", "status_reason")}),
        ("File", {"fields": ("file_path", "source_path", "file_size", "file_mtime", "sha256", "scanned_at")}),
        (
            "GGUF metadata",
            {
                "fields": (
                    "architecture",
                    "parameter_count",
                    "quantization",
                    "context_length",
                    "embedding_length",
                    "block_count",
                    "tokenizer_model",
                    "chat_template",
                    "gguf_metadata",
                )
            },
        ),
        ("Timestamps", {"fields": ("created_at", "updated_at")}),
    )
    inlines = (ModelConfigInline,)
    actions = ("enable", "disable", "rescan")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # models come from scanning MODELS_DIR, never from a typed path

    @admin.display(description="params", ordering="parameter_count")
    def parameters(self, obj: LLMModel) -> str:
        return obj.parameters_label

    @admin.display(description="size", ordering="file_size")
    def size(self, obj: LLMModel) -> str:
        return filesizeformat(obj.file_size)

    def save_formset(self, request, form, formset, change) -> None:  # noqa: ANN001 - Django's signature
        for inline_form in formset.forms:
            if isinstance(inline_form.instance, ModelConfig):
                _apply_changed_preset(inline_form.instance, inline_form.changed_data)
        super().save_formset(request, form, formset, change)

    @admin.action(description="Enable selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self.message_user(request, f"Enabled {queryset.update(enabled=True)} model(s).")

    @admin.action(description="Disable selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self.message_user(request, f"Disabled {queryset.update(enabled=False)} model(s).")

    @admin.action(description="Rescan selected (hash + probe again)")
    def rescan(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        results = [rescan_model(model) for model in queryset]
        summary = ", ".join(f"{m.id}: {m.status}" for m in results)
        self.message_user(request, f"Rescanned {len(results)} model(s): {summary}")


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("model", "optimize_for", "n_ctx", "n_threads", "n_batch", "n_gpu_layers", "flash_attn",
                    "cache_type_k", "temperature", "max_tokens", "updated_at")  # fmt: skip
    list_filter = ("optimize_for", "flash_attn", "cache_type_k")
    search_fields = ("model__id", "model__name")
    readonly_fields = ("model", "updated_at")
    list_select_related = ("model",)
    fieldsets = ((None, {"fields": ("model", "updated_at")}), *ModelConfigInline.fieldsets)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # one config per model, created by the scan

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001 - Django's signature
        _apply_changed_preset(obj, form.changed_data)
        super().save_model(request, obj, form, change)


class APITokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = APIToken
        fields = ("name", "owner", "scopes", "allowed_models", "expires_at", "rate_limit_rpm", "rate_limit_tpm")


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    form = APITokenForm
    list_display = ("name", "prefix", "owner", "scope_list", "revoked", "expires_at", "last_used_at", "created_at")
    list_filter = ("revoked", "owner")
    search_fields = ("name", "prefix", "owner__username")
    readonly_fields = ("prefix", "last_used_at", "revoked", "revoked_at", "created_at")
    filter_horizontal = ("allowed_models",)
    list_select_related = ("owner",)
    actions = ("revoke",)

    @admin.display(description="scopes")
    def scope_list(self, obj: APIToken) -> str:
        return ", ".join(obj.scopes)

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001 - Django's signature
        if not change:
            secret = APIToken.generate_secret()
            obj.set_secret(secret)
            super().save_model(request, obj, form, change)
            # The only time the secret exists in clear: on this page, never in the DB or logs.
            self.message_user(request, f"Token created. Copy it now, it is not shown again: {secret}", messages.WARNING)
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        tokens = list(queryset.filter(revoked=False))
        for token in tokens:
            revoke_token(token=token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).")


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ("created_at", "endpoint", "model", "token", "status", "prompt_tokens", "completion_tokens",
                    "time_to_first_token_ms", "duration_ms", "client_address")  # fmt: skip
    list_filter = ("status", "endpoint", "model", "token", "created_at")
    search_fields = ("request_id", "token__name", "token__prefix", "model__id")
    date_hierarchy = "created_at"
    list_select_related = ("model", "token")
    readonly_fields = [f.name for f in UsageRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # usage is measured, never typed in

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False
