"""Picking each sequence's next token from a decode step's logits, on the scheduler thread only.

`TokenSampling` is the half of `LlamaRunner` (llama_runner.py) that runs after every decode:
greedy by numpy's argmax where nothing else applies (`GreedyArgmax`), llama.cpp's sampler
chains otherwise, a grammar checked against the chain's pick before it is applied to the whole
vocabulary (`GrammarSampler`), log-probabilities on request, and the bytes of each token.
"""

import ctypes
import re
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals


def _keeping_gil(name: str) -> Any:
    """`llama_cpp.<name>` declared so that the call keeps the GIL (ctypes' PYFUNCTYPE).

    A ctypes call normally drops the GIL and must win it back afterwards; while the event
    loop streams other requests that wait can last up to the interpreter's switch interval
    (5 ms), far longer than a short call such as sampling one token. So the scheduler's
    short calls keep it, and only llama_decode, which takes milliseconds, lets it go.
    """
    func = getattr(llama_cpp, name)
    return ctypes.PYFUNCTYPE(func.restype, *func.argtypes)((name, llama_cpp.llama_cpp._lib))


_sampler_sample = _keeping_gil("llama_sampler_sample")
_TRIGGER_RETRIES = 16  # picks refused for firing a lazy grammar's trigger into text it cannot take, at most
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
_get_logits_ith = _keeping_gil("llama_get_logits_ith")


class GreedyArgmax:
    """Greedy decoding with neutral penalties and no grammar: the highest logit after the biases.

    The same token as llama.cpp's greedy sampler (the first of equal maxima, biases added
    in float32), without filling its candidate array of the whole vocabulary for every
    token; numpy's argmax over the logits row is several times cheaper.
    """

    def __init__(self, logit_bias: dict[int, float]) -> None:
        self.bias_ids = np.fromiter(logit_bias, dtype=np.intp, count=len(logit_bias))
        self.bias_values = np.fromiter(logit_bias.values(), dtype=np.float32, count=len(logit_bias))

    def close(self) -> None:
        """Nothing native to free (the samplers' common interface)."""

    def pick(self, logits: np.ndarray) -> int:
        if len(self.bias_ids):
            logits = logits.copy()
            logits[self.bias_ids] += self.bias_values
        return int(logits.argmax())


class GrammarSampler(_internals.LlamaSampler):
    """A sampler chain and, apart from it, a grammar (llama.cpp's common_sampler keeps them apart too).

    The chain picks a token from the raw candidates; only if the grammar refuses that one
    token is the grammar applied to the whole vocabulary and the pick made again. Most
    picks of a model that follows the format pass, so the costly full-vocabulary grammar
    pass is the exception (bench/tool_grammar.py).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # llama-cpp-python's class is untyped
        self.grammar: Any = None
        self.grammar_text, self.root = "", "root"
        # A lazy grammar: its trigger (Python's reading of the same pattern llama.cpp matches), and the
        # output so far while it waits. Python watches for the trigger too, because llama.cpp aborts the
        # process if the token that fires it carries on with text the grammar cannot take.
        self.trigger: re.Pattern[str] | None = None
        self.waiting = ""

        def free_grammar() -> None:
            if self.grammar:
                llama_cpp.llama_sampler_free(self.grammar)
                self.grammar = None

        self._exit_stack.callback(free_grammar)


class TokenSampling:
    """Sampling and token text for `LlamaRunner`, which sets every attribute below in its __init__."""

    ctx: _internals.LlamaContext
    model: _internals.LlamaModel
    vocab: Any
    n_vocab: int
    _ids: np.ndarray
    _eog: dict[int, bool]
    _pieces: dict[int, bytes]
    _special_pieces: dict[int, bytes]

    def sample(self, sampler: _internals.LlamaSampler | GreedyArgmax, index: int) -> int:
        """The next token of a sequence from the logits at batch position `index`."""
        if isinstance(sampler, GreedyArgmax):
            row = _get_logits_ith(self.ctx.ctx, index)
            return sampler.pick(np.ctypeslib.as_array(row, shape=(self.n_vocab,)))
        if isinstance(sampler, GrammarSampler):
            return self._sample_with_grammar(sampler, index)
        return int(_sampler_sample(sampler.sampler, self.ctx.ctx, index))

    def _candidates(self, index: int, banned: list[int] | None = None) -> tuple[np.ndarray, Any]:
        """Every token with its logit at batch position `index`, as llama.cpp's samplers take them."""
        row = np.ctypeslib.as_array(_get_logits_ith(self.ctx.ctx, index), shape=(self.n_vocab,))
        data = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        data["id"] = self._ids
        data["logit"] = row
        data["p"] = 0.0
        if banned:
            data["logit"][banned] = -np.inf
        array = llama_cpp.llama_token_data_array(
            data.ctypes.data_as(llama_cpp.llama_token_data_p), self.n_vocab, -1, False
        )
        return data, array

    def _grammar_allows(self, grammar: Any, token: int) -> bool:
        one = np.array([(token, 1.0, 0.0)], dtype=_TOKEN_DATA)
        single = llama_cpp.llama_token_data_array(one.ctypes.data_as(llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
        return bool(np.isfinite(one["logit"][0]))

    def _choose(self, sampler: _internals.LlamaSampler, index: int, *, grammar_first: bool) -> tuple[int, Any, Any]:
        """(token, candidates, array): the chain's pick; under a grammar, one it allows.

        `grammar_first` applies the grammar to every candidate before the chain (the
        probabilities are then the ones it leaves); otherwise the chain's pick is checked
        alone and the grammar goes over the vocabulary only if it refuses it, as llama.cpp's
        common_sampler does. The ctypes calls let the GIL go: a grammar pass may take long.
        """
        grammar = sampler.grammar if isinstance(sampler, GrammarSampler) else None
        banned: list[int] = []
        for _ in range(_TRIGGER_RETRIES):
            data, array = self._candidates(index, banned)
            if grammar and grammar_first:
                llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
            llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(array))
            if not 0 <= array.selected < array.size:  # a chain without a final pick (never ours)
                raise RuntimeError("the sampler chain selected no token")
            token = int(data["id"][array.selected])
            if grammar and not grammar_first and not self._grammar_allows(grammar, token):
                data, array = self._candidates(index, banned)
                llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
                llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(array))
                token = int(data["id"][array.selected])
            if not isinstance(sampler, GrammarSampler) or self._trigger_safe(sampler, token):
                return token, data, array
            banned.append(token)  # it would fire the trigger into text the grammar refuses: another one
        raise RuntimeError("no token both the model and the tool-call grammar can continue with")

    def _trigger_safe(self, sampler: GrammarSampler, token: int) -> bool:
        """Whether accepting `token` leaves a lazy grammar whole: no trigger, or one the grammar can follow.

        llama.cpp feeds the grammar the output from the trigger on, including the rest of the
        token that completes it, and throws through its C API (ending the process) if the
        grammar refuses that text. So the text is tried first on a fresh copy of the grammar.
        """
        if sampler.trigger is None:
            return True
        text = sampler.waiting + self.piece(token, special=True).decode("utf-8", "replace")
        found = sampler.trigger.search(text)
        if found is None:
            return True
        tail = text[found.start(1) if found.lastindex else found.start() :]
        check = llama_cpp.llama_sampler_init_grammar(self.vocab, sampler.grammar_text.encode(), sampler.root.encode())
        if not check:
            return False
        try:
            for piece_token in self.model.tokenize(tail.encode(), add_bos=False, special=True):
                if not self._grammar_allows(check, piece_token):
                    return False
                llama_cpp.llama_sampler_accept(check, piece_token)
            return True
        finally:
            llama_cpp.llama_sampler_free(check)

    def _accept(self, sampler: _internals.LlamaSampler, token: int) -> None:
        if isinstance(sampler, GrammarSampler):
            llama_cpp.llama_sampler_accept(sampler.grammar, token)
            if sampler.trigger is not None:  # the grammar has taken over once its trigger fired
                text = sampler.waiting + self.piece(token, special=True).decode("utf-8", "replace")
                sampler.waiting = "" if sampler.trigger.search(text) else text
                if not sampler.waiting:
                    sampler.trigger = None
        llama_cpp.llama_sampler_accept(sampler.sampler, token)

    def _sample_with_grammar(self, sampler: GrammarSampler, index: int) -> int:
        token, _, _ = self._choose(sampler, index, grammar_first=False)
        self._accept(sampler, token)
        return token

    def sample_with_probs(
        self, sampler: _internals.LlamaSampler, index: int, n_probs: int
    ) -> tuple[int, dict[str, Any]]:
        """The next token, as `sample` picks it, with its log-probability and the `n_probs` likeliest.

        The chain is applied to a candidate array of the whole vocabulary, as llama.cpp's
        own sampling does; the probabilities are the softmax of the candidates its filters
        (grammar, top-k, top-p, min-p, temperature) leave, llama.cpp's post-sampling probs.
        """
        token, data, array = self._choose(sampler, index, grammar_first=True)
        self._accept(sampler, token)
        kept = data[: array.size]
        logits = kept["logit"].astype(np.float64)
        finite = np.isfinite(logits)
        shifted = np.where(finite, logits - logits[finite].max(), -np.inf)
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top = []
        if n_probs:
            # the n likeliest without sorting the whole vocabulary (a temperature-0 chain keeps all of it)
            head = np.argpartition(-logprobs, min(n_probs, len(logprobs) - 1))[:n_probs]
            order = head[np.argsort(-logprobs[head], kind="stable")]
            top = [self._prob_entry(int(kept["id"][i]), float(logprobs[i])) for i in order if np.isfinite(logprobs[i])]
        return token, {**self._prob_entry(token, float(logprobs[array.selected])), "top": top}

    def _prob_entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {"id": token, "bytes": list(self.piece(token)), "logprob": max(logprob, -9999.0)}

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (cached: a ctypes call per token would drop the GIL)."""
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (cached: the vocabulary never changes); `special` renders control tokens too."""
        cache = self._special_pieces if special else self._pieces
        cached = cache.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            cached = cache[token] = buf.raw[:n]
        return cached
