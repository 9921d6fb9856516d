import os
from pathlib import Path

import gguf
import numpy
import pytest

from models_app.choices import ModelStatus
from models_app.models import LLMModel, UsageRecord
from models_app.scanning import scan_models

pytestmark = pytest.mark.django_db


def test_new_file_is_registered_available_with_metadata(models_dir, bundled_gguf):
    (models_dir / "smol.gguf").symlink_to(bundled_gguf)
    report = scan_models(models_dir)
    model = LLMModel.objects.get()
    assert report.added == [model.id] == ["smol"]
    assert model.status == ModelStatus.AVAILABLE, model.status_reason
    assert (model.architecture, model.quantization, model.context_length) == ("llama", "Q4_1", 8192)
    assert len(model.sha256) == 64
    assert model.file_path == str(bundled_gguf.resolve())
    assert model.config.n_ctx == 4096


def test_second_scan_changes_nothing(models_dir, gguf_copy):
    (models_dir / "a.gguf").symlink_to(gguf_copy)
    scan_models(models_dir)
    before = LLMModel.objects.get()
    report = scan_models(models_dir)
    after = LLMModel.objects.get()
    assert report.unchanged == ["a"] and not report.added and not report.updated
    assert after.updated_at == before.updated_at


def test_changed_file_is_rehashed(models_dir, gguf_copy):
    (models_dir / "a.gguf").symlink_to(gguf_copy)
    scan_models(models_dir)
    old_sha = LLMModel.objects.get().sha256
    with gguf_copy.open("ab") as f:
        f.write(b"\0" * 64)
    report = scan_models(models_dir)
    model = LLMModel.objects.get()
    assert report.updated == ["a"]
    assert model.sha256 != old_sha and model.file_size == gguf_copy.stat().st_size


def test_vanished_file_is_missing_and_its_row_and_usage_stay(models_dir, gguf_copy):
    (models_dir / "a.gguf").symlink_to(gguf_copy)
    scan_models(models_dir)
    UsageRecord.objects.create(request_id="r1", model_id="a", endpoint="chat")
    gguf_copy.unlink()
    report = scan_models(models_dir)
    assert report.missing == ["a"]
    assert LLMModel.objects.get().status == ModelStatus.MISSING
    assert UsageRecord.objects.filter(model_id="a").count() == 1


def test_returning_file_becomes_available_again(models_dir, gguf_copy, tmp_path):
    link = models_dir / "a.gguf"
    link.symlink_to(gguf_copy)
    scan_models(models_dir)
    link.unlink()
    scan_models(models_dir)
    link.symlink_to(gguf_copy)
    scan_models(models_dir)
    assert LLMModel.objects.get().status == ModelStatus.AVAILABLE


def test_garbage_file_is_invalid_with_reason(models_dir):
    (models_dir / "junk.gguf").write_bytes(os.urandom(4096))
    report = scan_models(models_dir)
    model = LLMModel.objects.get()
    assert report.invalid == ["junk"]
    assert model.status == ModelStatus.INVALID and "magic" in model.status_reason


def test_truncated_file_is_invalid_and_the_scan_goes_on(models_dir, bundled_gguf):
    with bundled_gguf.open("rb") as src:
        (models_dir / "cut.gguf").write_bytes(src.read(3_000_000))
    (models_dir / "good.gguf").symlink_to(bundled_gguf)
    scan_models(models_dir)
    statuses = dict(LLMModel.objects.values_list("id", "status"))
    assert statuses == {"cut": ModelStatus.INVALID, "good": ModelStatus.AVAILABLE}


def test_directory_named_gguf_is_reported_not_registered(models_dir):
    (models_dir / "x.gguf").mkdir()
    report = scan_models(models_dir)
    assert not LLMModel.objects.exists()
    assert any("is a directory" in m for m in report.messages)


def test_dangling_symlink_is_reported(models_dir, tmp_path):
    (models_dir / "gone.gguf").symlink_to(tmp_path / "nowhere.gguf")
    report = scan_models(models_dir)
    assert not LLMModel.objects.exists()
    assert any("dangling symlink" in m for m in report.messages)


def test_symlink_loop_does_not_hang_the_scan(models_dir, bundled_gguf):
    (models_dir / "sub").mkdir()
    (models_dir / "sub" / "back").symlink_to(models_dir)
    (models_dir / "self.gguf").symlink_to(models_dir / "self.gguf")
    (models_dir / "sub" / "m.gguf").symlink_to(bundled_gguf)
    report = scan_models(models_dir)
    assert list(LLMModel.objects.values_list("id", flat=True)) == ["m"]
    assert any("symlink loop" in m for m in report.messages)
    assert any("already scanned" in m for m in report.messages)


def test_file_reached_twice_is_registered_once(models_dir, bundled_gguf):
    (models_dir / "one.gguf").symlink_to(bundled_gguf)
    (models_dir / "two.gguf").symlink_to(bundled_gguf)
    report = scan_models(models_dir)
    assert LLMModel.objects.count() == 1
    assert any("registered once" in m for m in report.messages)


def test_unreadable_file_is_invalid_with_reason(models_dir, bundled_gguf, monkeypatch):
    path = models_dir / "locked.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 100)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads mode-000 files; make the open fail as it would for anyone else
        real_open = Path.open

        def deny(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", deny)
    scan_models(models_dir)
    model = LLMModel.objects.get()
    assert model.status == ModelStatus.INVALID
    assert "Permission denied" in model.status_reason


def test_probe_timeout_marks_invalid(models_dir, bundled_gguf, settings):
    settings.MODEL_PROBE_TIMEOUT_S = 0.05
    (models_dir / "slow.gguf").symlink_to(bundled_gguf)
    scan_models(models_dir)
    model = LLMModel.objects.get()
    assert model.status == ModelStatus.INVALID and "timed out" in model.status_reason


def test_broken_chat_template_marks_invalid(models_dir, tmp_path):
    path = models_dir / "badtemplate.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }")  # unclosed tag
    writer.add_tensor("w", numpy.zeros((4, 4), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    scan_models(models_dir)
    model = LLMModel.objects.get()
    assert model.status == ModelStatus.INVALID and "chat template" in model.status_reason
