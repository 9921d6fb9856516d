"""Inference nodes and placement: which machines run models, and which models each should hold."""

from django.db import models

from models_app.choices import NodeStatus

__all__ = ["InferenceNode", "ModelPlacement"]


class InferenceNode(models.Model):
    """A machine running `manage.py runworker inference`: what it is, and what it reported last.

    Everything but `load_on_demand` is written by the node's own heartbeat; a node whose
    heartbeat is 3 intervals old is marked down by whoever notices first.
    """

    name = models.CharField(max_length=120, unique=True, help_text="INFERENCE_NODE_NAME (default: the hostname).")
    channel = models.CharField(max_length=200, blank=True, help_text="Its channel-layer address; new at each start.")
    hardware = models.CharField("GPU / CPU", max_length=300, blank=True)
    status = models.CharField(max_length=8, choices=NodeStatus.choices, default=NodeStatus.UP)
    load_on_demand = models.BooleanField(
        default=True, help_text="May load any servable model a request asks for, not only the ones placed here."
    )
    slots = models.PositiveIntegerField(default=0, help_text="Parallel slots of the models loaded now.")
    in_flight = models.PositiveIntegerField(default=0, help_text="Requests queued or running at the last heartbeat.")
    loaded = models.JSONField(default=list, blank=True, help_text="The engine's report of each loaded model.")
    max_loaded_models = models.PositiveIntegerField(default=0)
    memory_budget_mb = models.FloatField(default=0)
    memory_used_mb = models.FloatField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        verbose_name = "inference node"

    def __str__(self) -> str:
        return self.name

    @property
    def loaded_model_ids(self) -> list[str]:
        return [m["id"] for m in self.loaded]


class ModelPlacement(models.Model):
    """Desired state: `node` should keep `model` loaded. The node reconciles toward it."""

    node = models.ForeignKey(InferenceNode, on_delete=models.CASCADE, related_name="placements")
    model = models.ForeignKey("models_app.LLMModel", on_delete=models.CASCADE, related_name="placements")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("model", "node")
        verbose_name = "model placement"
        constraints = [models.UniqueConstraint(fields=["node", "model"], name="placement_node_model_unique")]

    def __str__(self) -> str:
        return f"{self.model_id} on {self.node}"
