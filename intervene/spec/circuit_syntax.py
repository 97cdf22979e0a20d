"""The syntax of circuit expressions: node expressions and edge statements, parsed with their
character offsets (so diagnostics can put a caret under the offending part of a string).

What it owns: the grammar and the parse tree. What the names mean (groups, patterns,
receivers), and whether the edges exist, is :mod:`intervene.spec.circuits`' business.

Grammar (whitespace is free between tokens)::

    nodes-item  := term ("," term)*
    edges-item  := "complement(" edges-item (";" edges-item)* ")"      # an edge complement
                 | term ("," term)* "->" term ("," term)*               # a statement
    term        := base port? positions?
    base        := "complement(" term ("," term)* ")" | atom
    atom        := ( [A-Za-z0-9_.*] | "{" ... "}" )+                    # a9.h9, a{0..5}.h*, name_movers
    port        := "<q>" | "<k>" | "<v>"
    positions   := "@" NAME | "@{" NAME ("," NAME)* "}"                  # @END, @{IO,END}, @S1+1

A ``complement(`` that starts an edges item is an edge complement when an ``->`` occurs
before its closing parenthesis, else a node complement (a sender).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Union

__all__ = ["CircuitSyntaxError", "Name", "Complement", "Term", "Statement", "EdgeComplement", "EdgeEntry",
           "Positions", "Port", "parse_nodes", "parse_edge"]

Port = Literal["q", "k", "v"]
Positions = tuple[str, ...]


class CircuitSyntaxError(ValueError):
    """A circuit expression that does not parse; ``offset``/``width`` locate it in the text."""

    def __init__(self, message: str, offset: int, width: int = 1, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.width, self.hint = message, offset, width, hint


@dataclass(frozen=True)
class Name:
    """A group name, a node name or pattern, ``input`` or ``logits``, as written."""

    text: str
    offset: int


@dataclass(frozen=True)
class Complement:
    """``complement(t1, t2, …)``: every head and MLP of the model except those named."""

    items: tuple[Term, ...]
    offset: int
    end: int


@dataclass(frozen=True)
class Term:
    """One node expression with its optional receiver port (``<q>``) and positions (``@END``).

    ``positions`` is sorted and without repeats; ``position_offsets`` keeps each name as
    written with its offset, for diagnostics."""

    base: Name | Complement
    text: str
    offset: int
    end: int
    port: Port | None = None
    port_offset: int = -1
    positions: Positions | None = None
    at_offset: int = -1
    position_offsets: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Statement:
    """``senders -> receivers``."""

    senders: tuple[Term, ...]
    receivers: tuple[Term, ...]
    text: str
    offset: int
    arrow: int
    end: int


@dataclass(frozen=True)
class EdgeComplement:
    """``complement(s1; s2; …)``: every edge of the model except those of the statements."""

    items: tuple[Union[Statement, EdgeComplement], ...]
    text: str
    offset: int
    end: int


EdgeEntry = Union[Statement, EdgeComplement]

_ATOM = re.compile(r"(?:[A-Za-z0-9_.*]|\{[^{}]*\})+")
_POSITION = re.compile(r"[A-Za-z0-9_]+(?:[+-][0-9]+)*")  # IO, END, S1+1 (the IOI token after S1)
_PORT = re.compile(r"<([qkv])>")
_COMPLEMENT = re.compile(r"complement\s*\(")
_SYNTAX_HINT = ("node expressions are names (a9.h9, m3, a*.h*, m{0..5}, a group), complement(...), "
                "with @END or @{IO,END} for positions")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def skip(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self, token: str) -> bool:
        self.skip()
        return self.s.startswith(token, self.i)

    def what(self) -> str:
        self.skip()
        if self.i >= len(self.s):
            return "the end"
        return '"->"' if self.s.startswith("->", self.i) else f'"{self.s[self.i]}"'

    def fail(self, message: str, hint: str | None = None, offset: int | None = None, width: int = 1) -> None:
        raise CircuitSyntaxError(message, self.i if offset is None else offset, width, hint)

    def done(self, edges: bool) -> None:
        self.skip()
        if self.i >= len(self.s):
            return
        if self.s.startswith("->", self.i) and edges:
            self.fail('an edges entry holds one statement: unexpected second "->"',
                      "write a -> b and b -> c as two entries (complement(a -> b; c -> d) excludes several)", width=2)
        if self.s.startswith("->", self.i):
            self.fail('unexpected "->": a node expression has no edges', "write edge statements under edges:",
                      width=2)
        self.fail(f"unexpected {self.what()}", _SYNTAX_HINT)

    # -- node expressions ------------------------------------------------------------------
    def terms(self) -> tuple[Term, ...]:
        items = [self.term()]
        while self.peek(","):
            self.i += 1
            items.append(self.term())
        return tuple(items)

    def term(self) -> Term:
        self.skip()
        start = self.i
        base: Name | Complement
        if _COMPLEMENT.match(self.s, self.i):
            base = self.node_complement()
        else:
            m = _ATOM.match(self.s, self.i)
            if not m:
                self.fail(f"expected a node, group or pattern, got {self.what()}", _SYNTAX_HINT)
            assert m is not None
            base = Name(m.group(), self.i)
            self.i = m.end()
        port: Port | None = None
        port_offset = -1
        if self.s.startswith("<", self.i):
            m = _PORT.match(self.s, self.i)
            if not m:
                close = self.s.find(">", self.i)
                self.fail("a receiver is written <q>, <k> or <v>", "e.g. name_movers<q>, a5.g1<k>",
                          width=(close - self.i + 1) if close > 0 else 1)
            assert m is not None
            port, port_offset, self.i = m.group(1), self.i, m.end()  # type: ignore[assignment]
        positions: Positions | None = None
        at_offset = -1
        named: list[tuple[str, int]] = []
        if self.s.startswith("@", self.i):
            at_offset = self.i
            self.i += 1
            if self.s.startswith("{", self.i):
                self.i += 1
                while True:
                    self.skip()
                    m = _POSITION.match(self.s, self.i)
                    if not m:
                        self.fail(f"expected a position name, got {self.what()}", "several positions: @{IO,END}")
                    assert m is not None
                    named.append((m.group(), self.i))
                    self.i = m.end()
                    if self.peek(","):
                        self.i += 1
                    elif self.peek("}"):
                        self.i += 1
                        break
                    else:
                        self.fail(f'expected "," or "}}" in positions, got {self.what()}',
                                  "several positions: @{IO,END}")
            else:
                m = _POSITION.match(self.s, self.i)
                if not m:
                    self.fail('expected a position name after "@"', "write a9.h9@END, or a9.h9@{IO,END} for several")
                assert m is not None
                named.append((m.group(), self.i))
                self.i = m.end()
            for p, off in named:
                if p == "all":
                    self.fail('"@all" is not a position', "leave out the @ to keep all positions", off, 3)
            positions = tuple(sorted(set(p for p, _ in named)))
            if self.s.startswith("<", self.i):
                base_text = self.s[start:at_offset]
                self.fail("the receiver goes before the position", f"write {base_text}<q>{self.s[at_offset:self.i]}")
        return Term(base, self.s[start:self.i], start, self.i, port, port_offset, positions, at_offset, tuple(named))

    def node_complement(self) -> Complement:
        start = self.i
        self.i = _COMPLEMENT.match(self.s, self.i).end()  # type: ignore[union-attr]
        if self.peek(")"):
            self.fail("complement() needs at least one node expression", "complement(name_movers, m*)")
        items = self.terms()
        if not self.peek(")"):
            self.fail(f'expected "," or ")" in complement(...), got {self.what()}', _SYNTAX_HINT)
        self.i += 1
        return Complement(items, start, self.i)

    # -- edges -----------------------------------------------------------------------------
    def holds_edges(self) -> bool:
        """Whether the ``complement(`` at the cursor encloses an edge statement."""
        m = _COMPLEMENT.match(self.s, self.i)
        assert m is not None
        depth, j = 1, m.end()
        while j < len(self.s) and depth:
            if self.s[j] == "(":
                depth += 1
            elif self.s[j] == ")":
                depth -= 1
            elif self.s.startswith("->", j):
                return True
            j += 1
        return False

    def edge(self) -> EdgeEntry:
        self.skip()
        start = self.i
        if _COMPLEMENT.match(self.s, self.i) and self.holds_edges():
            self.i = _COMPLEMENT.match(self.s, self.i).end()  # type: ignore[union-attr]
            items = [self.edge()]
            while self.peek(";"):
                self.i += 1
                items.append(self.edge())
            if not self.peek(")"):
                hint = ('separate edge statements with ";" inside complement(...)'
                        if self.peek(",") or self.peek("->") else None)
                self.fail(f'expected ";" or ")" in complement(...), got {self.what()}', hint)
            self.i += 1
            return EdgeComplement(tuple(items), self.s[start:self.i], start, self.i)
        senders = self.terms()
        if not self.peek("->"):
            self.fail(f'expected "->" after the senders, got {self.what()}', "an edge statement is senders -> "
                      "receivers, e.g. s_inhibition@END -> name_movers<q>")
        arrow = self.i
        self.i += 2
        receivers = self.terms()
        return Statement(senders, receivers, self.s[start:self.i], start, arrow, self.i)


def parse_nodes(text: str) -> tuple[Term, ...]:
    """Parse a ``nodes:`` (or group) item: one or more node expressions separated by commas.
    Raises :class:`CircuitSyntaxError`."""
    p = _Parser(text)
    out = p.terms()
    p.done(edges=False)
    return out


def parse_edge(text: str) -> EdgeEntry:
    """Parse an ``edges:`` item: ``senders -> receivers`` or ``complement(s1; s2; …)``.
    Raises :class:`CircuitSyntaxError`."""
    p = _Parser(text)
    out = p.edge()
    p.done(edges=True)
    return out
