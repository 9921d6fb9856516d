"""ggml's device registry as this build sees it, and what readiness and an inference node make of it."""

import os

import llama_cpp
import pytest

from inference.engine.devices import devices, offload_devices
from inference.node import describe_hardware
from inference.readiness import readiness
from models_app.models import ModelConfig


def test_the_cpu_is_listed_with_the_machines_memory():
    cpu = [d for d in devices() if d.kind == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].description
    # ggml's CPU device reports the physical memory from sysconf, as this does.
    assert cpu[0].total_mib == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    assert "CPU (cpu: " in str(cpu[0]) and "MiB free" in str(cpu[0])


def test_offload_devices_are_gpus_only():
    listed = offload_devices()
    assert all(d.kind in {"gpu", "igpu"} for d in listed)
    if not llama_cpp.llama_supports_gpu_offload():
        assert listed == []
        assert not describe_hardware().startswith("GPU")


@pytest.mark.django_db
def test_readiness_lists_the_gpus_or_says_there_are_none(small_model, monkeypatch, settings):
    settings.INFERENCE_NODE_DESCRIPTION = ""
    gpu = next(c for c in readiness() if c.name == "gpu")
    if llama_cpp.llama_supports_gpu_offload():
        assert gpu.ok and all(d.name in gpu.detail for d in offload_devices())
        return
    assert gpu.ok and gpu.detail == "this llama.cpp build runs on the CPU only"
    # A GPU build on a host whose GPU is gone (driver, container without the device): offload is
    # compiled in, the registry has no GPU, so a config that asks for layers on one is not ready.
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    ModelConfig.objects.filter(model=small_model).update(n_gpu_layers=8)
    gpu = next(c for c in readiness() if c.name == "gpu")
    assert not gpu.ok and "no GPU device is visible" in gpu.detail and small_model.pk in gpu.detail
