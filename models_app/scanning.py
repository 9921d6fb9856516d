"""Walk a models directory and bring the registry in line with the GGUF files in it."""

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from models_app.choices import ModelStatus
from models_app.gguf_files import file_sha256
from models_app.models import LLMModel, ModelConfig
from models_app.probe import probe_model_file
from models_app.services import assign_ollama_name, name_is_taken

# Progress callback: (file name, total bytes) -> a callable told each chunk's size.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class ScanReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.missing)} missing, {len(self.invalid)} invalid"
        )


@dataclass
class _Found:
    path: Path  # as found under the models directory (may be a symlink)
    real: Path  # what it resolves to: the registry's identity for the file
    size: int
    mtime: datetime


def _walk(root: Path, report: ScanReport) -> Iterator[_Found]:
    """Yield each distinct .gguf file under `root`, following symlinks, never looping."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: dict[Path, Path] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            st = directory.stat()
            if (st.st_dev, st.st_ino) in seen_dirs:
                report.messages.append(f"{directory}: already scanned (symlink loop or repeat), skipped")
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            report.messages.append(f"{directory}: cannot list directory: {exc.strerror or exc}")
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                st = path.stat()  # follows symlinks
            except OSError as exc:
                if entry.is_symlink():
                    why = "symlink loop" if exc.errno == errno.ELOOP else "dangling symlink"
                    if entry.name.lower().endswith(".gguf") or exc.errno == errno.ELOOP:
                        report.messages.append(f"{path}: {why} ({exc.strerror}), skipped")
                elif entry.name.lower().endswith(".gguf"):
                    report.messages.append(f"{path}: cannot stat: {exc.strerror}, skipped")
                continue
            if entry.is_dir():
                if entry.name.lower().endswith(".gguf"):
                    report.messages.append(f"{path}: is a directory, not a GGUF file; looking inside it")
                pending.append(path)
                continue
            if not entry.name.lower().endswith(".gguf"):
                continue
            if not entry.is_file():
                report.messages.append(f"{path}: not a regular file, skipped")
                continue
            real = path.resolve()
            if real in seen_files:
                report.messages.append(f"{path}: same file as {seen_files[real]}, registered once")
                continue
            seen_files[real] = path
            yield _Found(path, real, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))


def _unique_slug(path: Path) -> str:
    base = slugify(path.stem.replace(".", "-"))[:100] or "model"
    slug, n = base, 2
    while name_is_taken(slug):
        slug, n = f"{base}-{n}", n + 1
    return slug


def apply_metadata(model: LLMModel, meta: dict) -> None:
    """Copy what `read_metadata` returned into the model's fields."""
    for name in ("architecture", "quantization", "chat_template", "tokenizer_model"):
        setattr(model, name, meta.get(name) or "")
    for name in ("parameter_count", "context_length", "embedding_length", "block_count"):
        setattr(model, name, meta.get(name))
    model.gguf_metadata = {
        **meta.get("extra", {}),
        "bos_token": meta.get("bos_token"),
        "eos_token": meta.get("eos_token"),
    }


def _inspect(found: _Found, model: LLMModel, progress: ProgressFactory | None) -> None:
    """Hash and probe the file, then fill `model`'s measured fields and status."""
    model.file_size, model.file_mtime = found.size, found.mtime
    try:
        on_chunk = progress(found.path.name, found.size) if progress else None
        model.sha256 = file_sha256(found.real, on_chunk)
    except OSError as exc:
        model.sha256 = ""
        model.status, model.status_reason = ModelStatus.INVALID, f"cannot read the file: {exc.strerror or exc}"
        return
    result = probe_model_file(
        found.real, timeout_s=settings.MODEL_PROBE_TIMEOUT_S, memory_mb=settings.MODEL_PROBE_MEMORY_MB
    )
    if result.metadata:
        apply_metadata(model, result.metadata)
    if result.ok:
        model.status, model.status_reason = ModelStatus.AVAILABLE, ""
    else:
        model.status, model.status_reason = ModelStatus.INVALID, result.reason


def scan_models(directory: Path | None = None, *, progress: ProgressFactory | None = None) -> ScanReport:
    """Add new GGUF files under `directory`, refresh changed ones, mark vanished ones missing."""
    root = Path(directory or settings.MODELS_DIR).resolve()
    report = ScanReport()
    if not root.is_dir():
        report.messages.append(f"{root}: not a directory; nothing scanned")
        return report
    now = timezone.now()
    seen_real: set[str] = set()
    for found in _walk(root, report):
        seen_real.add(str(found.real))
        model = LLMModel.objects.filter(file_path=str(found.real)).first()
        same_file = model is not None and (model.file_size, model.file_mtime) == (found.size, found.mtime)
        if same_file and model.status != ModelStatus.MISSING:
            report.unchanged.append(model.id)
            continue
        is_new = model is None
        if is_new:
            model = LLMModel(id=_unique_slug(found.path), file_path=str(found.real))
        _inspect(found, model, progress)
        model.name = model.name or found.path.stem
        model.source_path = str(found.path)
        model.scanned_at = now
        with transaction.atomic():
            model.save()
            if is_new:
                trained = model.context_length or 4096
                ModelConfig.objects.create(model=model, n_ctx=min(4096, max(256, trained)))
                assign_ollama_name(model=model)
        (report.added if is_new else report.updated).append(model.id)
        if model.status == ModelStatus.INVALID:
            report.invalid.append(model.id)
            report.messages.append(f"{found.path}: invalid: {model.status_reason}")
    # A file gone from disk (or no longer reachable from the directory) is missing;
    # its row stays, because usage rows point at it.
    for model in LLMModel.objects.exclude(status=ModelStatus.MISSING).exclude(file_path__in=seen_real):
        if Path(model.file_path).is_file() and not _is_under(Path(model.source_path), root):
            continue  # registered from another directory and still there
        model.status, model.status_reason = ModelStatus.MISSING, f"not found under {root} at {now:%Y-%m-%d %H:%M} UTC"
        model.save(update_fields=["status", "status_reason", "updated_at"])
        report.missing.append(model.id)
    return report


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def rescan_model(model: LLMModel, *, progress: ProgressFactory | None = None) -> LLMModel:
    """Hash and probe one registered file again, whatever its size and mtime say."""
    path = Path(model.file_path)
    try:
        st = path.stat()
    except OSError as exc:
        model.status, model.status_reason = ModelStatus.MISSING, f"cannot stat {path}: {exc.strerror}"
        model.save()
        return model
    found = _Found(Path(model.source_path or path), path, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))
    _inspect(found, model, progress)
    model.scanned_at = timezone.now()
    model.save()
    return model


def scan_models_exclusively(directory: Path | None = None) -> ScanReport | None:
    """`scan_models`, unless another scan on this machine still runs; then None.

    Hashing a new multi-GB file can outlast the 5-minute schedule, and two scans adding
    the same new file would collide on its unique path.
    """
    lock_path = Path(settings.VAR_DIR) / "scan.lock"
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return scan_models(directory)  # the lock goes with the file when it closes
