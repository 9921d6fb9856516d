"""The Django admin for the registry, configs, self-tests and nodes (tokens and usage: admin_tokens.py)."""

from celery import Task
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from models_app.admin_tokens import usage_link  # (importing it registers the token and usage admins)
from models_app.models import (
    InferenceNode,
    LLMModel,
    ModelAlias,
    ModelConfig,
    ModelPlacement,
    SelfTestResult,
)
from models_app.selectors import ollama_name
from models_app.tasks import BrokerUnavailable, enqueue
from models_app.tasks import preload_models as preload_models_task
from models_app.tasks import rescan_model as rescan_model_task
from models_app.tasks import run_self_test as run_self_test_task
from models_app.tasks import scan_models as scan_models_task

SELF_TEST_HISTORY = 20  # rows of history on a model's page; the full list is one link away


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


class ModelAliasFormSet(BaseInlineFormSet):
    """Checks across the rows of one save, which each row's own validation cannot see."""

    def clean(self) -> None:
        super().clean()
        rows = [f.cleaned_data for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        names = [row["name"].lower() for row in rows if row.get("name")]
        if len(names) != len(set(names)):
            raise ValidationError("Two aliases differ only in case; an alias names one model, ignoring case.")
        if sum(1 for row in rows if row.get("ollama")) > 1:
            raise ValidationError("Tick 'Ollama name' on one alias only: it is the name /api/tags shows.")


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    formset = ModelAliasFormSet
    fields = ("name", "ollama", "created_at")
    readonly_fields = ("created_at",)
    extra = 1
    verbose_name_plural = "aliases (other names clients may send as `model`; one is its Ollama name)"


class SelfTestResultInline(admin.TabularInline):
    model = SelfTestResult
    verbose_name_plural = f"self-test history (latest {SELF_TEST_HISTORY})"
    fields = ("created_at", "passed", "tokens_per_s", "time_to_first_token_ms", "completion_tokens", "reason",
              "output_excerpt")  # fmt: skip
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: LLMModel | None = None) -> bool:
        return False  # measured by the self-test task, never typed in

    def has_change_permission(self, request: HttpRequest, obj: LLMModel | None = None) -> bool:
        return False


def _apply_changed_preset(config: ModelConfig, changed: list[str]) -> None:
    # A newly chosen preset writes its tunables; otherwise the fields as edited stand.
    if "optimize_for" in changed:
        config.apply_preset()


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "ollama_name", "status", "enabled", "preload", "architecture", "parameters",
                    "quantization", "context_length", "size", "load_failures", "updated_at")  # fmt: skip
    list_filter = ("status", "enabled", "preload", "architecture", "quantization")
    search_fields = ("id", "name", "file_path", "sha256", "aliases__name")
    readonly_fields = ("id", "file_path", "source_path", "file_size", "file_mtime", "sha256", "architecture",
                       "parameter_count", "quantization", "context_length", "embedding_length", "block_count",
                       "tokenizer_model", "chat_template", "gguf_metadata", "status", "status_reason",
                       "scanned_at", "created_at", "updated_at", "latest_self_test", "load_failures",
                       "last_load_error", "load_retry_at", "usage")  # fmt: skip
    fieldsets = (
        (
            None,
            {"fields": ("id", "name", "enabled", "preload", "status", "status_reason", "latest_self_test", "usage")},
        ),
        ("Loading", {"fields": ("load_failures", "last_load_error", "load_retry_at")}),
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
    inlines = (ModelConfigInline, ModelAliasInline, SelfTestResultInline)
    actions = ("enable", "disable", "queue_scan", "rescan", "queue_preload", "queue_self_test")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # models come from scanning MODELS_DIR, never from a typed path

    def get_queryset(self, request: HttpRequest) -> QuerySet[LLMModel]:
        return super().get_queryset(request).prefetch_related("aliases")

    @admin.display(description="Ollama name")
    def ollama_name(self, obj: LLMModel) -> str:
        return ollama_name(obj)

    @admin.display(description="params", ordering="parameter_count")
    def parameters(self, obj: LLMModel) -> str:
        return obj.parameters_label

    @admin.display(description="size", ordering="file_size")
    def size(self, obj: LLMModel) -> str:
        return filesizeformat(obj.file_size)

    @admin.display(description="usage")
    def usage(self, obj: LLMModel) -> str:
        return format_html('<a href="{}">usage rows</a> of this model', usage_link(model__id__exact=obj.pk))

    @admin.display(description="latest self-test")
    def latest_self_test(self, obj: LLMModel) -> str:
        latest = obj.self_tests.first()
        if latest is None:
            return 'never run; use the action "Self-test selected models"'
        history = reverse("admin:models_app_selftestresult_changelist") + f"?model__id__exact={obj.pk}"
        verdict = f"passed, {latest.tokens_per_s or 0:.1f} tokens/s" if latest.passed else f"FAILED: {latest.reason}"
        when = f"{latest.created_at:%Y-%m-%d %H:%M} UTC"  # format_html escapes args to str before formatting
        return format_html('{} at {} (<a href="{}">all results</a>)', verdict, when, history)

    def get_formset_kwargs(self, request, obj, inline, prefix) -> dict:  # noqa: ANN001 - Django's signature
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, SelfTestResultInline) and obj is not None:
            # A daily test fills a year with 365 rows; the page shows the latest few. The
            # formset filters by model afterwards, which a sliced queryset would refuse.
            latest = list(obj.self_tests.values_list("pk", flat=True)[:SELF_TEST_HISTORY])
            kwargs["queryset"] = kwargs["queryset"].filter(pk__in=latest)
        return kwargs

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # A scan looks at MODELS_DIR, not at rows: let its action run with nothing selected
        # (Django refuses an action without a selection, so select any one row for it).
        if request.POST.get("action") == "queue_scan" and not request.POST.getlist(ACTION_CHECKBOX_NAME):
            post = request.POST.copy()
            post.setlist(ACTION_CHECKBOX_NAME, list(self.get_queryset(request).values_list("pk", flat=True)[:1]))
            request.POST = post
        return super().changelist_view(request, extra_context)

    def _enqueue_each(self, request: HttpRequest, what: str, task: Task, args_list: list[tuple]) -> None:
        """Queue one task per argument tuple and name their ids; an error message, never a 500, without a broker."""
        try:
            task_ids = [enqueue(task, *args) for args in args_list]
        except BrokerUnavailable as exc:
            self.message_user(request, f"Could not queue the {what}: {exc}. Start the broker (Redis at "
                              "CELERY_BROKER_URL) or unset CELERY_BROKER_URL and REDIS_URL to use the "
                              "embedded one, then try again.", messages.ERROR)  # fmt: skip
            return
        self.message_user(request, f"Queued {len(task_ids)} {what} (task ids: {', '.join(task_ids)}); "
                          "see Celery results for the outcome.")  # fmt: skip

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

    @admin.action(description="Scan MODELS_DIR now (new, changed and vanished files)")
    def queue_scan(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self._enqueue_each(request, "scan", scan_models_task, [()])

    @admin.action(description="Rescan selected in the background (hash + probe again)")
    def rescan(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self._enqueue_each(
            request, "rescan(s)", rescan_model_task, [(pk,) for pk in queryset.values_list("pk", flat=True)]
        )

    @admin.action(description="Load selected models on the server now")
    def queue_preload(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self._enqueue_each(request, "preload", preload_models_task, [(list(queryset.values_list("pk", flat=True)),)])

    @admin.action(description="Self-test selected models in the background")
    def queue_self_test(self, request: HttpRequest, queryset: QuerySet[LLMModel]) -> None:
        self._enqueue_each(
            request, "self-test(s)", run_self_test_task, [(pk,) for pk in queryset.values_list("pk", flat=True)]
        )


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


@admin.register(SelfTestResult)
class SelfTestResultAdmin(admin.ModelAdmin):
    list_display = ("created_at", "model", "passed", "tokens_per_s", "time_to_first_token_ms", "completion_tokens",
                    "reason")  # fmt: skip
    list_filter = ("passed", "model", "created_at")
    search_fields = ("model__id", "reason", "task_id")
    date_hierarchy = "created_at"
    list_select_related = ("model",)
    readonly_fields = [f.name for f in SelfTestResult._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # measured by the self-test task, never typed in

    def has_change_permission(self, request: HttpRequest, obj: SelfTestResult | None = None) -> bool:
        return False


# -- Scale-out: inference nodes and where models should run -------------------------


class ModelPlacementInline(admin.TabularInline):
    model = ModelPlacement
    extra = 0
    fields = ("model", "created_at")
    readonly_fields = ("created_at",)


@admin.register(InferenceNode)
class InferenceNodeAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "hardware", "slots", "in_flight", "loaded_now", "placed_here",
                    "load_on_demand", "last_heartbeat")  # fmt: skip
    list_filter = ("status", "load_on_demand")
    search_fields = ("name", "hardware", "channel")
    # All but load_on_demand is the node's own report; its heartbeat would overwrite an edit.
    readonly_fields = ("name", "channel", "hardware", "status", "slots", "in_flight", "loaded", "max_loaded_models",
                       "memory_budget_mb", "memory_used_mb", "started_at", "last_heartbeat", "created_at")  # fmt: skip
    inlines = (ModelPlacementInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[InferenceNode]:
        return super().get_queryset(request).prefetch_related("placements")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a node registers itself with its first heartbeat

    @admin.display(description="loaded now")
    def loaded_now(self, node: InferenceNode) -> str:
        return ", ".join(node.loaded_model_ids) or "-"

    @admin.display(description="placed here")
    def placed_here(self, node: InferenceNode) -> str:
        return ", ".join(p.model_id for p in node.placements.all()) or "-"


@admin.register(ModelPlacement)
class ModelPlacementAdmin(admin.ModelAdmin):
    """Change a row's node to move the model: the new node loads it, the old one unloads it."""

    list_display = ("model", "node", "created_at")
    list_editable = ("node",)
    list_filter = ("node", "model")
    search_fields = ("model__id", "node__name")
    list_select_related = ("model", "node")
    readonly_fields = ("created_at",)
