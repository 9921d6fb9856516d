"""One loaded model: llama-cpp-python's Llama plus the loop that turns a job into tokens.

Not thread-safe: the model's worker thread is the only caller of `generate` and
`embed`; `tokenize_prompt` only reads the vocabulary and may run on any thread.
"""

import codecs
import json
import os
import random
import threading
import time
from functools import lru_cache
from typing import Any

import llama_cpp
import numpy as np

from inference.engine.jobs import Job, JobHandle, Outcome, Token
from inference.engine.spec import ModelSpec
from models_app.chat_templates import ChatTemplateError, render_chat_template

_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
_ROPE_SCALING = {
    "model": llama_cpp.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    "none": llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
}


class PromptError(ValueError):
    """The request cannot run as sent; `param` and `code` say where and why."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@lru_cache(maxsize=64)
def _grammar(schema_json: str) -> llama_cpp.LlamaGrammar:
    if schema_json == "{}":
        return llama_cpp.LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
    return llama_cpp.LlamaGrammar.from_json_schema(schema_json, verbose=False)


def compile_grammar(schema: dict[str, Any]) -> llama_cpp.LlamaGrammar:
    """A grammar that only admits JSON matching `schema` ({} = any JSON object)."""
    return _grammar(json.dumps(schema, sort_keys=True))


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class LlamaRunner:
    """A model loaded with its ModelSpec, ready to tokenize, generate and embed."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        kw = spec.llama_kwargs
        self._common = {
            "model_path": spec.path,
            "n_gpu_layers": kw["n_gpu_layers"],
            "use_mmap": kw["use_mmap"],
            "use_mlock": kw["use_mlock"],
            # llama-cpp-python's own default is half the cores; a server wants them all.
            "n_threads": kw["n_threads"] or len(os.sched_getaffinity(0)),
            "n_threads_batch": kw["n_threads"] or len(os.sched_getaffinity(0)),
            "rope_scaling_type": _ROPE_SCALING[kw["rope_scaling"]],
            "rope_freq_base": kw["rope_freq_base"],
            "rope_freq_scale": kw["rope_freq_scale"],
            "verbose": False,
        }
        self.llm = llama_cpp.Llama(
            n_ctx=kw["n_ctx"],
            n_batch=kw["n_batch"],
            flash_attn=kw["flash_attn"],
            type_k=_GGML_TYPES[kw["cache_type_k"]],
            type_v=_GGML_TYPES[kw["cache_type_v"]],
            **self._common,
        )
        self._embedder: llama_cpp.Llama | None = None
        self._embedder_lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for `messages` through the model's own template (sandboxed)."""
        if not self.spec.chat_template:
            raise PromptError(
                f"{self.spec.model_id} has no chat template; send a raw prompt to /v1/completions instead.",
                param="model",
                code="no_chat_template",
            )
        messages = [{**m, "content": _message_text(m.get("content"))} for m in messages]
        if self.spec.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.spec.system_prompt})
        try:
            return render_chat_template(
                self.spec.chat_template, messages, bos_token=self.spec.bos_token, eos_token=self.spec.eos_token
            )
        except ChatTemplateError as exc:
            raise PromptError(str(exc), param="messages", code="chat_template_error") from exc

    def tokenize_prompt(self, job: Job) -> list[int]:
        """Prompt tokens for a chat or completion job; raise PromptError if they do not fit."""
        text = self.render_chat(job.messages) if job.kind == "chat" else job.prompt
        add_bos = self.spec.add_bos and not (self.spec.bos_token and text.startswith(self.spec.bos_token))
        tokens = self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        param = "messages" if job.kind == "chat" else "prompt"
        if not tokens:
            raise PromptError("The prompt is empty.", param=param, code="empty_prompt")
        if len(tokens) >= self.n_ctx:
            raise PromptError(
                f"The prompt is {len(tokens)} tokens but {self.spec.model_id} is loaded with a context of "
                f"{self.n_ctx}; shorten the {param} or raise n_ctx in the model's config.",
                param=param,
                code="context_length_exceeded",
            )
        return tokens

    def generate(self, job: Job, tokens: list[int], handle: JobHandle) -> Outcome:
        """Decode until a stop, the token limit or cancellation; push tokens to `handle`."""
        s = job.sampling
        llm = self.llm
        max_tokens = min(s.max_tokens, self.n_ctx - len(tokens))
        llm.set_seed(s.seed if s.seed is not None else random.randint(0, 2**31 - 1))
        processors = None
        if s.logit_bias:
            ids = np.fromiter(s.logit_bias.keys(), dtype=np.intc)
            bias = np.fromiter(s.logit_bias.values(), dtype=np.single)

            def apply_bias(_input_ids: Any, scores: Any) -> Any:
                scores[ids] += bias
                return scores

            processors = llama_cpp.LogitsProcessorList([apply_bias])
        grammar = compile_grammar(s.json_schema) if s.json_schema is not None else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        started = time.perf_counter()
        first_at: float | None = None
        pending, produced, finish = "", 0, "length"
        status = "completed"
        for token in llm.generate(
            tokens,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            logits_processor=processors,
            grammar=grammar,
        ):
            if first_at is None:
                first_at = time.perf_counter()
            if handle.cancelled.is_set():
                status, finish = "cancelled", "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            produced += 1
            pending += decoder.decode(llm.detokenize([token], special=False))
            if s.stop:
                hit = min((i for i in (pending.find(x) for x in s.stop) if i >= 0), default=-1)
                if hit >= 0:
                    if hit:
                        handle.push(Token(pending[:hit]))
                    pending, finish = "", "stop"
                    break
                keep = _held_back(pending, s.stop)
                ready, pending = (pending[:-keep], pending[-keep:]) if keep else (pending, "")
            else:
                ready, pending = pending, ""
            if ready:
                handle.push(Token(ready))
            if produced >= max_tokens:
                break
        pending += decoder.decode(b"", final=True)
        if pending and status == "completed":
            handle.push(Token(pending))
        ended = time.perf_counter()
        first_at = first_at or ended
        return Outcome(
            status=status,
            finish_reason=finish,
            prompt_tokens=len(tokens),
            completion_tokens=produced,
            time_to_first_token_ms=round((first_at - job.submitted_at_perf) * 1000, 2),
            prompt_ms=(first_at - started) * 1000,
            decode_ms=(ended - first_at) * 1000,
            duration_ms=(ended - job.submitted_at_perf) * 1000,
        )

    def embed(self, job: Job) -> Outcome:
        """Mean-pooled, normalized embeddings of `job.inputs` from a second, embedding context."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = llama_cpp.Llama(
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=min(self.spec.llama_kwargs["n_ctx"], 2048),
                    n_batch=min(self.spec.llama_kwargs["n_ctx"], 2048),
                    n_ubatch=min(self.spec.llama_kwargs["n_ctx"], 2048),
                    **self._common,
                )
        started = time.perf_counter()
        limit = self._embedder.n_ctx()
        counts = []
        for i, text in enumerate(job.inputs):
            n = len(self._embedder.tokenize(text.encode(), add_bos=self.spec.add_bos, special=True))
            if n > limit:
                raise PromptError(
                    f"input[{i}] is {n} tokens; embeddings take at most {limit}.",
                    param="input",
                    code="context_length_exceeded",
                )
            counts.append(n)
        vectors = self._embedder.embed(job.inputs, normalize=True)
        ended = time.perf_counter()
        return Outcome(
            status="completed",
            finish_reason="stop",
            prompt_tokens=sum(counts),
            embeddings=vectors,
            time_to_first_token_ms=None,
            prompt_ms=(ended - started) * 1000,
            duration_ms=(ended - job.submitted_at_perf) * 1000,
        )

    def close(self) -> None:
        self.llm.close()
        if self._embedder is not None:
            self._embedder.close()
