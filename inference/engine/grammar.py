"""JSON schema -> GBNF grammar, checked before it can reach llama.cpp.

llama-cpp-python's converter asserts on what it does not support (an unknown `type`, a
`pattern` without ^...$, a `$ref` it cannot resolve) and expands repetition counts into
nested rules: `maxItems: 20000` becomes 20,000 nested groups, whose parse overflows the
stack and kills the process. So a schema is walked first, within bounds (size, depth,
repetition counts, pattern quantifiers), and every refusal names the keyword at fault as
a path (`response_format.json_schema.schema.properties.age.type`). Conversion runs on
the request's worker thread, never on the decode thread, and its result is cached.
"""

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from llama_cpp import llama_grammar

SCHEMA_PARAM = "response_format.json_schema.schema"
_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_QUANTIFIER = re.compile(r"\{(\d*)(?:,(\d*))?\}")


class SchemaRefused(ValueError):
    """The schema cannot become a grammar; `param` is the path of the keyword at fault."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SchemaBounds:
    max_bytes: int = 64 * 1024
    max_depth: int = 32
    max_repetitions: int = 2000
    max_grammar_bytes: int = 256 * 1024


MAX_AMBIGUOUS_STATES = 64


def _expanded_size(pattern: str, i: int, depth: int, path: str, bounds: SchemaBounds) -> tuple[int, int, int]:
    """(characters the converter writes for the pattern from `i` to its group's end, where that is, states).

    The converter writes a quantified piece out in full (`(ab){3}` as `ab ab ab`, `a{0,3}` as
    nested optionals), so nested quantifiers multiply: each quantifier is bounded, and so is
    the expanded total. `states` counts the places a character can stand in a variable-length
    part; a quantifier over such a part multiplies them, and llama.cpp's grammar sampler keeps
    one stack per place for every candidate token: `^((a{0,10}){0,10}){0,10}$` is 337 bytes of
    grammar and stalls the decode thread for minutes. So the product is bounded too.
    """
    if depth > 64:
        raise SchemaRefused("'pattern' nests groups deeper than 64", path)
    total = states = 0
    while i < len(pattern):
        char = pattern[i]
        if char == ")":
            return total, i + 1, states
        unit_states = 0
        if char == "(":
            unit, i, unit_states = _expanded_size(pattern, i + 1, depth + 1, path, bounds)
        elif char == "\\":
            unit, i = 1, i + 2
        elif char == "[":
            j = i + 1
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            unit, i = 1, j + 1
        else:
            unit, i = 1, i + 1
        low, high, end = _quantifier(pattern, i)
        if end > i:
            count = max(low, high if high is not None else low)
            if count > bounds.max_repetitions:
                raise SchemaRefused(
                    f"'pattern' repeats {count} times; the limit is {bounds.max_repetitions} "
                    "(JSON_SCHEMA_MAX_REPETITIONS)",
                    path,
                )
            unit *= max(count, 1)
            nested = unit_states > 0 and count > 1
            if nested:
                unit_states *= count
            elif high != low:  # a variable count over fixed content: one place per count, no more
                unit_states = max(count, 1)
            if nested and unit_states > MAX_AMBIGUOUS_STATES:
                raise SchemaRefused(
                    "'pattern' nests a repetition inside a repetition (like (a{0,10}){0,10}), which makes "
                    f"{unit_states} ways to read one string, over the {MAX_AMBIGUOUS_STATES} the grammar sampler "
                    "can follow at speed; write it with one level of repetition",
                    path,
                )
            i = end
        total += unit
        states += unit_states
        if total > bounds.max_grammar_bytes:
            raise SchemaRefused(
                f"'pattern' expands past {bounds.max_grammar_bytes} characters of grammar (nested quantifiers "
                "multiply; GRAMMAR_MAX_BYTES)",
                path,
            )
    return total, i, states


def _quantifier(pattern: str, i: int) -> tuple[int, int | None, int]:
    """(min, max or None for unbounded, end) of a quantifier at `i`; end == i when there is none."""
    if i >= len(pattern):
        return 1, 1, i
    char = pattern[i]
    lazy = 1 if i + 1 < len(pattern) and pattern[i + 1] == "?" and char in "*+?}" else 0
    if char == "*":
        return 0, None, i + 1 + lazy
    if char == "+":
        return 1, None, i + 1 + lazy
    if char == "?":
        return 0, 1, i + 1 + lazy
    if (match := _QUANTIFIER.match(pattern, i)) is not None:
        low = int(match.group(1) or 0)
        if match.group(2) is None and "," not in match.group(0):
            return low, low, match.end()
        return low, int(match.group(2)) if match.group(2) else None, match.end()
    return 1, 1, i


def _check_pattern(pattern: Any, path: str, bounds: SchemaBounds) -> None:
    if not isinstance(pattern, str):
        raise SchemaRefused("'pattern' must be a string", path)
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise SchemaRefused("'pattern' must be anchored: start with ^ and end with $", path)
    _expanded_size(pattern, 0, 0, path, bounds)
    try:
        llama_grammar.json_schema_to_gbnf(json.dumps({"type": "string", "pattern": pattern}))
    except Exception as exc:
        raise SchemaRefused(f"'pattern' is not supported by the grammar converter: {exc}", path) from exc


def _resolve(root: dict[str, Any], ref: Any, path: str) -> None:
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise SchemaRefused("'$ref' must point inside this schema ('#/$defs/...'); remote refs are not fetched", path)
    target: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, dict) or part not in target:
            raise SchemaRefused(f"'$ref' {ref!r} does not resolve inside the schema", path)
        target = target[part]


def _walk(root: dict[str, Any], node: Any, path: str, depth: int, bounds: SchemaBounds) -> None:
    if depth > bounds.max_depth:
        raise SchemaRefused(f"the schema nests deeper than {bounds.max_depth} (JSON_SCHEMA_MAX_DEPTH)", path)
    if not isinstance(node, dict):
        raise SchemaRefused("a schema must be a JSON object", path)
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if (not kinds and "type" in node) or any(k not in _TYPES for k in kinds):
        raise SchemaRefused(f"unsupported 'type' {kind!r}; use one of {', '.join(sorted(_TYPES))}", f"{path}.type")
    for key in _COUNTS:
        if key in node:
            value = node[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SchemaRefused(f"'{key}' must be a non-negative integer", f"{path}.{key}")
            if value > bounds.max_repetitions:
                raise SchemaRefused(
                    f"'{key}' is {value}; the limit is {bounds.max_repetitions} (JSON_SCHEMA_MAX_REPETITIONS)",
                    f"{path}.{key}",
                )
    for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
        if low in node and high in node and node[low] > node[high]:
            raise SchemaRefused(f"'{low}' is larger than '{high}'", f"{path}.{low}")
    if "pattern" in node:
        _check_pattern(node["pattern"], f"{path}.pattern", bounds)
    if "$ref" in node:
        _resolve(root, node["$ref"], f"{path}.$ref")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise SchemaRefused("'enum' must be a non-empty list", f"{path}.enum")
    if "required" in node and (
        not isinstance(node["required"], list) or not all(isinstance(r, str) for r in node["required"])
    ):
        raise SchemaRefused("'required' must be a list of property names", f"{path}.required")
    for key in _SUBSCHEMA_MAPS:
        if key in node:
            if not isinstance(node[key], dict):
                raise SchemaRefused(f"'{key}' must be an object of schemas", f"{path}.{key}")
            for name, sub in node[key].items():
                _walk(root, sub, f"{path}.{key}.{name}", depth + 1, bounds)
    for key in _SUBSCHEMA_LISTS:
        if key in node:
            if not isinstance(node[key], list) or not node[key]:
                raise SchemaRefused(f"'{key}' must be a non-empty list of schemas", f"{path}.{key}")
            for i, sub in enumerate(node[key]):
                _walk(root, sub, f"{path}.{key}[{i}]", depth + 1, bounds)
    if "items" in node:
        items = node["items"]
        for i, sub in enumerate(items) if isinstance(items, list) else [(None, items)]:
            _walk(root, sub, f"{path}.items" + (f"[{i}]" if i is not None else ""), depth + 1, bounds)
    extra = node.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        _walk(root, extra, f"{path}.additionalProperties", depth + 1, bounds)


def check_schema(schema: dict[str, Any], bounds: SchemaBounds, param: str = SCHEMA_PARAM) -> None:
    """Refuse (SchemaRefused) a schema that is too large or deep, or that the converter cannot take."""
    size = len(json.dumps(schema))
    if size > bounds.max_bytes:
        message = f"the schema is {size} bytes; the limit is {bounds.max_bytes} (JSON_SCHEMA_MAX_BYTES)"
        raise SchemaRefused(message, param)
    _walk(schema, schema, param, 0, bounds)


@lru_cache(maxsize=256)
def _convert(schema_json: str, bounds: SchemaBounds, param: str) -> str:
    schema = json.loads(schema_json)
    if schema == {}:
        return llama_grammar.JSON_GBNF
    check_schema(schema, bounds, param)
    try:
        grammar = llama_grammar.json_schema_to_gbnf(schema_json)
    except Exception as exc:  # anything the walk did not foresee is still the schema's fault
        raise SchemaRefused(f"the schema cannot be turned into a grammar: {type(exc).__name__}: {exc}", param) from exc
    if len(grammar) > bounds.max_grammar_bytes:
        raise SchemaRefused(
            f"the schema's grammar is {len(grammar)} bytes; the limit is {bounds.max_grammar_bytes} "
            "(GRAMMAR_MAX_BYTES): simplify the schema",
            param,
        )
    return grammar


def schema_grammar(schema: dict[str, Any], bounds: SchemaBounds, param: str = SCHEMA_PARAM) -> str:
    """The GBNF text for `schema` ({} = any JSON value); SchemaRefused naming the keyword at fault."""
    # In the schema's own key order: the converter keeps it, so the model writes properties in the order
    # they were declared (and told), not alphabetically.
    return _convert(json.dumps(schema), bounds, param)


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes as JSON does


def _free_rule_name(grammar: str, base: str) -> str:
    names = {line.split("::=", 1)[0].strip() for line in grammar.splitlines() if "::=" in line}
    name, n = base, 0
    while name in names:  # the converter names rules after properties: any name can be taken
        n += 1
        name = f"{base}-{n}"
    return name


def framed_grammar(grammar: str, open_: str, close: str, repeat: int) -> tuple[str, str]:
    """(grammar, root rule): `grammar`'s value framed, `open value close`, up to `repeat` times, one per line.

    Unchanged, with root "root", without a frame. The value's own rules stay as they are.
    """
    if not open_ and not close and repeat <= 1:
        return grammar, "root"
    root = _free_rule_name(grammar, "framed")
    one = " ".join(
        part for part in (_literal(open_) if open_ else "", "root", _literal(close) if close else "") if part
    )
    rule = f"{root} ::= {one}" + (f' ("\\n" {one}){{0,{repeat - 1}}}' if repeat > 1 else "")
    return f"{grammar}\n{rule}\n", root
