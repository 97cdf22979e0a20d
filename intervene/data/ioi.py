"""The built-in indirect-object-identification (IOI) dataset and its ABC corruption.

This module owns `TEMPLATES`, the candidate `NAMES`, and two generators:

* `ioi(n, seed, tokenizer)` -- prompts like "When Mary and John went to the store, John gave a
  drink to" (answer IO " Mary", subject S " John"). Each template has name slots {A}, {B}, {C};
  C always holds the subject S (the repeated name). Order "ABBA" puts IO in slot A, "BABA" puts
  it in slot B. Examples alternate ABBA / BABA (exact balance), and each order cycles through
  the templates in a seeded shuffled order.
* `ioi_abc(base, seed, tokenizer)` -- the same templates with the three slots filled by three
  distinct fresh names (none is the base example's IO or S). Its answers are the BASE's
  answers, because metrics are read against the clean answers.

Named positions (character spans; see `intervene.data.dataset`): IO, S1, S2 (the name slots,
without their leading space), S1+1 (the token after S1), END (the prompt's last token).
Only names that are one token with a leading space under the given tokenizer are used, so
the clean and the ABC prompts align token by token.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from typing import Any

from intervene.data.batch import answer_token_id
from intervene.data.dataset import Dataset, DatasetError, Example

TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {C} gave a drink to",
    "When {A} and {B} got a snack at the cafe, {C} decided to give it to",
    "Then, {A} and {B} had a long argument, and afterwards {C} said to",
    "After {A} and {B} went to the park, {C} gave a ball to",
    "While {A} and {B} were working at the office, {C} gave a report to",
    "Then, {A} and {B} went to the restaurant. {C} handed the menu to",
    "Friends {A} and {B} found a necklace at the beach. {C} gave it to",
    "When {A} and {B} arrived at the school, {C} passed a note to",
    "Yesterday {A} and {B} cleaned the kitchen, and then {C} brought a cake to",
    "Since {A} and {B} were at the hospital, {C} offered some flowers to",
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "James", "Michael", "Robert", "David", "William",
    "Richard", "Joseph", "Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul",
    "Steven", "Andrew", "Kevin", "Brian", "George", "Edward", "Ryan", "Jacob", "Eric", "Peter",
    "Jason", "Sarah", "Lisa", "Nancy", "Karen", "Helen", "Sandra", "Carol", "Ruth", "Laura",
    "Emily", "Rachel", "Anna", "Kate", "Jessica", "Amy", "Susan", "Linda", "Maria", "Jennifer",
    "Elizabeth", "Tom", "Sam", "Max", "Alex", "Ben", "Jack", "Lucy", "Grace", "Emma", "Henry",
    "Adam", "Frank", "Scott", "Jane", "Victoria",
)  # fmt: skip

ORDERS: tuple[str, str] = ("ABBA", "BABA")
POSITION_NAMES: tuple[str, ...] = ("IO", "S1", "S1+1", "S2", "END")


def single_token_names(tokenizer: Any, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The names (default `NAMES`, duplicates dropped) that are one token after a space."""
    candidates = NAMES if names is None else tuple(names)
    return tuple(
        n for n in dict.fromkeys(candidates) if isinstance(answer_token_id(tokenizer, " " + n), int)
    )


def _name_pool(tokenizer: Any, names: Sequence[str] | None, need: int) -> tuple[str, ...]:
    pool = single_token_names(tokenizer, names)
    if len(pool) < need:
        source = "the built-in NAMES" if names is None else f"the {len(set(names))} given names"
        raise ValueError(
            f"only {len(pool)} of {source} are a single token with a leading space under "
            f"{type(tokenizer).__name__} ({list(pool)}); IOI needs at least {need}"
        )
    return pool


def _fill(template: str, slots: Mapping[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Format `template` with `slots`, recording the character span of each slot."""
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    at = 0
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        at += len(literal)
        if field is not None:
            value = slots[field]
            spans[field] = (at, at + len(value))
            parts.append(value)
            at += len(value)
    return "".join(parts), spans


def _example(
    template: int, order: str, fillers: Sequence[str], answers: Mapping[str, str], meta: dict
) -> Example:
    text, spans = _fill(TEMPLATES[template], dict(zip("ABC", fillers, strict=True)))
    io_slot, s1_slot = ("A", "B") if order == "ABBA" else ("B", "A")
    s1_end = spans[s1_slot][1]
    rest = text[s1_end:]
    after = s1_end + len(rest) - len(rest.lstrip())  # first non-space character after S1
    positions = {
        "IO": spans[io_slot],
        "S1": spans[s1_slot],
        "S1+1": (s1_end, after + 1),
        "S2": spans["C"],
        "END": (len(text) - 1, len(text)),
    }
    return Example(text=text, answers=answers, positions=positions, meta=meta)


def _template_ids(templates: Sequence[int] | None) -> list[int]:
    """The template ids to cycle through; `DatasetError` naming the first bad item
    (``templates[2]``: out of range, or listed twice)."""
    if templates is not None and not templates:
        raise DatasetError(None, None, "templates", f"templates must not be empty (ids 0..{len(TEMPLATES) - 1})")
    given = list(range(len(TEMPLATES))) if templates is None else list(templates)
    for i, t in enumerate(given):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(TEMPLATES):
            raise DatasetError(None, None, f"templates[{i}]",
                               f"template {t!r} does not exist: ids are 0..{len(TEMPLATES) - 1}")
        if t in given[:i]:
            raise DatasetError(None, None, f"templates[{i}]", f"template {t} is listed twice")
    return given


def ioi(
    n: int,
    seed: int,
    tokenizer: Any,
    templates: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    name: str = "ioi",
) -> Dataset:
    """`n` IOI prompts, deterministic in `seed` (see the module docstring)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise DatasetError(None, None, "seed", f"seed must be >= 0, got {seed}")
    ids = _template_ids(templates)
    pool = _name_pool(tokenizer, names, need=3)
    rng = random.Random(seed)
    queues: dict[str, list[int]] = {order: [] for order in ORDERS}
    examples = []
    for i in range(n):
        order = ORDERS[i % 2]
        if not queues[order]:
            queues[order] = rng.sample(ids, len(ids))
        template = queues[order].pop()
        io, s = rng.sample(pool, 2)
        fillers = (io, s, s) if order == "ABBA" else (s, io, s)
        meta = {"template": template, "order": order, "io_name": io, "s_name": s, "names": fillers}
        answers = {"IO": " " + io, "S": " " + s}
        examples.append(_example(template, order, fillers, answers, meta))
    return Dataset(name, tuple(examples))


def ioi_abc(
    base: Dataset,
    seed: int,
    tokenizer: Any,
    name: str | None = None,
    names: Sequence[str] | None = None,
) -> Dataset:
    """The ABC corruption of `base` (made by `ioi`): fresh names, same templates and answers."""
    pool = _name_pool(tokenizer, names, need=5)
    rng = random.Random(seed)
    examples = []
    for i, ex in enumerate(base):
        template, order = ex.meta.get("template"), ex.meta.get("order")
        if template not in range(len(TEMPLATES)) or order not in ORDERS:
            raise ValueError(
                f"example {i} of dataset {base.name!r} has no IOI template/order in its meta "
                f"(got template={template!r}, order={order!r}); ioi_abc corrupts datasets "
                "made by ioi()"
            )
        used = {ex.meta.get("io_name"), ex.meta.get("s_name")}
        used |= {a.strip() for a in ex.answers.values()}
        fresh = [p for p in pool if p not in used]
        fillers = tuple(rng.sample(fresh, 3))
        meta = {
            "template": template,
            "order": order,
            "names": fillers,
            "corruption": "ABC",
            "base_index": i,
        }
        examples.append(_example(template, order, fillers, dict(ex.answers), meta))
    return Dataset(f"{base.name}_abc" if name is None else name, tuple(examples))
