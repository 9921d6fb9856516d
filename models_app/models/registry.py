"""The model registry: which GGUF files exist, what they are, and how to run each."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from models_app.choices import KVCacheType, ModelStatus, OptimizeFor, RopeScaling

__all__ = ["PRESETS", "LLMModel", "ModelConfig", "parameters_label"]


class LLMModel(models.Model):
    """A GGUF file on disk that clients can ask for by its slug id."""

    id = models.SlugField(primary_key=True, max_length=120, help_text="The name clients send as `model`.")
    name = models.CharField("display name", max_length=200)
    file_path = models.CharField(max_length=1024, unique=True, help_text="Resolved path of the GGUF file.")
    source_path = models.CharField(max_length=1024, blank=True, help_text="Where the scan found it (may be a link).")
    file_size = models.BigIntegerField(default=0)
    file_mtime = models.DateTimeField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)

    architecture = models.CharField(max_length=64, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    quantization = models.CharField(max_length=32, blank=True, help_text="GGUF general.file_type")
    context_length = models.PositiveIntegerField(null=True, blank=True, help_text="Trained context length")
    embedding_length = models.PositiveIntegerField(null=True, blank=True)
    block_count = models.PositiveIntegerField("layers", null=True, blank=True)
    chat_template = models.TextField(blank=True)
    tokenizer_model = models.CharField(max_length=64, blank=True)
    gguf_metadata = models.JSONField(default=dict, blank=True, help_text="Other scalar GGUF keys")

    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.AVAILABLE)
    status_reason = models.TextField(blank=True)
    load_failures = models.PositiveIntegerField(
        default=0, editable=False, help_text="Failed loads in a row; the server retries after a back-off."
    )
    last_load_error = models.TextField(blank=True, editable=False)
    load_retry_at = models.DateTimeField(null=True, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    preload = models.BooleanField(default=False, help_text="Load when the server starts.")

    scanned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)
        verbose_name = "model"

    def __str__(self) -> str:
        return self.id

    @property
    def is_servable(self) -> bool:
        return self.enabled and self.status == ModelStatus.AVAILABLE

    @property
    def parameters_label(self) -> str:
        """Parameter count the way people say it: 135M, 7.2B."""
        return parameters_label(self.parameter_count)


def parameters_label(n: int | None) -> str:
    """A parameter count the way people say it: 135M, 7.2B ("" if unknown)."""
    if not n:
        return ""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    return f"{n / 1e6:.0f}M"


# What each `optimize_for` preset sets. Choosing a preset writes these values into the
# config's fields, so what the admin shows is exactly what llama.cpp gets.
PRESETS: dict[str, dict[str, object]] = {
    # llama.cpp's own defaults: mmap'd weights, f16 KV cache, 512-token batches.
    OptimizeFor.BALANCED: {
        "n_batch": 512,
        "use_mmap": True,
        "use_mlock": False,
        "flash_attn": False,
        "cache_type_k": KVCacheType.F16,
        "cache_type_v": KVCacheType.F16,
    },
    # Bigger prompt batches and flash attention for faster prefill; mlock keeps the
    # weights in RAM so a cold page never stalls a decode step.
    OptimizeFor.SPEED: {
        "n_batch": 1024,
        "use_mmap": True,
        "use_mlock": True,
        "flash_attn": True,
        "cache_type_k": KVCacheType.F16,
        "cache_type_v": KVCacheType.F16,
    },
    # q8_0 KV cache halves its memory (a quantized V cache needs flash attention);
    # smaller batches shrink the compute buffers; mmap shares pages with the OS cache.
    OptimizeFor.MEMORY: {
        "n_batch": 256,
        "use_mmap": True,
        "use_mlock": False,
        "flash_attn": True,
        "cache_type_k": KVCacheType.Q8_0,
        "cache_type_v": KVCacheType.Q8_0,
    },
    # mmap without mlock: the load returns as soon as the file is mapped and pages
    # come in on first use, the fastest time to a loaded model.
    OptimizeFor.LOADING: {
        "n_batch": 512,
        "use_mmap": True,
        "use_mlock": False,
        "flash_attn": False,
        "cache_type_k": KVCacheType.F16,
        "cache_type_v": KVCacheType.F16,
    },
}


class ModelConfig(models.Model):
    """How to run one model: llama.cpp tunables, sampling defaults and a system prompt."""

    model = models.OneToOneField(LLMModel, on_delete=models.CASCADE, primary_key=True, related_name="config")
    optimize_for = models.CharField(
        max_length=16,
        choices=OptimizeFor.choices,
        default=OptimizeFor.BALANCED,
        help_text="Choosing a preset writes its values into the tunables below when saved.",
    )

    n_ctx = models.PositiveIntegerField(
        default=4096, validators=[MinValueValidator(256)], help_text="Context size in tokens (all slots together)."
    )
    n_parallel = models.PositiveIntegerField(
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Requests decoded together (slots); each gets n_ctx / n_parallel tokens of context.",
    )
    n_threads = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Empty: llama.cpp picks."
    )
    n_batch = models.PositiveIntegerField(default=512, validators=[MinValueValidator(1)])
    n_gpu_layers = models.IntegerField(
        default=-1, validators=[MinValueValidator(-1)], help_text="-1: all layers (ignored by CPU-only builds)."
    )
    use_mmap = models.BooleanField(default=True)
    use_mlock = models.BooleanField(default=False)
    flash_attn = models.BooleanField(default=False)
    rope_scaling = models.CharField(max_length=16, choices=RopeScaling.choices, default=RopeScaling.MODEL)
    rope_freq_base = models.FloatField(default=0.0, help_text="0: as the model says.")
    rope_freq_scale = models.FloatField(default=0.0, help_text="0: as the model says.")
    cache_type_k = models.CharField(max_length=8, choices=KVCacheType.choices, default=KVCacheType.F16)
    cache_type_v = models.CharField(max_length=8, choices=KVCacheType.choices, default=KVCacheType.F16)

    temperature = models.FloatField(default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    top_p = models.FloatField(default=0.9, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    top_k = models.PositiveIntegerField(default=40)
    repeat_penalty = models.FloatField(default=1.1, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    max_tokens = models.PositiveIntegerField(default=512, validators=[MinValueValidator(1)])
    system_prompt = models.TextField(blank=True, help_text="Sent as the system message when a client sends none.")

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "model config"

    def __str__(self) -> str:
        return f"config of {self.model_id}"

    def apply_preset(self, name: str | None = None) -> None:
        """Write the tunables of preset `name` (default: the current `optimize_for`) into this config."""
        name = name or self.optimize_for
        self.optimize_for = name
        for field, value in PRESETS[name].items():
            setattr(self, field, value)
