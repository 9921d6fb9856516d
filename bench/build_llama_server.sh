#!/usr/bin/env bash
# Build llama.cpp's C++ server from the llama.cpp vendored in the llama-cpp-python sdist we run on,
# so both sides of bench/concurrency.py use the same ggml and llama.cpp code. Nothing here is committed:
# the sdist, sources and build live in bench/.cache/ (git-ignored). Prints the binary's path when done;
# a second run reuses the build. llama-batched-bench is built beside it: llama.cpp's own measure of prompt
# and batched decode speed on the same ggml, for bounds such as "a server that computed no prompt at all".
#
#   bench/build_llama_server.sh            # -> bench/.cache/llama-server/build/bin/llama-server
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-$("$ROOT/.venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')}"
CACHE="$ROOT/bench/.cache"
SRC="$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$CACHE/llama-server/build"
BIN="$BUILD/bin/llama-server"

if [[ -x "$BIN" && -x "$BUILD/bin/llama-batched-bench" ]]; then
    echo "$BIN"
    exit 0
fi

if [[ ! -d "$SRC" ]]; then
    mkdir -p "$CACHE/sdist" "$CACHE/src"
    SDIST="$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz"
    if [[ ! -f "$SDIST" ]]; then
        # pip reuses its own cache when it has the file.
        "$ROOT/.venv/bin/pip" download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/sdist" >&2
    fi
    tar -xzf "$SDIST" -C "$CACHE/src"
fi

# GGML_NATIVE=ON: -march=native, as the llama-cpp-python build in .venv was made (its default).
# LLAMA_CURL is deprecated and ignored in this llama.cpp; LLAMA_OPENSSL=OFF because we only serve plain HTTP
# on 127.0.0.1. LLAMA_BUILD_UI/LLAMA_USE_PREBUILT_UI=OFF: the web UI would need npm or a download from
# Hugging Face, and the benchmark never opens it. Tests, examples and the other tools are not needed.
cmake -S "$SRC" -B "$BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF >&2
cmake --build "$BUILD" --target llama-server llama-batched-bench -j "${JOBS:-2}" >&2
echo "$BIN"
