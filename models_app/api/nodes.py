"""Inference nodes (read-only: they report themselves) and placements (where models should run)."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.permissions import ModelsScope, caller_model_ids
from models_app.api.schema import ErrorSerializer
from models_app.models import InferenceNode, LLMModel, ModelPlacement
from models_app.placement import move_model, place_model
from models_app.selectors import visible_models


class InferenceNodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = InferenceNode
        fields = ("name", "status", "hardware", "load_on_demand", "slots", "in_flight", "loaded", "max_loaded_models",
                  "memory_budget_mb", "memory_used_mb", "started_at", "last_heartbeat")  # fmt: skip
        read_only_fields = fields


class PlacementSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", queryset=InferenceNode.objects.all())
    model = serializers.PrimaryKeyRelatedField(queryset=LLMModel.objects.all())

    class Meta:
        model = ModelPlacement
        fields = ("id", "model", "node", "created_at")
        read_only_fields = ("id", "created_at")


class MoveSerializer(serializers.Serializer):
    model = serializers.PrimaryKeyRelatedField(queryset=LLMModel.objects.all())
    from_node = serializers.SlugRelatedField(slug_field="name", queryset=InferenceNode.objects.all())
    to_node = serializers.SlugRelatedField(slug_field="name", queryset=InferenceNode.objects.all())

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if not ModelPlacement.objects.filter(model=data["model"], node=data["from_node"]).exists():
            raise serializers.ValidationError({"from_node": f"{data['model'].pk} is not placed on this node."})
        return data


class InferenceNodeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Inference nodes as their heartbeats report them (`manage.py runworker inference`)."""

    queryset = InferenceNode.objects.order_by("name")
    serializer_class = InferenceNodeSerializer
    permission_classes = (ModelsScope,)
    lookup_field = "name"
    filterset_fields = ("status",)


class PlacementViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    """Which models each node should keep loaded; nodes reconcile toward this within a heartbeat or two."""

    serializer_class = PlacementSerializer
    permission_classes = (ModelsScope,)
    filterset_fields = ("node__name", "model")

    def get_queryset(self) -> QuerySet[ModelPlacement]:
        models = visible_models(only=caller_model_ids(self.request))
        return ModelPlacement.objects.filter(model__in=models).select_related("node").order_by("model", "node")

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        data = serializer.validated_data
        serializer.instance = place_model(model=data["model"], node=data["node"])

    @extend_schema(request=MoveSerializer, responses={200: PlacementSerializer, 400: ErrorSerializer})
    @action(detail=False, methods=["post"])
    def move(self, request: Request) -> Response:
        """Move a model from one node to another: the new node loads it, then the old one unloads it."""
        params = MoveSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        placement = move_model(
            model=params.validated_data["model"],
            from_node=params.validated_data["from_node"],
            to_node=params.validated_data["to_node"],
        )
        return Response(PlacementSerializer(placement).data, status=status.HTTP_200_OK)
