"""Expression metrics: a safe arithmetic language over answer names, parsed with sympy.

What it owns: :func:`parse_expression` (``"IO - S"`` -> a sympy expression whose symbols are
answer names), the :class:`ExpressionError` it raises, the allowed functions
(:data:`EXPRESSION_FUNCTIONS`), and the diagnostics pointing into an expression string. Text is
vetted with :mod:`ast` before sympy sees it, and is never ``eval``'d. The names stay importable
from :mod:`intervene.spec.check` and :mod:`intervene.spec`.
"""

from __future__ import annotations

import ast
from typing import Any

from intervene.errors import Diagnostic, ErrorCode
from intervene.spec.diagnostics import at, offset_in
from intervene.spec.source_map import Loc, SourceMap

__all__ = ["EXPRESSION_FUNCTIONS", "ExpressionError", "parse_expression", "expression_diagnostic", "name_offset"]

EXPRESSION_FUNCTIONS = ("exp", "log", "abs", "max", "min")


class ExpressionError(ValueError):
    """An expression metric that does not parse or uses something not allowed.

    ``offset`` is the 0-based character offset of the problem in the expression, if known."""

    def __init__(self, message: str, offset: int | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.hint = message, offset, hint


_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.UAdd, ast.USub)


def _vet(tree: ast.AST) -> list[str]:
    """Reject any syntax but numbers, names, + - * / **, unary signs and allowed calls.
    Returns the answer names used."""
    names: list[str] = []

    def bad(node: ast.AST, what: str, hint: str | None = None) -> ExpressionError:
        return ExpressionError(what, getattr(node, "col_offset", None), hint)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            visit(node.body)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _OPS):
                hint = "use ** for powers" if isinstance(node.op, ast.BitXor) else None
                raise bad(node, f"operator {type(node.op).__name__} is not allowed", hint)
            visit(node.left)
            visit(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _OPS):
            visit(node.operand)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            pass
        elif isinstance(node, ast.Name):
            if node.id in EXPRESSION_FUNCTIONS or node.id.startswith("_"):
                raise bad(node, f'"{node.id}" is not an answer name', f"call it: {node.id}(...)")
            names.append(node.id)
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else None
            if func not in EXPRESSION_FUNCTIONS or node.keywords or not node.args:
                raise bad(node, f'call of "{ast.unparse(node.func)}" is not allowed',
                          f"functions: {', '.join(EXPRESSION_FUNCTIONS)}")
            for a in node.args:
                visit(a)
        else:
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
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse expression: {e.msg}", (e.offset or 1) - 1) from None
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
    allowed = (sympy.exp, sympy.log, sympy.Abs, sympy.Max, sympy.Min)
    for f in expr.atoms(sympy.Function):
        if not isinstance(f, allowed):
            raise ExpressionError(f"function {f.func} is not allowed")
    return expr


def expression_diagnostic(src: SourceMap | None, loc: Loc, text: str, e: ExpressionError) -> Diagnostic:
    """``E017`` for the expression ``text`` at ``loc``, the caret at the problem when known."""
    offset, width = offset_in(src, loc, text, e.offset, 1)
    return at(src, loc, ErrorCode.E017, f'bad expression "{text}": {e.message}', e.hint, text,
              offset=offset, width=width)


def name_offset(text: str, name: str) -> int | None:
    """The offset of the first use of answer ``name`` in the (stripped) expression ``text``."""
    for node in ast.walk(ast.parse(text.strip(), mode="eval")):
        if isinstance(node, ast.Name) and node.id == name:
            return node.col_offset
    return None
