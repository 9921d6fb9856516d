"""What the engine needs to know about a model, copied out of the registry once."""

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from models_app.models import LLMModel, ModelConfig

_KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
EMBEDDING_MAX_CTX = 2048  # the embedding context's size, at most (inference/engine/embedder.py)
_COMPUTE_OVERHEAD = 1.10  # compute buffers and allocator slack on top of weights + KV


@dataclass(frozen=True)
class ModelSpec:
    """Plain data: a registry model and its config, safe to hand to another thread or node."""

    model_id: str
    path: str
    file_size: int
    chat_template: str
    bos_token: str
    eos_token: str
    add_bos: bool
    context_length: int
    llama_kwargs: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    system_prompt: str = ""
    kv_elements_per_token: int = 0  # K + V elements per token position, all layers

    @property
    def n_ctx(self) -> int:
        return int(self.llama_kwargs["n_ctx"])

    @property
    def embedding_n_ctx(self) -> int:
        """Tokens one embedding input may have: the model's context, at most EMBEDDING_MAX_CTX."""
        return min(self.n_ctx, EMBEDDING_MAX_CTX)

    def estimated_mb(self) -> float:
        """Memory a load takes: weights + KV cache for n_ctx + the embedding context's, plus compute overhead."""
        kv_bytes = self.kv_elements_per_token * self.n_ctx * _KV_BYTES_PER_ELEMENT[self.llama_kwargs["cache_type_k"]]
        embedding_kv_bytes = self.kv_elements_per_token * self.embedding_n_ctx * _KV_BYTES_PER_ELEMENT["f16"]
        return (self.file_size + kv_bytes + embedding_kv_bytes) * _COMPUTE_OVERHEAD / 2**20

    @classmethod
    def from_model(cls, model: LLMModel) -> "ModelSpec":
        # A row registered without a config (by hand, or before a scan) runs on the defaults.
        config = getattr(model, "config", None) or ModelConfig(model=model)
        meta = model.gguf_metadata or {}
        arch = model.architecture
        heads = meta.get(f"{arch}.attention.head_count") or 1
        kv_heads = meta.get(f"{arch}.attention.head_count_kv") or heads
        head_dim = (model.embedding_length or 0) // heads if heads else 0
        kv_per_token = 2 * (model.block_count or 0) * kv_heads * head_dim
        return cls(
            model_id=model.id,
            path=model.file_path,
            file_size=model.file_size,
            chat_template=model.chat_template,
            bos_token=meta.get("bos_token") or "",
            eos_token=meta.get("eos_token") or "",
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
            context_length=model.context_length or config.n_ctx,
            llama_kwargs={
                "n_ctx": config.n_ctx,
                "n_parallel": config.n_parallel,
                "n_threads": config.n_threads,
                "n_batch": config.n_batch,
                "n_gpu_layers": config.n_gpu_layers,
                "use_mmap": config.use_mmap,
                "use_mlock": config.use_mlock,
                "flash_attn": config.flash_attn,
                "rope_scaling": config.rope_scaling,
                "rope_freq_base": config.rope_freq_base,
                "rope_freq_scale": config.rope_freq_scale,
                "cache_type_k": config.cache_type_k,
                "cache_type_v": config.cache_type_v,
                "extra_buffers": settings.LLAMA_EXTRA_BUFFERS,  # "auto" is decided where the model loads
            },
            defaults={
                "temperature": config.temperature,
                "top_p": config.top_p,
                "top_k": config.top_k,
                "repeat_penalty": config.repeat_penalty,
                "max_tokens": config.max_tokens,
            },
            system_prompt=config.system_prompt,
            kv_elements_per_token=kv_per_token,
        )
