"""The docs: the spec reference is generated from the schema (and stays so), every field has a
description (the JSON Schema's too), every example in the reference is valid, no page points
at a design file users do not have, and every Python snippet of README.md and docs/ runs.

Snippets run from a scratch folder where ``specs/`` and ``examples/`` are the repository's.
A snippet on the line after ``<!-- snippet: real_model -->`` needs the embedded SmolLM2 (marked
``real_model``); every other snippet runs on the models the package ships.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from intervene.spec import reference, schema

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- snippet: (?P<tag>[\w-]+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def test_the_reference_is_generated_from_the_schema() -> None:
    text = reference.markdown()
    page = ROOT / "docs" / "spec-reference.md"
    if os.environ.get("INTERVENE_UPDATE_DOCS"):
        page.write_text(text)
    assert page.read_text() == text, "regenerate: intervene schema --reference > docs/spec-reference.md"


def test_every_field_has_a_description_in_the_json_schema() -> None:
    missing = [f"{n}.{f}" for n, c in reference.models().items() for f, i in c.model_fields.items()
               if not i.description]
    assert missing == []
    js = schema.json_schema()
    for name, d in js["$defs"].items():
        for field, prop in d.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field}"
    text = reference.markdown()
    for name in reference.models():
        assert f'<a id="{name.lower()}"></a>' in text


@pytest.mark.parametrize("name", sorted(reference.EXAMPLES))
def test_every_example_of_the_reference_is_valid(name: str) -> None:
    reference.models()[name].model_validate(yaml.safe_load(reference.EXAMPLES[name]))


def test_no_page_cites_a_file_users_do_not_have() -> None:
    for page in PAGES:
        assert "DESIGN.md" not in page.read_text(), page
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", "".join(p.read_text() for p in PAGES)):
        assert (ROOT / link).exists() or (ROOT / "docs" / link).exists(), link


def snippets() -> list:  # type: ignore[type-arg]
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text[: m.start("code")].count("\n") + 1
            marks = [pytest.mark.real_model] if m.group("tag") == "real_model" else []
            out.append(pytest.param(page, line, m.group("code"), marks=marks,
                                    id=f"{page.relative_to(ROOT)}:{line}"))
    return out


@pytest.mark.parametrize(("page", "line", "code"), snippets())
def test_snippet_runs(page: Path, line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      request: pytest.FixtureRequest) -> None:
    if any(m.name == "real_model" for m in request.node.iter_markers()):
        request.getfixturevalue("real_model")  # skips when the embedded model is absent
    for d in ("specs", "examples"):
        (tmp_path / d).symlink_to(ROOT / d)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "snippet"})


def test_every_page_with_code_has_its_snippets_collected() -> None:
    counted = sum(p.read_text().count("```python") for p in PAGES)
    assert counted == len(snippets()) and counted >= 5


@pytest.mark.real_model
def test_the_readme_shows_what_intervene_check_prints(real_model, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from intervene.cli import app

    text = (ROOT / "README.md").read_text()
    shown = text.split("$ intervene check examples/typo.yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    got = CliRunner().invoke(app, ["check", "examples/typo.yaml"])
    assert got.exit_code == 1
    assert got.output.strip() == shown.strip()
