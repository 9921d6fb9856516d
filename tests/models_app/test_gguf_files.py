import hashlib

import pytest

from models_app.gguf_files import GGUFError, file_sha256, read_metadata


def test_bundled_model_metadata_is_read(bundled_metadata):
    assert bundled_metadata["architecture"] == "llama"
    assert 130e6 < bundled_metadata["parameter_count"] < 140e6
    assert bundled_metadata["quantization"] == "Q4_1"
    assert bundled_metadata["context_length"] == 8192
    assert bundled_metadata["embedding_length"] == 576
    assert bundled_metadata["block_count"] == 30
    assert "<|im_start|>" in bundled_metadata["chat_template"]
    assert bundled_metadata["tokenizer_model"] == "gpt2"
    assert bundled_metadata["eos_token"] == "<|im_end|>"


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"this is not a model at all" * 100)
    with pytest.raises(GGUFError, match=r"bad magic"):
        read_metadata(path)


def test_truncated_file_is_refused(bundled_gguf, tmp_path):
    path = tmp_path / "truncated.gguf"
    with bundled_gguf.open("rb") as src:
        path.write_bytes(src.read(5_000_000))
    with pytest.raises(GGUFError, match=r"truncated|unreadable GGUF header"):
        read_metadata(path)


def test_header_cut_short_is_refused(bundled_gguf, tmp_path):
    path = tmp_path / "short.gguf"
    with bundled_gguf.open("rb") as src:
        path.write_bytes(src.read(2000))
    with pytest.raises(GGUFError):
        read_metadata(path)


def test_sha256_is_streamed_with_progress(tmp_path):
    path = tmp_path / "blob.gguf"
    data = b"x" * (9 * 1024 * 1024 + 7)
    path.write_bytes(data)
    seen = []
    assert file_sha256(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 3
