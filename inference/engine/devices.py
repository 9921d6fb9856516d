"""The compute devices this process's llama.cpp build sees: ggml's backend device registry.

llama-cpp-python binds no ggml device call, so the few used here are declared with ctypes on the
library it already loaded (libllama's handle also resolves the libggml symbols it links). The list
is what llama.cpp itself would offload to: CUDA, ROCm, Vulkan or Metal devices next to the CPU, each
with its memory as the backend reports it (for the CPU, the system's RAM).
"""

import ctypes
import functools
from dataclasses import dataclass

import llama_cpp
from llama_cpp import llama_cpp as _bindings

# enum ggml_backend_dev_type, in ggml-backend.h's order.
KINDS = ("cpu", "gpu", "igpu", "accel", "meta")
OFFLOAD_KINDS = frozenset({"gpu", "igpu"})


@dataclass(frozen=True)
class Device:
    """One ggml backend device: its name (`CUDA0`, `Vulkan0`, `CPU`), what it is, and its memory in MiB."""

    name: str
    description: str
    kind: str
    free_mib: int
    total_mib: int

    def __str__(self) -> str:
        memory = f"{self.free_mib:,} of {self.total_mib:,} MiB free" if self.total_mib else "memory not reported"
        return f"{self.name} ({self.kind}: {self.description}; {memory})"


@functools.cache
def _api() -> ctypes.CDLL:
    lib: ctypes.CDLL = _bindings._lib
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace").strip()


def devices() -> list[Device]:
    """Every device in the registry, in its order (GPUs first, as llama.cpp registers them)."""
    lib = _api()
    found = []
    for index in range(lib.ggml_backend_dev_count()):
        handle = lib.ggml_backend_dev_get(index)
        if not handle:
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
        kind = lib.ggml_backend_dev_type(handle)
        found.append(
            Device(
                name=_text(lib.ggml_backend_dev_name(handle)),
                description=_text(lib.ggml_backend_dev_description(handle)),
                kind=KINDS[kind] if 0 <= kind < len(KINDS) else f"type {kind}",
                free_mib=free.value // 2**20,
                total_mib=total.value // 2**20,
            )
        )
    return found


def offload_devices() -> list[Device]:
    """The devices layers can be offloaded to (dedicated or integrated GPUs); empty on a CPU-only build or host."""
    if not llama_cpp.llama_supports_gpu_offload():
        return []
    return [device for device in devices() if device.kind in OFFLOAD_KINDS]
