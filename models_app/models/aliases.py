"""Other names a model answers to: Ollama's `name:tag` and the names OpenAI clients send."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower

from models_app.models.registry import LLMModel, parameters_label

__all__ = ["ModelAlias", "default_ollama_name", "derive_ollama_name"]

# Ollama's names: an optional namespace path, a name, an optional tag ("hf.co/user/repo:Q4_K_M").
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$"


class ModelAlias(models.Model):
    """A name clients may send as `model` instead of the model's id (`gpt-4o-mini`, `smollm2:135m-instruct-q4_1`).

    Names are unique across the registry, ignoring case, and never equal to a model's id,
    so every name resolves to exactly one model. One alias per model may be its Ollama
    name: the one `/api/tags` and `/api/ps` show.
    """

    name = models.CharField(
        max_length=200,
        unique=True,
        validators=[RegexValidator(ALIAS_PATTERN, "Letters, digits, '.', '_', '-', '/' and one ':tag'.")],
    )
    model = models.ForeignKey("models_app.LLMModel", on_delete=models.CASCADE, related_name="aliases")
    ollama = models.BooleanField(
        "Ollama name", default=False, help_text="The name /api/tags and /api/ps show for this model (one per model)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-ollama", "name")
        verbose_name = "alias"
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint(Lower("name"), name="alias_name_unique_ignoring_case"),
            models.UniqueConstraint(
                fields=["model"], condition=models.Q(ollama=True), name="one_ollama_name_per_model"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if LLMModel.objects.filter(pk__iexact=self.name).exists():
            raise ValidationError({"name": f"'{self.name}' is a model's id; an alias must be another name."})
        clash = ModelAlias.objects.filter(name__iexact=self.name).exclude(pk=self.pk).select_related("model").first()
        if clash is not None:
            raise ValidationError({"name": f"'{self.name}' already names the model '{clash.model_id}'."})


# Words that say what a fine-tune is for, as Ollama's library tags them (llama3.2:3b-instruct-q4_K_M).
_FINETUNE_WORDS = ("instruct", "chat", "it", "base", "text", "code", "coder", "vision", "thinking", "reasoning")


def derive_ollama_name(
    *, model_id: str, metadata: dict, quantization: str, parameter_count: int | None, file_name: str = ""
) -> str:
    """An Ollama-style `name:tag` from GGUF metadata: SmolLM2 135M Instruct Q4_1 -> smollm2:135m-instruct-q4_1.

    The fine-tune word comes from `general.finetune` or the file name when it is one of the
    usual ones; a training-run label (`8k-lc100k-mix1-ep2`) says nothing to a person and is left out.
    """

    def part(value: object) -> str:
        return re.sub(r"[^a-z0-9._]+", "-", str(value or "").lower()).strip("-_.")

    base = part(metadata.get("general.basename")) or part(metadata.get("general.name")) or part(model_id) or "model"
    words = re.split(r"[^a-z0-9]+", f"{metadata.get('general.finetune') or ''} {file_name}".lower())
    finetune = next((w for w in _FINETUNE_WORDS if w in words), "")
    size = metadata.get("general.size_label") or parameters_label(parameter_count)
    tag = "-".join(p for p in (part(size), finetune, part(quantization)) if p) or "latest"
    return f"{base[:120]}:{tag[:60]}"


def default_ollama_name(model: Any, is_taken: Callable[[str], bool]) -> str:
    """`model`'s derived Ollama name, with a numeric suffix (`-2`, `-3`) while `is_taken` says it is in use.

    `model` is an LLMModel, or the migration's historical one (the same fields).
    """
    base = derive_ollama_name(
        model_id=model.pk,
        metadata=model.gguf_metadata or {},
        quantization=model.quantization,
        parameter_count=model.parameter_count,
        file_name=Path(model.source_path or model.file_path).name,
    )
    name, n = base, 2
    while is_taken(name):
        name, n = f"{base}-{n}", n + 1
    return name
