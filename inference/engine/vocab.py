"""A model's vocabulary alone (llama.cpp's `vocab_only` load: no weights, milliseconds), for tokenize and detokenize.

It serves /v1/tokenize, /v1/detokenize and the native /tokenize and /detokenize
without loading the model or taking a slot, on any node that has the file.
"""

import ctypes
import os
import threading
from collections import OrderedDict

import llama_cpp

_MAX_OPEN = 4


class Vocab:
    def __init__(self, path: str) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self._model:
            raise OSError(f"llama.cpp could not read the vocabulary of {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)

    def tokenize(self, text: bytes, *, add_special: bool, parse_special: bool) -> list[int]:
        size = len(text) + 8  # a token holds at least one byte; BOS/EOS besides
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, text, len(text), buf, size, add_special, parse_special)
        if n < 0:
            buf = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self._vocab, text, len(text), buf, -n, add_special, parse_special)
        return list(buf[: max(n, 0)])

    def piece(self, token: int, *, special: bool = True) -> bytes:
        """The bytes of a token id the caller has checked (0 <= token < n_vocab)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def __del__(self) -> None:  # when no request holds it any more (eviction alone never frees it)
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None


_open: OrderedDict[tuple[str, int, float], Vocab] = OrderedDict()
_lock = threading.Lock()


def vocab_for(path: str) -> Vocab:
    """The vocabulary of the GGUF at `path`, opened once (the few most recent stay open); OSError if unreadable."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime)
    with _lock:
        vocab = _open.get(key)
        if vocab is None:
            vocab = _open[key] = Vocab(path)
            while len(_open) > _MAX_OPEN:
                _open.popitem(last=False)
        _open.move_to_end(key)
        return vocab
