"""The management API's viewsets: parse, authorize, call a service (or the engine), format."""

from typing import Any

from asgiref.sync import async_to_sync
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from inference.engine import get_engine
from inference.engine.spec import ModelSpec
from models_app.api.errors import Conflict, Unavailable
from models_app.api.filtersets import APITokenFilterSet, LLMModelFilterSet, UsageFilterSet
from models_app.api.pagination import UsageCursorPagination
from models_app.api.permissions import ModelsScope, caller_grant, caller_model_ids, is_admin
from models_app.api.renderers import CSVRenderer
from models_app.api.schema import ErrorSerializer
from models_app.api.serializers import (
    APITokenSerializer,
    CreatedTokenSerializer,
    LLMModelDetailSerializer,
    LLMModelSerializer,
    LoadOptionsSerializer,
    LoadResultSerializer,
    ModelConfigChangeSerializer,
    ModelConfigSerializer,
    QueuedTaskSerializer,
    SelfTestResultSerializer,
    TokenCreateSerializer,
    TokenWriteSerializer,
    UnloadResultSerializer,
    UsageRecordSerializer,
    UsageSummaryQuerySerializer,
    UsageSummarySerializer,
)
from models_app.models import APIToken, LLMModel, ModelConfig, SelfTestResult, UsageRecord
from models_app.models.registry import PRESETS
from models_app.selectors import (
    USAGE_SUMMARY_COLUMNS,
    resolve_model,
    summarize_usage,
    visible_configs,
    visible_models,
    visible_tokens,
    visible_usage,
)
from models_app.services import (
    issue_token,
    revoke_token,
    update_config,
    update_model,
    update_token,
)
from models_app.tasks import BrokerUnavailable, enqueue
from models_app.tasks import rescan_model as rescan_model_task
from models_app.tasks import run_self_test as run_self_test_task
from models_app.usage_rollup import roll_up_usage, usage_dashboard

# Config fields the engine reads only when it loads a model: the llama.cpp arguments
# (the names ModelSpec passes to llama.cpp) and the system prompt the runner keeps.
# Sampling defaults are read per request, so changing them needs no reload.
_LOAD_TIME_EXTRA = frozenset({"system_prompt"})


def _loaded_ids() -> frozenset[str]:
    return frozenset(m["id"] for m in get_engine().status()["loaded"])


def _load(model: LLMModel, *, keep_alive_s: float | None) -> dict[str, Any]:
    """Load a servable model and block until llama.cpp holds it; Conflict if it may not be served."""
    try:
        servable = resolve_model(model.pk)
    except LookupError as exc:
        raise Conflict(str(exc), code="model_not_servable") from exc
    # Under ASGI each request's sync code runs on its own thread (Django's
    # ThreadSensitiveContext), so waiting here for a long load holds up no one else.
    return async_to_sync(get_engine().load)(ModelSpec.from_model(servable), keep_alive_s=keep_alive_s)


class LLMModelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    """Registered models: list and read them, rename, enable or preload them; load, unload, rescan."""

    queryset = LLMModel.objects.all()
    serializer_class = LLMModelSerializer
    filterset_class = LLMModelFilterSet
    search_fields = ("id", "name")
    permission_classes = (ModelsScope,)
    http_method_names = ("get", "patch", "post", "head", "options")

    def get_queryset(self) -> QuerySet[LLMModel]:
        return visible_models(only=caller_model_ids(self.request))

    def get_serializer_class(self) -> type[BaseSerializer]:
        return LLMModelSerializer if self.action == "list" else LLMModelDetailSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "loaded_ids": _loaded_ids()}

    def perform_update(self, serializer: BaseSerializer) -> None:
        update_model(model=serializer.instance, changes=serializer.validated_data)

    @extend_schema(
        request=LoadOptionsSerializer,
        responses={200: LoadResultSerializer, 409: ErrorSerializer, 503: ErrorSerializer},
    )
    @action(detail=True, methods=["post"])
    def load(self, request: Request, pk: str | None = None) -> Response:
        """Load the model now; a loaded model only gets its keep-alive refreshed. 503 when it cannot fit."""
        model = self.get_object()
        params = LoadOptionsSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        result = _load(model, keep_alive_s=params.validated_data["keep_alive"])
        return Response({"id": model.pk, "loaded": True, "load_ms": result["load_ms"]})

    @extend_schema(request=None, responses={200: UnloadResultSerializer, 409: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def unload(self, request: Request, pk: str | None = None) -> Response:
        """Unload the model now; 409 while it serves requests (the pool never waits them out)."""
        model = self.get_object()
        unloaded = async_to_sync(get_engine().unload)(model.pk)
        return Response({"id": model.pk, "unloaded": unloaded})

    @extend_schema(request=None, responses={202: QueuedTaskSerializer, 503: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def rescan(self, request: Request, pk: str | None = None) -> Response:
        """Queue a re-hash and re-probe of the file (the scan task); returns the task id."""
        return _queued(self.get_object(), rescan_model_task)

    @extend_schema(request=None, responses={202: QueuedTaskSerializer, 503: ErrorSerializer})
    @action(detail=True, methods=["post"])
    def selftest(self, request: Request, pk: str | None = None) -> Response:
        """Queue a self-test of the model through the live server; its result appears under /selftests/."""
        return _queued(self.get_object(), run_self_test_task)


def _queued(model: LLMModel, task: Any) -> Response:
    try:
        task_id = enqueue(task, model.pk)
    except BrokerUnavailable as exc:
        raise Unavailable(str(exc), code="broker_unavailable") from exc
    return Response({"id": model.pk, "task_id": task_id}, status=status.HTTP_202_ACCEPTED)


class SelfTestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Self-test results, latest first; `?model=<id>` for one model's history."""

    serializer_class = SelfTestResultSerializer
    permission_classes = (ModelsScope,)
    filterset_fields = ("model", "passed")

    def get_queryset(self) -> QuerySet[SelfTestResult]:
        models = visible_models(only=caller_model_ids(self.request))
        return SelfTestResult.objects.filter(model__in=models).order_by("-created_at", "-pk")


class ModelConfigViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.UpdateModelMixin, viewsets.GenericViewSet
):
    """Each model's llama.cpp tunables, sampling defaults and system prompt, by model id."""

    queryset = ModelConfig.objects.select_related("model")
    serializer_class = ModelConfigSerializer
    search_fields = ("model__id", "model__name")
    permission_classes = (ModelsScope,)
    lookup_url_kwarg = "model"
    http_method_names = ("get", "patch", "head", "options")

    def get_queryset(self) -> QuerySet[ModelConfig]:
        return visible_configs(only=caller_model_ids(self.request))

    @extend_schema(responses=ModelConfigChangeSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change some fields; `reload_required` says whether the loaded model runs on the old values."""
        config = self.get_object()
        serializer = self.get_serializer(config, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changed = update_config(config=config, changes=serializer.validated_data)
        load_time = set(ModelSpec.from_model(config.model).llama_kwargs) | _LOAD_TIME_EXTRA
        config.reload_required = bool(changed & load_time) and config.model_id in _loaded_ids()
        return Response(ModelConfigChangeSerializer(config).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=False, methods=["get"])
    def presets(self, request: Request) -> Response:
        """What each `optimize_for` preset writes into a config."""
        return Response(PRESETS)


class APITokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """API tokens: yours (all of them for an admin). The secret appears once, in the create response."""

    queryset = APIToken.objects.all()
    serializer_class = APITokenSerializer
    filterset_class = APITokenFilterSet
    search_fields = ("name", "prefix")
    permission_classes = (ModelsScope,)
    http_method_names = ("get", "post", "patch", "head", "options")

    def get_queryset(self) -> QuerySet[APIToken]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no caller
            return APIToken.objects.none()
        return visible_tokens(owner=self.request.user, all_owners=is_admin(self.request))

    @extend_schema(request=TokenCreateSerializer, responses={201: CreatedTokenSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Issue a token with at most the caller's scopes, models, expiry, limits and lane (unset: the caller's)."""
        params = TokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        params.is_valid(raise_exception=True)
        fields = dict(params.validated_data)
        owner = fields.pop("owner", None) or request.user
        grant = caller_grant(request)
        fields = grant.inherit(fields)  # unset expiry, limits and lane: the caller's own
        grant.check(fields)
        minter = request.auth if isinstance(request.auth, APIToken) else None
        # A limited token's mintees spend from its budget: minting must not multiply a limit.
        budget_of = int(minter.budget_key) if minter is not None and (minter.has_limits or minter.budget_of) else None
        token, secret = issue_token(owner=owner, budget_of=budget_of, **fields)
        token.secret = secret  # on this response only; never stored, never logged
        return Response(CreatedTokenSerializer(token).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=TokenWriteSerializer, responses=APITokenSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change name, scopes, models, limits, lane or expiry; the same no-escalation rule as create.

        A caller may not change (or revoke) a token holding a scope it lacks.
        """
        token = self.get_object()
        params = TokenWriteSerializer(data=request.data, partial=True)
        params.is_valid(raise_exception=True)
        changes = params.validated_data
        grant = caller_grant(request)
        grant.check_may_change(token)
        grant.check(changes)  # so a token can neither clear nor extend its own expiry, nor loosen its limits
        update_token(token=token, changes=changes)
        return Response(APITokenSerializer(token).data)

    @extend_schema(request=None, responses=APITokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke for good (idempotent); /v1 refuses it within AUTH_CACHE_TTL_S."""
        token = self.get_object()
        caller_grant(request).check_may_change(token)
        revoke_token(token=token)
        return Response(APITokenSerializer(token).data)


class UsageViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Usage rows, newest first under a cursor, and their totals per token, model or day."""

    queryset = UsageRecord.objects.all()
    serializer_class = UsageRecordSerializer
    filterset_class = UsageFilterSet
    search_fields = ("request_id",)  # the X-Request-Id a client got back
    pagination_class = UsageCursorPagination
    permission_classes = (ModelsScope,)
    csv_columns: tuple[str, ...] = ()

    def get_queryset(self) -> QuerySet[UsageRecord]:
        if getattr(self, "swagger_fake_view", False):
            return UsageRecord.objects.none()
        return visible_usage(owner=self.request.user, all_owners=is_admin(self.request))

    @extend_schema(
        parameters=[UsageSummaryQuerySerializer],
        filters=True,  # the list's filters apply here too
        responses={(200, "application/json"): UsageSummarySerializer, (200, "text/csv"): OpenApiTypes.STR},
    )
    @action(
        detail=False,
        methods=["get"],
        renderer_classes=[JSONRenderer, BrowsableAPIRenderer, CSVRenderer],
        csv_columns=USAGE_SUMMARY_COLUMNS,
    )
    def summary(self, request: Request) -> Response:
        """Totals per `group_by` (token, model or day) over the filtered rows; `?format=csv` for a file."""
        query = UsageSummaryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if window := query.validated_data.get("window"):
            return Response(self._window_summary(request, window))
        group_by = query.validated_data["group_by"]
        rows = summarize_usage(records=self.filter_queryset(self.get_queryset()), group_by=group_by)
        response = Response({"group_by": group_by, "results": rows})
        if request.accepted_renderer.format == "csv":
            response["Content-Disposition"] = f'attachment; filename="usage-by-{group_by}.csv"'
        return response

    def _window_summary(self, request: Request, window: str) -> dict[str, Any]:
        others = set(request.query_params) - {"window", "format"}
        if others:
            raise ValidationError({sorted(others)[0]: "window reads the hourly rollups and takes no other filter; "
                                   "use group_by with filters for the rows themselves."})  # fmt: skip
        if request.accepted_renderer.format == "csv":
            raise ValidationError({"format": "window answers in JSON only; use group_by for CSV."})
        roll_up_usage(max_batches=4)  # a backlog is Celery beat's, not a request's
        tokens = None if is_admin(request) else list(request.user.api_tokens.values_list("pk", flat=True))
        return usage_dashboard(window=window, token_ids=tokens)
