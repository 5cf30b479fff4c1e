"""The `$filter` expressions of GetImages / GetImageCount over image metadata. Pure.

The spec (training-v3.3.json, parameter `$filter` of GetImages and GetImageCount): "An
expression to filter the images against image metadata. ... The expression supports eq
(Equal), ne (Not equal), and (Logical and), or (Logical or) operators. Here is an example,
metadata=key1 eq 'value1' and key2 ne 'value2'."

Rules (OData's, where the spec is silent; each marked inferred):
- expression := term ("or" term)* ; term := factor ("and" factor)* ;
  factor := "(" expression ")" | KEY ("eq" | "ne") STRING. `and` binds tighter than `or`
  (OData precedence; inferred), parentheses group.
- KEY: letters, digits, `_`, `-` and `.`, not starting with a digit (an OData member name;
  inferred). Keywords are lower case, as the spec writes them (inferred).
- STRING: single quotes; a quote inside is doubled (`'O''Brien'`), as OData literals are.
- `k eq 'v'` is true when the image has key k with value v (case-sensitive, inferred);
  `k ne 'v'` is true when it has no key k or another value (OData: null ne 'v'; inferred).
- Anything else (unknown operator, unterminated string, a value without quotes, a dangling
  `and`, unbalanced parentheses, an empty expression) raises FilterError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["And", "Compare", "Expr", "FilterError", "Or", "parse"]

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<string>'(?:[^']|'')*')|(?P<word>[A-Za-z_][\w.\-]*)"
    r"|(?P<bad>\S))"
)


class FilterError(ValueError):
    """A `$filter` expression the service would refuse; the message names the problem."""


@dataclass(frozen=True)
class Compare:
    """`key eq 'value'` or `key ne 'value'`."""

    key: str
    op: str  # "eq" | "ne"
    value: str

    def matches(self, metadata: Mapping[str, str]) -> bool:
        """Return True when the image's metadata satisfies the comparison."""
        found = metadata.get(self.key)
        return found == self.value if self.op == "eq" else found != self.value


@dataclass(frozen=True)
class And:
    """Every part holds."""

    parts: tuple[Expr, ...]

    def matches(self, metadata: Mapping[str, str]) -> bool:
        """Return True when every part matches."""
        return all(part.matches(metadata) for part in self.parts)


@dataclass(frozen=True)
class Or:
    """Some part holds."""

    parts: tuple[Expr, ...]

    def matches(self, metadata: Mapping[str, str]) -> bool:
        """Return True when any part matches."""
        return any(part.matches(metadata) for part in self.parts)


Expr = Compare | And | Or


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:  # pragma: no cover - `bad` catches all
            raise FilterError(f"unexpected text at position {position}")
        kind = match.lastgroup
        if kind == "bad":
            if match.group(kind) == "'":
                raise FilterError("a quoted value is not closed")
            raise FilterError(f"unexpected character {match.group(kind)!r}")
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterError("the expression ends too early")
        self.at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token == ("word", word):
            self.at += 1
            return True
        return False

    def expression(self) -> Expr:
        parts = [self.term()]
        while self.keyword("or"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self) -> Expr:
        parts = [self.factor()]
        while self.keyword("and"):
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self) -> Expr:
        kind, text = self.take()
        if kind == "open":
            inner = self.expression()
            if self.take()[0] != "close":
                raise FilterError("a parenthesis is not closed")
            return inner
        if kind != "word" or text in ("and", "or", "eq", "ne"):
            raise FilterError(f"expected a metadata key, got {text!r}")
        op_kind, op = self.take()
        if op_kind != "word" or op not in ("eq", "ne"):
            raise FilterError(f"expected eq or ne after {text!r}, got {op!r}")
        value_kind, value = self.take()
        if value_kind != "string":
            raise FilterError(f"the value compared with {text!r} must be in single quotes")
        return Compare(text, op, value[1:-1].replace("''", "'"))


def parse(text: str) -> Expr:
    """Return the expression `text` holds; raise FilterError when it is malformed."""
    parser = _Parser(_tokens(text))
    if parser.peek() is None:
        raise FilterError("the expression is empty")
    expr = parser.expression()
    left = parser.peek()
    if left is not None:
        raise FilterError(f"unexpected {left[1]!r} after a complete expression")
    return expr
