"""Named choices shared by the registry's models, admin and services."""

from django.db import models


class ModelStatus(models.TextChoices):
    AVAILABLE = "available", "Available"
    MISSING = "missing", "Missing (file gone)"
    INVALID = "invalid", "Invalid"


class OptimizeFor(models.TextChoices):
    BALANCED = "balanced", "Balanced"
    SPEED = "speed", "Speed"
    MEMORY = "memory", "Memory"
    LOADING = "loading", "Loading"


class RopeScaling(models.TextChoices):
    MODEL = "model", "As the model says"
    NONE = "none", "None"
    LINEAR = "linear", "Linear"
    YARN = "yarn", "YaRN"


class KVCacheType(models.TextChoices):
    F16 = "f16", "f16"
    Q8_0 = "q8_0", "q8_0"
    Q4_0 = "q4_0", "q4_0"


class Scope(models.TextChoices):
    INFERENCE = "inference", "inference"
    MODELS_READ = "models:read", "models:read"
    MODELS_MANAGE = "models:manage", "models:manage"
    ADMIN = "admin", "admin"


class UsageStatus(models.TextChoices):
    STARTED = "started", "Started"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    ERROR = "error", "Error"
    TIMEOUT = "timeout", "Timeout"
    INTERRUPTED = "interrupted", "Interrupted"


class NodeStatus(models.TextChoices):
    UP = "up", "Up"
    DRAINING = "draining", "Draining (finishing its jobs, taking no new ones)"
    DOWN = "down", "Down (stopped, or missed 3 heartbeats)"


class Lane(models.TextChoices):
    """A request's priority: interactive requests take free slots before batch ones."""

    INTERACTIVE = "interactive", "Interactive"
    BATCH = "batch", "Batch"
