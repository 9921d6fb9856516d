"""Reading GGUF files as untrusted input: metadata in pure Python, hashes streamed."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # gguf (and numpy) load when a file is read, not with the admin
    import gguf


HASH_CHUNK = 4 * 1024 * 1024
# Keys copied into their own LLMModel fields, or too big to keep (token tables).
_SKIPPED_PREFIXES = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "GGUF.")


class GGUFError(Exception):
    """The file is not a GGUF model we can trust to load; the message says why."""


def file_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file read in chunks; `progress(n)` is told each chunk's size."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def _field_value(field: "gguf.ReaderField") -> Any:
    value = field.contents()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def read_metadata(path: Path) -> dict[str, Any]:
    """Read a GGUF file's header and tensor table; raise GGUFError if it is not sound.

    Returns the fields LLMModel keeps (architecture, parameter_count, quantization,
    context_length, embedding_length, block_count, chat_template, tokenizer_model,
    bos_token, eos_token) plus `extra`, the other small scalar keys.
    """
    size = path.stat().st_size
    if size < 24:
        raise GGUFError(f"file is {size} bytes, too short to be GGUF")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file (bad magic bytes)")
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError... on garbage
        raise GGUFError(f"unreadable GGUF header: {type(exc).__name__}: {exc}") from exc
    # A truncated download parses fine up to the tensor table; its data falls off the end.
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size:
            raise GGUFError(f"truncated: tensor {tensor.name!r} ends at byte {end} but the file has {size}")
    if not reader.tensors:
        raise GGUFError("no tensors: this GGUF holds no model weights")

    fields = {name: field for name, field in reader.fields.items()}

    def get(key: str) -> Any:
        field = fields.get(key)
        if field is None:
            return None
        try:
            return _field_value(field)
        except Exception:  # a malformed field is treated as absent
            return None

    arch = get("general.architecture") or ""
    file_type = get("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else ""
    except ValueError:
        quantization = f"type {file_type}"
    tokens = fields.get("tokenizer.ggml.tokens")

    def token_text(key: str) -> str:
        token_id = get(key)
        if tokens is None or token_id is None or not (0 <= token_id < len(tokens.data)):
            return ""
        return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8", errors="replace")

    extra = {}
    for name, field in fields.items():
        if name.startswith(_SKIPPED_PREFIXES) or name == "tokenizer.chat_template":
            continue
        if len(field.types) == 1 or (len(field.data) <= 16 and field.types[0] == gguf.GGUFValueType.ARRAY):
            try:
                extra[name] = _field_value(field)
            except Exception:
                continue

    return {
        "architecture": arch,
        "parameter_count": int(sum(int(t.n_elements) for t in reader.tensors)),
        "quantization": quantization,
        "context_length": get(f"{arch}.context_length"),
        "embedding_length": get(f"{arch}.embedding_length"),
        "block_count": get(f"{arch}.block_count"),
        "chat_template": get("tokenizer.chat_template") or "",
        "tokenizer_model": get("tokenizer.ggml.model") or "",
        "bos_token": token_text("tokenizer.ggml.bos_token_id"),
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "extra": extra,
    }
