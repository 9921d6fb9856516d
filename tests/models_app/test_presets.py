import pytest

from models_app.choices import KVCacheType, OptimizeFor
from models_app.models import ModelConfig
from models_app.models.registry import PRESETS

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("preset", OptimizeFor.values)
def test_each_preset_writes_its_tunables(small_model, preset):
    config = ModelConfig.objects.get(model=small_model)
    config.apply_preset(preset)
    config.save()
    config.refresh_from_db()
    assert config.optimize_for == preset
    for field, value in PRESETS[preset].items():
        assert getattr(config, field) == value


def test_memory_preset_quantizes_the_kv_cache_with_flash_attention(small_model):
    config = small_model.config
    config.apply_preset(OptimizeFor.MEMORY)
    assert (config.cache_type_k, config.cache_type_v, config.flash_attn) == (KVCacheType.Q8_0, KVCacheType.Q8_0, True)


def test_speed_preset_uses_bigger_batches_than_memory():
    assert PRESETS[OptimizeFor.SPEED]["n_batch"] > PRESETS[OptimizeFor.MEMORY]["n_batch"]
