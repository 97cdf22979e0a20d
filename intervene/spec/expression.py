"""Expression metrics: a safe arithmetic language over answer names, parsed with sympy.

What it owns: :func:`parse_expression` (``"IO - S"`` -> a sympy expression whose symbols are
answer names), the :class:`ExpressionError` it raises, the allowed functions
(:data:`EXPRESSION_FUNCTIONS`), and the diagnostics pointing into an expression string. Text is
vetted with :mod:`ast` before sympy sees it, and is never ``eval``'d. The names stay importable
from :mod:`intervene.spec.check` and :mod:`intervene.spec`.

Vetting bounds the work sympy will do: an expression longer than :data:`MAX_CHARS` or with
more than :data:`MAX_OPS` operations is refused (``E060``), and every constant part is folded
in floating point first, so a tower such as ``9**9**9`` (which sympy would evaluate as an exact
integer of hundreds of millions of digits) is refused as too large (``E060``) and ``1/0`` or
``log(0)`` as undefined (``E017``) before sympy sees it.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import at, offset_in
from intervene.spec.source_map import Loc, SourceMap

__all__ = ["EXPRESSION_FUNCTIONS", "ExpressionError", "parse_expression", "expression_diagnostic", "name_offset"]

EXPRESSION_FUNCTIONS = ("exp", "log", "abs", "max", "min")
MAX_CHARS = 1000
"""The longest expression accepted (characters)."""
MAX_OPS = 300
"""The most operations (operators, calls, names and numbers) an expression may hold."""
_LARGEST = 1e300  # a constant part beyond this is refused: float arithmetic on it overflows


class ExpressionError(ValueError):
    """An expression metric that does not parse or uses something not allowed.

    ``offset`` is the 0-based character offset of the problem in the expression, if known;
    ``code`` is ``E017`` (bad expression) or ``E060`` (too large to evaluate safely)."""

    def __init__(self, message: str, offset: int | None = None, hint: str | None = None,
                 code: ErrorCode = ErrorCode.E017) -> None:
        super().__init__(message)
        self.message, self.offset, self.hint, self.code = message, offset, hint, code


_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.UAdd, ast.USub)


def _vet(tree: ast.AST) -> list[str]:
    """Reject any syntax but numbers, names, + - * / **, unary signs and allowed calls, and
    constant parts that overflow or are undefined. Returns the answer names used."""
    names: list[str] = []
    size = sum(1 for _ in ast.walk(tree))
    if size > MAX_OPS:
        raise ExpressionError(f"the expression has {size} operations (at most {MAX_OPS})", 0,
                              "split it, or use a built-in metric", ErrorCode.E060)

    def bad(node: ast.AST, what: str, hint: str | None = None, code: ErrorCode = ErrorCode.E017) -> ExpressionError:
        return ExpressionError(what, getattr(node, "col_offset", None), hint, code)

    def folded(node: ast.AST, compute: Any) -> float:
        """A constant part's value in floating point; refused when it overflows or is undefined."""
        try:
            value = float(compute())
        except OverflowError:
            value = math.inf
        except (ZeroDivisionError, ValueError) as e:
            raise bad(node, f'"{ast.unparse(node)}" is undefined ({e})') from None
        if not math.isfinite(value) or abs(value) > _LARGEST:
            raise bad(node, f'the constant "{ast.unparse(node)[:40]}" is too large to evaluate',
                      "use a smaller number", ErrorCode.E060)
        return value

    def visit(node: ast.AST) -> float | None:
        """The node's value when it is a constant, else None."""
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _OPS):
                hint = "use ** for powers" if isinstance(node.op, ast.BitXor) else None
                raise bad(node, f"operator {type(node.op).__name__} is not allowed", hint)
            left, right = visit(node.left), visit(node.right)
            if left is None or right is None:
                return None
            ops = {ast.Add: lambda: left + right, ast.Sub: lambda: left - right, ast.Mult: lambda: left * right,
                   ast.Div: lambda: left / right, ast.Pow: lambda: math.pow(left, right)}
            return folded(node, ops[type(node.op)])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _OPS):
            inner = visit(node.operand)
            return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return folded(node, lambda: node.value)
        if isinstance(node, ast.Name):
            if node.id in EXPRESSION_FUNCTIONS or node.id.startswith("_"):
                raise bad(node, f'"{node.id}" is not an answer name', f"call it: {node.id}(...)")
            names.append(node.id)
            return None
        if isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else None
            if func not in EXPRESSION_FUNCTIONS or node.keywords or not node.args:
                raise bad(node, f'call of "{ast.unparse(node.func)}" is not allowed',
                          f"functions: {', '.join(EXPRESSION_FUNCTIONS)}")
            args = [visit(a) for a in node.args]
            if any(a is None for a in args):
                return None
            fns = {"exp": lambda: math.exp(args[0]), "log": lambda: math.log(args[0]), "abs": lambda: abs(args[0]),
                   "max": lambda: max(args), "min": lambda: min(args)}  # type: ignore[type-var]
            if func in ("exp", "log", "abs") and len(args) != 1:
                return None  # sympy reports the wrong number of arguments
            return folded(node, fns[func])
        raise bad(node, f'"{ast.unparse(node)}" is not allowed in an expression',
                  "use answer names, numbers, + - * / **, and " + ", ".join(EXPRESSION_FUNCTIONS))

    visit(tree)
    return names


def parse_expression(text: str) -> Any:
    """Parse an expression metric into a sympy expression whose symbols are answer names.

    The text is first vetted with :mod:`ast` (numbers, names, arithmetic, and the calls in
    :data:`EXPRESSION_FUNCTIONS` only), then handed to sympy's ``parse_expr`` with a global
    namespace holding nothing but sympy's number/symbol constructors and those functions, and
    every name bound to a ``Symbol``. Raises :class:`ExpressionError`."""
    if len(text.strip()) > MAX_CHARS:
        raise ExpressionError(f"the expression is {len(text.strip())} characters long (at most {MAX_CHARS})", 0,
                              "split it, or use a built-in metric", ErrorCode.E060)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse expression: {e.msg}", (e.offset or 1) - 1) from None
    except (RecursionError, MemoryError):
        raise ExpressionError("the expression nests too deeply", 0, None, ErrorCode.E060) from None
    names = _vet(tree)
    import sympy
    from sympy.parsing.sympy_parser import parse_expr, standard_transformations

    funcs = {"exp": sympy.exp, "log": sympy.log, "abs": sympy.Abs, "max": sympy.Max, "min": sympy.Min}
    global_dict: dict[str, Any] = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float,
                                   "Rational": sympy.Rational, "Symbol": sympy.Symbol, **funcs}
    local_dict: dict[str, Any] = {n: sympy.Symbol(n) for n in names}
    try:
        expr = parse_expr(text.strip(), local_dict=local_dict, global_dict=global_dict,
                          transformations=standard_transformations, evaluate=True)
    except Exception as e:  # sympy raises many types (TypeError for max() of nothing, ...)
        raise ExpressionError(f"cannot build expression: {e}") from None
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):  # e.g. IO / (S - S): undefined for every input
        raise ExpressionError("the expression is undefined or infinite for every input (a division by zero?)")
    allowed = (sympy.exp, sympy.log, sympy.Abs, sympy.Max, sympy.Min)
    for f in expr.atoms(sympy.Function):
        if not isinstance(f, allowed):
            raise ExpressionError(f"function {f.func} is not allowed")
    return expr


def expression_diagnostic(src: SourceMap | None, loc: Loc, text: str, e: ExpressionError) -> Diagnostic:
    """``E017`` for the expression ``text`` at ``loc``, the caret at the problem when known."""
    offset, width = offset_in(src, loc, text, e.offset, 1)
    shown = text if len(text) <= 80 else text[:77] + "..."
    return at(src, loc, e.code, f'bad expression "{shown}": {e.message}', e.hint, text,
              offset=offset, width=width)


def name_offset(text: str, name: str) -> int | None:
    """The offset of the first use of answer ``name`` in the (stripped) expression ``text``."""
    for node in ast.walk(ast.parse(text.strip(), mode="eval")):
        if isinstance(node, ast.Name) and node.id == name:
            return node.col_offset
    return None
