"""The library's exceptions, the closed list of spec error codes, and diagnostics.

This module owns the closed list of spec error codes (:class:`ErrorCode`, documented one by
one in ``docs/errors.md``; a test keeps the two equal), the :class:`Diagnostic` that every
stage uses to say *where* a spec is wrong, and the exceptions, all under one root
(:class:`InterveneError`, so ``except intervene.InterveneError`` catches anything the library
raises on purpose):

* :class:`SpecError` -- the spec (or a file it names) is wrong. Holds every problem found,
  each a :class:`Diagnostic` with ``file:line:col``; ``str()`` prints them all, with the
  source line and a caret under the offending value when the file text is known.
* :class:`UsageError` -- the Python API was called wrongly (a bug in the caller's code, not
  in a spec file).
* :class:`ExecutionError` -- a compiled program could not run; names the op and the spec
  line it came from (``while executing a9.h9@* ← corrupted[i] (specs/ioi.yaml:14)``). The
  checks before the first forward pass (:mod:`intervene.bind`) refuse every spec that would
  hit one, so it means a bug, not a bad spec.
* ``ModelLoadError`` (in :mod:`intervene.models.loading`) -- the model could not be loaded.

No dependencies: every layer may import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum


class ErrorCode(str, Enum):
    """Closed list of spec error codes. The value is the code; :attr:`slug` names it."""

    # Reading the file and its shape.
    E001 = "E001"  # yaml-syntax
    E002 = "E002"  # unknown-field
    E003 = "E003"  # missing-field
    E004 = "E004"  # bad-type
    E005 = "E005"  # bad-value
    E006 = "E006"  # unknown-kind
    E007 = "E007"  # duplicate-key
    E008 = "E008"  # toml-syntax
    E009 = "E009"  # unsupported-file-type
    # Cross references and the model.
    E010 = "E010"  # unknown-dataset
    E011 = "E011"  # unknown-node
    E012 = "E012"  # layer-out-of-range
    E013 = "E013"  # head-out-of-range
    E014 = "E014"  # unknown-position
    E015 = "E015"  # not-single-token
    E016 = "E016"  # unknown-answer
    E017 = "E017"  # bad-expression
    E018 = "E018"  # duplicate-name
    E019 = "E019"  # unsupported-model
    E020 = "E020"  # file-not-found
    E021 = "E021"  # bad-dataset-file
    E022 = "E022"  # wrong-dataset-kind
    # Circuits (intervene.spec.circuits).
    E023 = "E023"  # unknown-name
    E024 = "E024"  # group-cycle
    E025 = "E025"  # bad-circuit-expression
    E026 = "E026"  # not-an-edge
    E027 = "E027"  # conflicting-positions
    E028 = "E028"  # empty-circuit
    E029 = "E029"  # unknown-circuit
    # Hypotheses (intervene.spec.hypotheses).
    E030 = "E030"  # unknown-interpretation-node
    E031 = "E031"  # interpretation-cycle
    E032 = "E032"  # unread-interpretation-node
    E033 = "E033"  # bad-feature
    E034 = "E034"  # unknown-hypothesis
    E035 = "E035"  # claim-not-upstream
    E036 = "E036"  # path-claimed-twice
    # Loading the model (intervene.models).
    E040 = "E040"  # unsupported-configuration
    # Binding the spec to the model's data (intervene.bind): what running would refuse.
    E041 = "E041"  # token-length-mismatch
    E042 = "E042"  # source-too-short
    E043 = "E043"  # no-resample-candidate
    E044 = "E044"  # unaligned-mean
    E045 = "E045"  # bad-vector
    E046 = "E046"  # unknown-row
    # Command-line changes to a spec (intervene.spec.overrides).
    E050 = "E050"  # bad-override
    E051 = "E051"  # unknown-experiment
    # Hostile and careless input (the readers, intervene.outputs, intervene.guards).
    E060 = "E060"  # too-large
    E061 = "E061"  # not-text
    E062 = "E062"  # yaml-tag
    E063 = "E063"  # bad-output-path
    E064 = "E064"  # output-is-input
    E065 = "E065"  # path-outside-spec
    E066 = "E066"  # user-code-failed
    E067 = "E067"  # non-finite-metric
    E068 = "E068"  # example-too-long
    # Discovery (intervene.spec.discovery, intervene.discover).
    E080 = "E080"  # setting-not-for-method
    E081 = "E081"  # missing-setting
    E082 = "E082"  # not-differentiable
    E083 = "E083"  # source-not-for-method
    # Devices, memory and workers (intervene.devices, intervene.memory, intervene.distributed).
    E090 = "E090"  # bad-device
    E091 = "E091"  # bad-device-map
    E092 = "E092"  # bad-memory-cap
    E093 = "E093"  # ray-unavailable
    # Recording (intervene.spec.record, intervene.record).
    E100 = "E100"  # empty-record
    E101 = "E101"  # no-attention-pattern
    E102 = "E102"  # duplicate-record-run
    E103 = "E103"  # table-needs-answers
    E104 = "E104"  # record-too-large
    E105 = "E105"  # not-recordable
    # User functions, per-experiment metrics, multi-token answers (intervene.functions, intervene.metrics).
    E110 = "E110"  # function-not-importable
    E111 = "E111"  # function-failed
    E112 = "E112"  # bad-function-result
    E113 = "E113"  # metric-not-for-experiment
    # Sparse autoencoders (intervene.sae).
    E120 = "E120"  # sae-not-found
    E121 = "E121"  # bad-sae-config
    E122 = "E122"  # unsupported-sae
    E123 = "E123"  # sae-size-mismatch
    E124 = "E124"  # bad-sae-site
    E125 = "E125"  # no-sae-at-site
    E126 = "E126"  # latent-out-of-range
    E127 = "E127"  # sae-unsupported-use
    # Per-token sweeps (per_position: tokens).
    E130 = "E130"  # tokens-with-positions
    E131 = "E131"  # tokens-with-continuation

    @property
    def slug(self) -> str:
        """The short name printed after the code, e.g. ``head-out-of-range``."""
        return _SLUGS[self]

    @classmethod
    def from_slug(cls, slug: str) -> ErrorCode:
        """The code whose slug is ``slug`` (raises :class:`KeyError` if there is none)."""
        for code, s in _SLUGS.items():
            if s == slug:
                return code
        raise KeyError(slug)

    def __str__(self) -> str:
        return self.value


_SLUGS: dict[ErrorCode, str] = {
    ErrorCode.E001: "yaml-syntax",
    ErrorCode.E002: "unknown-field",
    ErrorCode.E003: "missing-field",
    ErrorCode.E004: "bad-type",
    ErrorCode.E005: "bad-value",
    ErrorCode.E006: "unknown-kind",
    ErrorCode.E007: "duplicate-key",
    ErrorCode.E008: "toml-syntax",
    ErrorCode.E009: "unsupported-file-type",
    ErrorCode.E010: "unknown-dataset",
    ErrorCode.E011: "unknown-node",
    ErrorCode.E012: "layer-out-of-range",
    ErrorCode.E013: "head-out-of-range",
    ErrorCode.E014: "unknown-position",
    ErrorCode.E015: "not-single-token",
    ErrorCode.E016: "unknown-answer",
    ErrorCode.E017: "bad-expression",
    ErrorCode.E018: "duplicate-name",
    ErrorCode.E019: "unsupported-model",
    ErrorCode.E020: "file-not-found",
    ErrorCode.E021: "bad-dataset-file",
    ErrorCode.E022: "wrong-dataset-kind",
    ErrorCode.E023: "unknown-name",
    ErrorCode.E024: "group-cycle",
    ErrorCode.E025: "bad-circuit-expression",
    ErrorCode.E026: "not-an-edge",
    ErrorCode.E027: "conflicting-positions",
    ErrorCode.E028: "empty-circuit",
    ErrorCode.E029: "unknown-circuit",
    ErrorCode.E030: "unknown-interpretation-node",
    ErrorCode.E031: "interpretation-cycle",
    ErrorCode.E032: "unread-interpretation-node",
    ErrorCode.E033: "bad-feature",
    ErrorCode.E034: "unknown-hypothesis",
    ErrorCode.E035: "claim-not-upstream",
    ErrorCode.E036: "path-claimed-twice",
    ErrorCode.E040: "unsupported-configuration",
    ErrorCode.E041: "token-length-mismatch",
    ErrorCode.E042: "source-too-short",
    ErrorCode.E043: "no-resample-candidate",
    ErrorCode.E044: "unaligned-mean",
    ErrorCode.E045: "bad-vector",
    ErrorCode.E046: "unknown-row",
    ErrorCode.E050: "bad-override",
    ErrorCode.E051: "unknown-experiment",
    ErrorCode.E060: "too-large",
    ErrorCode.E061: "not-text",
    ErrorCode.E062: "yaml-tag",
    ErrorCode.E063: "bad-output-path",
    ErrorCode.E064: "output-is-input",
    ErrorCode.E065: "path-outside-spec",
    ErrorCode.E066: "user-code-failed",
    ErrorCode.E067: "non-finite-metric",
    ErrorCode.E068: "example-too-long",
    ErrorCode.E080: "setting-not-for-method",
    ErrorCode.E081: "missing-setting",
    ErrorCode.E082: "not-differentiable",
    ErrorCode.E083: "source-not-for-method",
    ErrorCode.E090: "bad-device",
    ErrorCode.E091: "bad-device-map",
    ErrorCode.E092: "bad-memory-cap",
    ErrorCode.E093: "ray-unavailable",
    ErrorCode.E100: "empty-record",
    ErrorCode.E101: "no-attention-pattern",
    ErrorCode.E102: "duplicate-record-run",
    ErrorCode.E103: "table-needs-answers",
    ErrorCode.E104: "record-too-large",
    ErrorCode.E105: "not-recordable",
    ErrorCode.E110: "function-not-importable",
    ErrorCode.E111: "function-failed",
    ErrorCode.E112: "bad-function-result",
    ErrorCode.E113: "metric-not-for-experiment",
    ErrorCode.E120: "sae-not-found",
    ErrorCode.E121: "bad-sae-config",
    ErrorCode.E122: "unsupported-sae",
    ErrorCode.E123: "sae-size-mismatch",
    ErrorCode.E124: "bad-sae-site",
    ErrorCode.E125: "no-sae-at-site",
    ErrorCode.E126: "latent-out-of-range",
    ErrorCode.E127: "sae-unsupported-use",
    ErrorCode.E130: "tokens-with-positions",
    ErrorCode.E131: "tokens-with-continuation",
}


EXCERPT = 100
"""At most this many characters of a source line are printed under a diagnostic."""


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec: where (1-based ``line``/``col``), what (``code``), and a fix.

    ``field`` is the dotted path of the offending value (``experiments[0].targets``), ``value``
    the value found there. ``end_col`` (optional) is the column just past the value on the
    same line; it sets the caret width when printing.
    """

    file: str
    line: int
    col: int
    code: ErrorCode
    field: str
    value: object
    message: str
    hint: str | None = None
    end_col: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """``(code, line, col)``: what tests compare."""
        return (self.code.value, self.line, self.col)

    def format(self, source: str | None = None) -> str:
        """``file:line:col: CODE slug at field: message``, then the source line with a caret
        under the value (when ``source``, the file's text, is given), then the hint. A spec
        built in Python has no lines (``line`` 0): ``<spec>: CODE slug at field: message``."""
        where = f" at {self.field}" if self.field else ""
        place = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        out = [f"{place}: {self.code.value} {self.code.slug}{where}: {self.message}"]
        lines = source.splitlines() if source is not None else []
        if 1 <= self.line <= len(lines):
            text = lines[self.line - 1].rstrip()
            width = self._caret_width(text)
            indent = min(len(text) - len(text.lstrip()), self.col - 1)  # print the line dedented
            start = indent if len(text) - indent <= EXCERPT else max(indent, self.col - 1 - EXCERPT // 3)
            shown = "".join(c if c.isprintable() else "?" for c in text[start:start + EXCERPT])  # never a whole
            lead = "…" if start > indent else ""  # long line (a data file's secrets), never terminal controls
            out.append("    " + lead + shown + ("…" if start + EXCERPT < len(text) else ""))
            width = max(1, min(width, start + EXCERPT - (self.col - 1)))
            out.append("    " + " " * (self.col - 1 - start + len(lead)) + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def _caret_width(self, text: str) -> int:
        start = self.col - 1
        if self.end_col is not None and self.end_col > self.col:
            return min(self.end_col, len(text) + 1) - self.col or 1
        rest = text[start:]
        for candidate in (repr(self.value), f'"{self.value}"', str(self.value)):
            if candidate and rest.startswith(candidate):
                return len(candidate)
        return 1


class InterveneError(Exception):
    """The root of every exception intervene raises on purpose."""


class SpecError(InterveneError):
    """The spec is wrong. ``diagnostics`` lists every problem found, in file order.

    ``partial`` is the spec object when the file was well-formed but failed cross-reference
    checks, so that later checks (against the model) can still run and be reported together.
    """

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None,
                 partial: object | None = None) -> None:
        self.diagnostics: list[Diagnostic] = sorted(diagnostics, key=lambda d: (d.file, d.line, d.col))
        self.sources: dict[str, str] = dict(sources or {})
        self.partial = partial
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(d.format(self.sources.get(d.file)) for d in self.diagnostics)

    @property
    def codes(self) -> list[ErrorCode]:
        """The codes of all diagnostics, in file order."""
        return [d.code for d in self.diagnostics]


class UsageError(InterveneError):
    """The Python API was misused (wrong argument types, calls in the wrong order, ...)."""


class ExecutionError(InterveneError, RuntimeError):
    """A compiled program could not run on these data.

    ``op`` is the op (or run) being executed, as the program prints it, and ``origin`` the
    spec line it came from (``specs/ioi.yaml:14``); both optional, so ``ExecutionError(message)``
    works too. ``str()`` is the message, then ``while executing <op> (<origin>)``.
    """

    def __init__(self, message: str, op: object | None = None, origin: str | None = None) -> None:
        self.message = message
        self.op = None if op is None else str(op)
        self.origin = origin or None
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.op is None and self.origin is None:
            return self.message
        where = f" ({self.origin})" if self.origin else ""
        return f"{self.message}\n  while executing {self.op or 'the program'}{where}"
