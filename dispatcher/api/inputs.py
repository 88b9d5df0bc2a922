"""Reading what a client sends, whatever it sends: headers, parameters and
JSON bodies become values or a 4xx naming the field at fault, never a 500.

Bodies: ``application/json`` in UTF-8 (415 otherwise), at most
MAX_BODY_BYTES (413), read within the body timeout (408), nested at most
MAX_DEPTH deep, integers of at most MAX_INT_DIGITS digits (checked before
Python's int() sees them), finite numbers only, no lone surrogates.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from dispatcher.api.models import PATTERN_MEANINGS, InvalidFields
from dispatcher.api.problems import ApiError, invalid

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 20
MAX_NUMBER_CHARS = 40
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class _Unacceptable(ValueError):
    """A JSON text we refuse although json.loads would take it."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Unacceptable(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Unacceptable(f"a number written with more than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Unacceptable("a number beyond what a double holds")
    return value


def _constant(text: str) -> Any:
    raise _Unacceptable(f"{text} is not JSON")


def _check_tree(value: Any, check_strings: bool) -> None:
    """Depth at most MAX_DEPTH; with check_strings, no string (key or value)
    holds a lone surrogate: not Unicode, it could not be stored."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            raise _Unacceptable(f"nested more than {MAX_DEPTH} deep")
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif check_strings and isinstance(item, str) and not _is_utf8(item):
            raise _Unacceptable("a string with a lone surrogate (\\ud800-\\udfff)")


def parse_json(raw: bytes) -> Any:
    """The body's JSON value, or a 400 naming the body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("body", "not UTF-8", "the body is not valid JSON") from None
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
        _check_tree(value, bool(_SURROGATE_ESCAPE.search(text)))
    except RecursionError:
        raise invalid("body", f"nested more than {MAX_DEPTH} deep", "the body is not acceptable JSON") from None
    except _Unacceptable as e:
        raise invalid("body", str(e), "the body is not acceptable JSON") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise invalid("body", f"not JSON: {e}", "the body is not valid JSON") from None
    return value


async def read_json(request: web.Request, timeout_s: float) -> tuple[Any, int]:
    """Checks the content type and size, reads the body within
    ``timeout_s`` and parses it; returns the value and the body's size."""
    if request.content_type != "application/json":
        raise ApiError(415, "send the body as JSON", [("Content-Type", "must be application/json")])
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "send the body as JSON in UTF-8", [("Content-Type", f"charset {charset!r}: only utf-8")])
    too_big = ApiError(413, "the body is too large", [("body", f"at most {MAX_BODY_BYTES} bytes")])
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_big
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "the body did not arrive in time",
                       [("body", f"must arrive within {timeout_s:g} s of the headers")]) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_big from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_big
    return parse_json(raw), len(raw)


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (field, problem), fields as dotted paths."""
    out = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        problem = e["msg"].removeprefix("Value error, ")
        pattern = (e.get("ctx") or {}).get("pattern")
        if e["type"] == "string_pattern_mismatch" and pattern in PATTERN_MEANINGS:
            problem = PATTERN_MEANINGS[pattern]
        out.append((where, problem))
    return out


def validate(model: type[BaseModel], value: Any) -> BaseModel:
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise ApiError(400, "invalid request", problems(e)) from None
    except InvalidFields as e:
        raise ApiError(400, "invalid request", e.problems) from None


def header_text(request: web.Request, name: str) -> str | None:
    """A header's value; a 400 naming it when its bytes are not UTF-8
    (aiohttp hands such bytes over as lone surrogates)."""
    value = request.headers.get(name)
    if value is not None and not _is_utf8(value):
        raise invalid(name, "not UTF-8")
    return value


def check_headers(request: web.Request) -> None:
    """Every header is UTF-8; a 400 naming the first that is not."""
    for name, value in request.headers.items():
        if not _is_utf8(value) or not _is_utf8(name):
            raise invalid(name if _is_utf8(name) else "headers", "not UTF-8")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- parameters (path, query, header): each is declared once, with the
# JSON Schema the document shows and the check the handler runs ---

Where = Literal["path", "query", "header"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: Where
    kind: Literal["string", "integer", "number"]
    description: str
    required: bool = True
    default: Any = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    examples: tuple[Any, ...] = field(default=())

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        for key, value in (("pattern", self.pattern), ("minLength", self.min_length),
                           ("maxLength", self.max_length), ("minimum", self.minimum),
                           ("maximum", self.maximum), ("default", self.default)):
            if value is not None:
                out[key] = value
        return out

    def read(self, request: web.Request) -> Any:
        """The parameter's value as the handler gets it, or a 400 naming it."""
        if self.where == "path":
            raw: str | None = request.match_info.get(self.name)
        elif self.where == "query":
            values = request.query.getall(self.name, [])
            if len(values) > 1:
                raise invalid(self.name, "given more than once")
            raw = values[0] if values else None
        else:
            raw = header_text(request, self.name)
        if raw is None:
            if self.required:
                raise invalid(self.name, "required")
            return self.default
        if not _is_utf8(raw):
            raise invalid(self.name, "not UTF-8")
        if self.kind == "string":
            return self._string(raw)
        return self._number(raw)

    def _string(self, raw: str) -> str:
        if self.min_length is not None and len(raw) < self.min_length:
            raise invalid(self.name, f"at least {self.min_length} characters")
        if self.max_length is not None and len(raw) > self.max_length:
            raise invalid(self.name, f"at most {self.max_length} characters")
        if self.pattern is not None and not re.search(self.pattern, raw):
            raise invalid(self.name, PATTERN_MEANINGS.get(self.pattern, f"must match {self.pattern}"))
        return raw

    def _number(self, raw: str) -> int | float:
        what = "an integer" if self.kind == "integer" else "a number"
        if len(raw) > MAX_NUMBER_CHARS or not JSON_NUMBER.fullmatch(raw):
            raise invalid(self.name, f"must be {what}")
        value = float(raw)
        if not math.isfinite(value) or (self.kind == "integer" and not value.is_integer()):
            raise invalid(self.name, f"must be {what}")
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            raise invalid(self.name, f"must be between {self.minimum:g} and {self.maximum:g}")
        return int(value) if self.kind == "integer" else value
