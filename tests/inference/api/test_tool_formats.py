"""Tool-call formats by template family: detection, rendering, parsing, streaming hold-back, lazy grammars."""

import ctypes
import json
import re

import llama_cpp
import pytest
from llama_cpp import _internals

from inference.api.thinking import ThinkingSplitter
from inference.api.tool_formats import ReplyReader, family, plan_for
from inference.engine import Sampling
from inference.engine.grammar import SchemaBounds, framed_grammar, schema_grammar
from inference.engine.llama_runner import LlamaRunner
from inference.engine.sampling import GrammarSampler
from models_app.chat_templates import render_chat_template

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}

# The parts of the real templates the detection reads (Qwen 2.5, Llama 3.1, Mistral Nemo), shortened.
QWEN = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}"
    "\n</tools>\nFor each function call, return a json object within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n{%- endif %}'
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
LLAMA3 = (
    "{%- for message in messages %}{%- if message.role == 'tool' or message.role == 'ipython' %}"
    "<|start_header_id|>ipython<|end_header_id|>\n\n{{ message.content | tojson }}<|eot_id|>"
    "{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content }}<|eot_id|>{%- endif %}"
    "{%- endfor %}{%- if tools %}{{ tools | tojson }}{%- endif %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
MISTRAL = (
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- if tools and loop.last %}[AVAILABLE_TOOLS]"
    "{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}[INST]{{ message.content }}[/INST]"
    "{%- elif message.tool_calls %}[TOOL_CALLS]{{ message.tool_calls | tojson }}</s>"
    "{%- else %}{{ message.content }}</s>{%- endif %}{%- endfor %}"
)
FIREFUNCTION = (
    "{%- if tools %}<|start_header_id|>system<|end_header_id|>\nIf you decide to call functions, write them as "
    'functools[{"name": ..., "arguments": ...}, ...]\n{{ tools | tojson }}<|eot_id|>{%- endif %}'
    "{%- for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n{{ message.content }}"
    "<|eot_id|>{%- endfor %}<|start_header_id|>assistant<|end_header_id|>\n"
)
CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [(QWEN, "hermes"), (LLAMA3, "llama3"), (MISTRAL, "mistral"), (FIREFUNCTION, "firefunction"), (CHATML, "generic"),
     (CHATML + "<tool_call>", "generic")],  # mentions the tag but renders no tools: the generic way
)  # fmt: skip
def test_the_family_is_read_from_the_template(template, expected):
    assert family(template) == expected


def test_a_native_template_renders_the_tools_and_earlier_calls_as_objects(db):
    plan = plan_for(QWEN, [WEATHER], "auto")
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                                                             "function": {"name": "get_weather",
                                                                          "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]  # fmt: skip
    messages = plan.messages(history, "")
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    prompt = render_chat_template(QWEN, messages, tools=plan.template_tools())
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt and "18C" in prompt
    mistral = plan_for(MISTRAL, [WEATHER], "auto")
    rendered = render_chat_template(MISTRAL, mistral.messages(history, ""), tools=mistral.template_tools())
    assert '[TOOL_CALLS][{"function": {"arguments": {"city": "Paris"}' in rendered


def test_the_generic_way_names_each_result_by_its_call(db):
    plan = plan_for(CHATML, [WEATHER], "auto")
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c9", "content": "-3C"},
    ]  # fmt: skip
    messages = plan.messages(history, "")
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    }
    assert json.loads(messages[3]["content"]) == {"tool_response": {"name": "get_weather", "content": "-3C"}}


@pytest.mark.parametrize(
    ("template", "output", "content"),
    [
        (QWEN, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         "Let me look."),
        (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
        (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),
        (MISTRAL, '[{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),  # the control token unprinted
        (FIREFUNCTION, 'Checking. functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]', "Checking."),
        (CHATML, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}', ""),
    ],
)  # fmt: skip
def test_each_familys_output_parses_whole_or_streamed_in_any_two_pieces(db, template, output, content):
    plan = plan_for(template, [WEATHER], "auto")
    for cut in range(len(output) + 1):
        reader = ReplyReader(plan, None)
        pieces = reader.feed(output[:cut]) + reader.feed(output[cut:]) + reader.finish()
        assert "".join(text for _, text in pieces).strip() == content, cut
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reader.calls] == [
            (CALL["name"], CALL["arguments"])
        ], cut


@pytest.mark.parametrize(
    ("template", "output"),
    [
        (QWEN, '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call>'),  # schema
        (QWEN, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'),  # cut short
        (QWEN, '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'),  # no such tool
        (LLAMA3, '{"name": "get_weather", "parameters": {"city": 3}}'),
        (MISTRAL, "[1, 2]"),
        (CHATML, '{"response": "It is sunny."}'),
        (QWEN, "No call here, only a < sign and <tool_ at the end <tool_"),
        (MISTRAL, '[{"name": ["get_weather"], "arguments": {}}]'),  # a name that is no name
        (LLAMA3, '{"name": "get_weather", "parameters": {"city": ' + "[" * 5000 + "]" * 5000 + "}}"),
        (CHATML, '{"tool_calls": [{"name": {"x": 1}, "arguments": {}}]}'),
    ],
)
def test_what_is_not_a_whole_valid_call_is_content_nothing_lost(db, template, output):
    plan = plan_for(template, [WEATHER], "auto")
    for cut in range(len(output) + 1):
        reader = ReplyReader(plan, None)
        pieces = reader.feed(output[:cut]) + reader.feed(output[cut:]) + reader.finish()
        text = "".join(t for _, t in pieces)
        assert not reader.calls
        assert text == (json.loads(output)["response"] if output.startswith('{"response"') else output), cut


def test_a_hermes_argument_may_hold_the_closing_tag(db):
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}\n</tool_call>'
    calls, content = plan_for(QWEN, [WEATHER], "auto").parse(text)
    assert calls == [{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}] and content == ""


def test_hermes_content_streams_before_the_call_and_a_partial_tag_is_held(db):
    reader = ReplyReader(plan_for(QWEN, [WEATHER], "auto"), None)
    assert reader.feed("Sure, <tool") == [("content", "Sure, ")]
    assert reader.feed("_call>\n") == []


def test_thinking_comes_out_first_then_calls(db):
    output = 'weigh it</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for cut in range(len(output) + 1):
        reader = ReplyReader(plan_for(QWEN, [WEATHER], "auto"), ThinkingSplitter(inside=True))
        pieces = reader.feed(output[:cut]) + reader.feed(output[cut:]) + reader.finish()
        assert "".join(t for k, t in pieces if k == "reasoning") == "weigh it"
        assert not "".join(t for k, t in pieces if k == "content").strip()
        assert len(reader.calls) == 1


@pytest.mark.parametrize("choice", ["auto", "required"])
@pytest.mark.parametrize("template", [QWEN, LLAMA3, MISTRAL, FIREFUNCTION, CHATML])
def test_every_familys_grammar_is_one_llama_cpp_parses(db, bundled_gguf, template, choice):
    sampling = Sampling()
    plan_for(template, [WEATHER], choice).constrain(sampling, thinking="maybe")
    grammar, root = framed_grammar(schema_grammar(sampling.json_schema, SchemaBounds()), sampling.grammar_open,
                             sampling.grammar_close, sampling.grammar_repeat)  # fmt: skip
    sampler = _VocabSampler(bundled_gguf).grammar(grammar, sampling.grammar_trigger, root)
    assert sampler
    llama_cpp.llama_sampler_free(sampler)


class _VocabSampler:
    """llama.cpp's grammar samplers on the bundled model's vocabulary (loaded alone: no weights)."""

    def __init__(self, path):
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def grammar(self, grammar: str, trigger: str, root: str = "root"):
        return LlamaRunner._grammar_sampler(self, grammar, trigger, root)

    def tokens(self, text: str) -> list[int]:
        buf = (llama_cpp.llama_token * 256)()
        n = llama_cpp.llama_tokenize(self.vocab, text.encode(), len(text.encode()), buf, 256, False, True)
        return list(buf[:n])

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def allowed(self, sampler) -> list[int]:
        """The tokens the sampler leaves possible, from a flat distribution over the whole vocabulary."""
        data = (llama_cpp.llama_token_data * self.n_vocab)(*[llama_cpp.llama_token_data(i, 0.0, 0.0)
                                                              for i in range(self.n_vocab)])  # fmt: skip
        array = llama_cpp.llama_token_data_array(data, self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return [data[i].id for i in range(array.size) if data[i].logit != float("-inf")]


def test_a_lazy_grammar_lets_text_through_until_the_trigger_then_holds_the_call(db, bundled_gguf):
    vocab = _VocabSampler(bundled_gguf)
    sampling = Sampling()
    plan_for(QWEN, [WEATHER], "auto").constrain(sampling)
    grammar, root = framed_grammar(schema_grammar(sampling.json_schema, SchemaBounds()), sampling.grammar_open,
                             sampling.grammar_close, sampling.grammar_repeat)  # fmt: skip
    sampler = vocab.grammar(grammar, sampling.grammar_trigger, root)
    try:
        for token in vocab.tokens("Let me check. "):
            llama_cpp.llama_sampler_accept(sampler, token)
        assert len(vocab.allowed(sampler)) > vocab.n_vocab // 2  # free text: the grammar waits
        for token in vocab.tokens("<tool_call>"):
            llama_cpp.llama_sampler_accept(sampler, token)
        allowed = vocab.allowed(sampler)
        assert allowed and all(vocab.piece(t).startswith("\n") for t in allowed)  # "<tool_call>\n{..." only
    finally:
        llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_model_free(vocab.model)


@pytest.mark.parametrize(
    ("template", "thinking"), [(QWEN, ""), (QWEN, "inside"), (LLAMA3, ""), (MISTRAL, ""), (FIREFUNCTION, "")]
)
def test_a_lazy_trigger_survives_a_very_long_output(db, bundled_gguf, template, thinking):
    """llama.cpp searches the whole output for the trigger after every token: 80,000 characters must not crash."""
    vocab = _VocabSampler(bundled_gguf)
    sampling = Sampling()
    plan_for(template, [WEATHER], "auto").constrain(sampling, thinking=thinking)
    grammar, root = framed_grammar(schema_grammar(sampling.json_schema, SchemaBounds()), sampling.grammar_open,
                                   sampling.grammar_close, sampling.grammar_repeat)  # fmt: skip
    sampler = vocab.grammar(grammar, sampling.grammar_trigger, root)
    try:
        tokens = vocab.tokens("=" * 4000)
        for _ in range(20):  # 80,000 characters into the trigger's buffer, searched after each token
            for token in tokens:
                llama_cpp.llama_sampler_accept(sampler, token)
        assert len(vocab.allowed(sampler)) > vocab.n_vocab // 2  # still waiting, still free
    finally:
        llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_model_free(vocab.model)


class _Runner(_VocabSampler):
    """What LlamaRunner's trigger check reads: the vocabulary, its tokenizer, and pieces with control tokens."""

    def __init__(self, path):
        super().__init__(path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        return _VocabSampler.piece(self, token).encode()

    _grammar_allows = LlamaRunner._grammar_allows


def _lazy(runner, template):
    sampling = Sampling()
    plan_for(template, [WEATHER], "auto").constrain(sampling)
    grammar, root = framed_grammar(schema_grammar(sampling.json_schema, SchemaBounds()), sampling.grammar_open,
                                   sampling.grammar_close, sampling.grammar_repeat)  # fmt: skip
    sampler = GrammarSampler()
    sampler.grammar = runner.grammar(grammar, sampling.grammar_trigger, root)
    sampler.grammar_text, sampler.root, sampler.trigger = grammar, root, re.compile(sampling.grammar_trigger)
    return sampler


def _token(runner, predicate):
    return next(t for t in range(runner.n_vocab) if predicate(runner.piece(t).decode("utf-8", "replace")))


def test_a_token_that_fires_a_trigger_into_text_the_grammar_refuses_is_never_taken(db, bundled_gguf):
    """llama.cpp aborts the process if the rest of a trigger-firing token does not fit the grammar: checked first."""
    runner = _Runner(bundled_gguf)
    llama3 = _lazy(runner, LLAMA3)
    assert not LlamaRunner._trigger_safe(runner, llama3, _token(runner, lambda p: p == "{}"))
    assert LlamaRunner._trigger_safe(runner, llama3, _token(runner, lambda p: p == "{"))
    assert LlamaRunner._trigger_safe(runner, llama3, _token(runner, lambda p: p == "Hello"))
    hermes = _lazy(runner, QWEN)
    hermes.waiting = "Let me check. <tool_call"
    odd_close = _token(runner, lambda p: len(p) == 2 and p[0] == ">" and p[1] not in "\n ")
    assert not LlamaRunner._trigger_safe(runner, hermes, odd_close)
    assert LlamaRunner._trigger_safe(runner, hermes, _token(runner, lambda p: p == ">"))
    assert LlamaRunner._trigger_safe(runner, hermes, _token(runner, lambda p: p == "."))  # no trigger at all
