"""One loaded model: llama.cpp's model and a multi-sequence context, plus prompt building.

The context holds `n_parallel` sequences, each with its own KV stream of
n_ctx / n_parallel tokens (llama.cpp server's default layout), so one decode call
advances every active request. Only the model's scheduler thread decodes;
`tokenize_prompt` and `render_chat` only read the vocabulary and may run anywhere.
Picking the tokens after each decode is `TokenSampling`'s (sampling.py).
"""

import ctypes
import logging
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

from inference.engine.grammar import SchemaRefused, framed_grammar, schema_grammar
from inference.engine.jobs import Job, RequestBounds, Sampling
from inference.engine.sampling import GrammarSampler, GreedyArgmax, TokenSampling
from inference.engine.spec import ModelSpec
from models_app.chat_templates import ChatTemplateError, render_chat_template

_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
_ROPE_SCALING = {
    "model": llama_cpp.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    "none": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
}

# llama.cpp logs through this logger's level; left unset it prints every debug line of
# context creation to stderr (Llama(verbose=False) sets it, the low-level API does not).
_llama_log = logging.getLogger("llama-cpp-python")
if _llama_log.level == logging.NOTSET:
    _llama_log.setLevel(logging.ERROR)


class PromptError(ValueError):
    """The request cannot run as sent; `param` and `code` say where and why."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.param, self.code = param, code


def utf8(text: str, param: str) -> bytes:
    """`text` as UTF-8 for llama.cpp; PromptError for what JSON allows and UTF-8 cannot hold (a lone surrogate)."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise PromptError(
            f"{param} holds {exc.object[exc.start : exc.end]!a}, a lone UTF-16 surrogate, which is not text",
            param=param,
            code="invalid_value",
        ) from exc


@dataclass
class Prepared:
    """A request checked and built on its own worker thread: what the decode thread runs as is."""

    tokens: list[int]
    sampler: "_internals.LlamaSampler | GreedyArgmax"


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def render_prompt(
    spec: ModelSpec,
    messages: list[dict[str, Any]],
    bounds: RequestBounds | None = None,
    enable_thinking: bool | None = None,
    *,
    tools: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt `spec`'s own chat template (sandboxed) makes of `messages`, its system prompt added if none is."""
    if not spec.chat_template:
        raise PromptError(
            f"{spec.model_id} has no chat template; send a raw prompt to /v1/completions instead.",
            param="model",
            code="no_chat_template",
        )
    messages = [{**m, "content": _message_text(m.get("content"))} for m in messages]
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": spec.system_prompt})
    bounds = bounds or RequestBounds()
    try:
        return render_chat_template(
            spec.chat_template, messages, bos_token=spec.bos_token, eos_token=spec.eos_token,
            add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking, tools=tools, extra=extra,
            timeout_s=bounds.template_timeout_s, max_output_chars=bounds.template_max_chars,
        )  # fmt: skip
    except ChatTemplateError as exc:
        raise PromptError(str(exc), param="messages", code="chat_template_error") from exc


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "amx_int8" in line.split() for line in cpuinfo)
    except OSError:
        return False


def extra_buffers(choice: str) -> bool:
    """Whether llama.cpp may put weights in its extra CPU buffer types (AMX, repacked layouts).

    "auto": not on a CPU with AMX. llama.cpp's AMX matmul (llama-cpp-python 0.3.36) ends the
    process with SIGSEGV at the first decode there (seen on a Sapphire Rapids VM with the
    bundled Q4_1 model); without the extra buffers the same CPU runs its AVX-512 kernels.
    """
    if choice == "auto":
        return not _cpu_has_amx()
    return choice == "on"


def _threads(configured: int | None) -> int:
    # llama-cpp-python's own default is half the cores; a server wants them all.
    return configured or len(os.sched_getaffinity(0))


class LlamaRunner(TokenSampling):
    """A model loaded with its ModelSpec: tokenize, build samplers, decode batches, embed."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        kw = spec.llama_kwargs
        self.n_parallel = max(1, int(kw.get("n_parallel", 1)))
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = kw["n_gpu_layers"]
        mparams.use_mmap = kw["use_mmap"]
        mparams.use_mlock = kw["use_mlock"]
        mparams.use_extra_bufts = extra_buffers(kw.get("extra_buffers", "auto"))
        self.model = _internals.LlamaModel(path_model=spec.path, params=mparams, verbose=False)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = kw["n_ctx"]
        # Every generating slot puts one token in each step's batch, so a batch smaller
        # than the slot count would overflow the batch arrays.
        self.n_batch = max(kw["n_batch"], self.n_parallel)
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = self.n_parallel
        cparams.kv_unified = False  # one KV stream per slot: attention never scans other slots' cells
        cparams.n_threads = cparams.n_threads_batch = _threads(kw["n_threads"])
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if kw["flash_attn"] else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.type_k, cparams.type_v = _GGML_TYPES[kw["cache_type_k"]], _GGML_TYPES[kw["cache_type_v"]]
        cparams.rope_scaling_type = _ROPE_SCALING[kw["rope_scaling"]]
        cparams.rope_freq_base, cparams.rope_freq_scale = kw["rope_freq_base"], kw["rope_freq_scale"]
        cparams.no_perf = True
        try:
            self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        except Exception:
            self.model.close()
            raise
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=self.n_parallel, verbose=False)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._eog: dict[int, bool] = {}

    @property
    def n_ctx_slot(self) -> int:
        """Context each request gets: the context divided among the slots."""
        return self.ctx.n_ctx() // self.n_parallel

    # -- prompts ---------------------------------------------------------------------
    def render_chat(
        self,
        messages: list[dict[str, Any]],
        bounds: RequestBounds | None = None,
        enable_thinking: bool | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """The prompt for `messages` through the model's own template (sandboxed)."""
        return render_prompt(self.spec, messages, bounds, enable_thinking, tools=tools, extra=extra)

    def tokenize_prompt(self, job: Job, bounds: RequestBounds | None = None) -> list[int]:
        """Prompt tokens for a chat or completion job; raise PromptError if they do not fit."""
        param = "messages" if job.kind == "chat" else "prompt"
        if job.kind == "completion" and job.prompt_tokens:
            tokens = self.checked_ids(job.prompt_tokens, param)  # as sent: no BOS added
        else:
            if job.kind == "chat":
                text = self.render_chat(job.messages, bounds, job.enable_thinking, tools=job.tools,
                                        extra=job.template_kwargs)  # fmt: skip
            else:
                text = job.prompt
            add_bos = self.spec.add_bos and not (self.spec.bos_token and text.startswith(self.spec.bos_token))
            tokens = self.model.tokenize(utf8(text, param), add_bos=add_bos, special=True)
        if not tokens:
            raise PromptError("The prompt is empty.", param=param, code="empty_prompt")
        if len(tokens) >= self.n_ctx_slot:
            raise PromptError(
                f"The prompt is {len(tokens)} tokens but each request to {self.spec.model_id} gets "
                f"{self.n_ctx_slot} (n_ctx {self.ctx.n_ctx()} / n_parallel {self.n_parallel}); shorten the "
                f"{param}, or raise n_ctx or lower n_parallel in the model's config.",
                param=param,
                code="context_length_exceeded",
            )
        return tokens

    def checked_ids(self, tokens: list[int], param: str) -> list[int]:
        """Token ids a client sent, each one this model's vocabulary has; PromptError naming the field."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise PromptError(f"{param} holds token {token}, which {self.spec.model_id}'s vocabulary does not "
                                  f"have (ids 0-{self.n_vocab - 1})", param=param, code="invalid_value")  # fmt: skip
        return list(tokens)

    def prepare(self, job: Job, bounds: RequestBounds) -> Prepared:
        """Check a generation job against this model and build its sampler; PromptError naming the field.

        Runs on the request's worker thread: nothing that can fail for the request's own
        reasons is left for the decode thread.
        """
        tokens = self.tokenize_prompt(job, bounds)
        sampling = job.sampling
        if len(sampling.logit_bias) > bounds.max_logit_bias:
            raise PromptError(
                f"logit_bias has {len(sampling.logit_bias)} entries; the limit is {bounds.max_logit_bias} "
                "(MAX_LOGIT_BIAS)",
                param="logit_bias",
                code="invalid_value",
            )
        for token in sampling.logit_bias:
            if not 0 <= token < self.n_vocab:
                raise PromptError(
                    f"logit_bias names token {token}, which {self.spec.model_id}'s vocabulary does not have "
                    f"(ids 0-{self.n_vocab - 1})",
                    param="logit_bias",
                    code="invalid_value",
                )
        grammar, root = None, "root"
        if sampling.json_schema is not None:
            try:
                grammar, root = framed_grammar(
                    schema_grammar(sampling.json_schema, bounds.schema), sampling.grammar_open,
                    sampling.grammar_close, sampling.grammar_repeat,
                )  # fmt: skip
            except SchemaRefused as exc:
                raise PromptError(str(exc), param=exc.param, code="unsupported_schema") from exc
        seed = sampling.seed if sampling.seed is not None else random.randint(0, 2**31 - 1)
        return Prepared(tokens, self.new_sampler(sampling, seed, grammar, root))

    def new_sampler(
        self, sampling: Sampling, seed: int, grammar: str | None = None, root: str = "root"
    ) -> _internals.LlamaSampler | GreedyArgmax:
        """A sampler chain for one request: bias, penalties, grammar, then greedy or random."""
        neutral = sampling.repeat_penalty == 1 and not sampling.frequency_penalty and not sampling.presence_penalty
        if sampling.temperature == 0 and neutral and grammar is None and sampling.n_probs < 0:
            return GreedyArgmax(sampling.logit_bias)
        sampler = GrammarSampler() if grammar is not None else _internals.LlamaSampler()
        if sampling.logit_bias:
            sampler.add_logit_bias(self.n_vocab, sampling.logit_bias)
        sampler.add_penalties(
            self.n_vocab, sampling.penalty_last_n, sampling.repeat_penalty, sampling.frequency_penalty,
            sampling.presence_penalty,
        )  # fmt: skip
        if grammar is not None:
            compiled = self._grammar_sampler(grammar, sampling.grammar_trigger, root)
            if not compiled:  # llama.cpp could not parse it: the schema's fault, said before admission
                sampler.close()
                raise PromptError(
                    "llama.cpp could not parse the grammar made from the schema; simplify the schema",
                    param="response_format",
                    code="unsupported_schema",
                )
            sampler.grammar, sampler.grammar_text, sampler.root = compiled, grammar, root
            if sampling.grammar_trigger:
                sampler.trigger = re.compile(sampling.grammar_trigger)
        if sampling.temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(sampling.top_k)
            sampler.add_top_p(sampling.top_p, 1)
            if sampling.typical_p < 1.0:
                sampler.add_typical(sampling.typical_p, 1)
            sampler.add_min_p(sampling.min_p, 1)
            sampler.add_temp(sampling.temperature)
            sampler.add_dist(seed & 0xFFFFFFFF)  # llama.cpp takes 32 bits; any int a client sends maps into them
        return sampler

    def _grammar_sampler(self, grammar: str, trigger: str, root: str = "root") -> Any:
        """llama.cpp's grammar sampler; lazy (free until `trigger` matches) when a trigger is given."""
        if not trigger:
            return llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), root.encode())
        patterns = (ctypes.c_char_p * 1)(trigger.encode())
        return llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            self.vocab, grammar.encode(), root.encode(), patterns, 1, None, 0
        )

    def save_sequence(self, seq_id: int) -> ctypes.Array | None:
        """A copy of one sequence's KV state (llama.cpp's per-sequence format); None if it cannot be read."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ctx, seq_id)
        state = (ctypes.c_ubyte * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx.ctx, state, size, seq_id) != size:
            return None
        return state

    def restore_sequence(self, seq_id: int, state: ctypes.Array) -> bool:
        """Replace a sequence's KV with a saved state; False (and the sequence empty) if it did not fit."""
        if llama_cpp.llama_state_seq_set_data(self.ctx.ctx, state, len(state), seq_id) != len(state):
            self.forget(seq_id)
            return False
        return True

    def forget(self, seq_id: int, from_pos: int = 0) -> None:
        """Drop a slot's KV from `from_pos` on (0: all of it)."""
        llama_cpp.llama_memory_seq_rm(self.ctx.memory, seq_id, from_pos, -1)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()
        self.model.close()
