"""The pytest plugin: spec files with an ``expect:`` block are tests (entry point ``pytest11``).

What it owns: collecting spec files, one test item per expectation, running each spec once
per session (through the disk cache of :mod:`intervene.testing.spectest`), the failure text,
and two fixtures. Configuration (``pytest.ini`` / ``[tool.pytest.ini_options]``)::

    intervene_specs = specs/tests        # folders whose *.yaml / *.yml files with expect: are tests
    intervene_fast_n = 8                  # --intervene-fast caps generated and JSONL datasets at this size
    intervene_cache_dir = .intervene      # results cache (default $INTERVENE_CACHE/results)

The folders must also be collected (in ``testpaths`` or named on the command line); a spec
file named on the command line is collected wherever it is. Options: ``--intervene-fast``
(shrink datasets, for pull-request CI), ``--intervene-refresh`` (recompute, ignoring cached
results), ``--intervene-device`` (default: the spec's). Fixtures: ``intervene_model`` (a loader
that loads each model once per session) and ``tiny_model`` (``tiny_model("gpt2")``: a tiny
random model of a family, :mod:`intervene.testing.tiny`).

A failing expectation prints ``file:line`` of the expectation, the expectation, the measured
mean with its 95% bootstrap interval, the interval rule (:mod:`intervene.testing.expect`) and
a one-line repro command.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from intervene.errors import SpecError

RESULTS = pytest.StashKey[dict[Path, Any]]()
STATS = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("intervene", "intervene spec tests")
    group.addoption("--intervene-fast", action="store_true", default=False,
                    help="shrink generated and JSONL datasets to intervene_fast_n examples (pull-request CI)")
    group.addoption("--intervene-refresh", action="store_true", default=False,
                    help="recompute spec results even when cached")
    group.addoption("--intervene-device", default=None, help="device for spec runs (default: the spec's)")
    parser.addini("intervene_specs", "folders whose spec files with an expect: block are collected as tests",
                  type="paths", default=[])
    parser.addini("intervene_fast_n", "examples per generated or JSONL dataset under --intervene-fast", default="8")
    parser.addini("intervene_cache_dir", "folder of cached spec results (default $INTERVENE_CACHE/results)",
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS] = {}
    config.stash[STATS] = {"run": 0, "cached": 0}


def _fast_n(config: pytest.Config) -> int | None:
    return int(config.getini("intervene_fast_n")) if config.getoption("intervene_fast") else None


def _cache(config: pytest.Config) -> Any:
    from intervene.testing import spectest

    folder = config.getini("intervene_cache_dir")
    if folder:
        folder = Path(folder)
        if not folder.is_absolute():
            folder = (config.inipath.parent if config.inipath else config.rootpath) / folder
    return spectest.ResultsCache(folder or spectest.default_cache_dir())


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    from intervene.testing.spectest import has_expectations

    folders = [Path(p) for p in parent.config.getini("intervene_specs")]
    inside = any(file_path.is_relative_to(f) for f in folders)
    if (inside or parent.session.isinitpath(file_path)) and has_expectations(file_path):
        return SpecFile.from_parent(parent, path=file_path)
    return None


def _rel(config: pytest.Config, path: Path) -> str:
    """``path`` as the user would type it: relative to where pytest was run."""
    try:
        return os.path.relpath(path, config.invocation_params.dir)
    except ValueError:
        return str(path)


class SpecFileError(Exception):
    """A spec file that cannot be tested (its SpecError text, with file:line:col)."""


class SpecFile(pytest.File):
    """A spec file with expectations: one item per expectation."""

    def collect(self) -> Iterator[pytest.Item]:
        from intervene.testing import spectest

        try:
            test = spectest.load(self.path, _fast_n(self.config))
        except SpecError as e:
            raise SpecFileError(str(e).replace(str(self.path), _rel(self.config, self.path))) from None
        seen: dict[str, int] = {}
        for e in test.expectations:
            seen[e.claim] = seen.get(e.claim, 0) + 1
            name = e.claim if seen[e.claim] == 1 else f"{e.claim} #{seen[e.claim]}"
            item = ExpectationItem.from_parent(self, name=name, test=test, expectation=e)
            if e.xfail is not None:
                reason = e.xfail or "expected to fail (spec)"
                item.add_marker(pytest.mark.xfail(reason=reason, raises=ExpectationFailed))
            yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],  # type: ignore[override]
                     style: Any = None) -> str:
        if isinstance(excinfo.value, SpecFileError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))


class ExpectationFailed(AssertionError):
    """An expectation not met; carries the :class:`~intervene.testing.expect.Outcome`."""

    def __init__(self, outcome: Any, text: str) -> None:
        super().__init__(text)
        self.outcome = outcome


class ExpectationItem(pytest.Item):
    """One expectation of a spec file, checked against the spec's (cached) results."""

    def __init__(self, *, test: Any, expectation: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.test = test
        self.expectation = expectation

    def _results(self) -> Any:
        """The spec's typed results (:class:`intervene.results.Results`), computed or read from
        the cache once per spec file."""
        from intervene.testing import spectest

        store = self.config.stash[RESULTS]
        if self.path not in store:
            try:
                opt = self.config.getoption
                data, cached = spectest.results(self.test, _cache(self.config), opt("intervene_device"),
                                                refresh=opt("intervene_refresh"))
            except BaseException as e:  # remembered: the file's other items fail the same way, without rerunning
                store[self.path] = e
                raise
            self.config.stash[STATS]["cached" if cached else "run"] += 1
            store[self.path] = data
        got = store[self.path]
        if isinstance(got, BaseException):
            raise got
        return got  # type: ignore[no-any-return]

    def runtest(self) -> None:
        from intervene.testing import expect

        outcome = expect.check(self.expectation, self._results())
        if not outcome.passed:
            raise ExpectationFailed(outcome, outcome.report(self.repro(), self.numbers()))

    def _rel(self) -> str:
        return _rel(self.config, self.path)

    def repro(self) -> str:
        """The one-line command that reruns this expectation alone."""
        fast = " --intervene-fast" if self.config.getoption("intervene_fast") else ""
        return f"pytest {shlex.quote(f'{self._rel()}::{self.name}')}{fast}"

    def numbers(self) -> str:
        """The command that writes every number of the spec (and its examples) to a file."""
        return f"intervene run {shlex.quote(self._rel())} --out {shlex.quote(f'out/{self.path.stem}.json')}"

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],  # type: ignore[override]
                     style: Any = None) -> str:
        from intervene.testing.expect import ExpectationError

        if isinstance(excinfo.value, (ExpectationFailed, SpecError, ExpectationError)):
            return str(excinfo.value).replace(str(self.path), self._rel())
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.expectation.line - 1, f"{self._rel()}:{self.expectation.line}: {self.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """An expected failure says what was measured in its one-line summary (``-rx``)."""
    out = yield
    report = out.get_result()
    if isinstance(item, ExpectationItem) and getattr(report, "wasxfail", None) is not None and call.excinfo:
        exc = call.excinfo.value
        if isinstance(exc, ExpectationFailed):
            report.wasxfail = f"{report.wasxfail}; measured: {exc.outcome.short()}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    stats = config.stash.get(STATS, None)
    if stats and (stats["run"] or stats["cached"]):
        terminalreporter.write_line(f"intervene: {stats['run'] + stats['cached']} spec runs, {stats['cached']} "
                                    f"served from the cache ({_cache(config).folder})")


@pytest.fixture(scope="session")
def intervene_model() -> Callable[..., Any]:
    """``intervene_model(name="smollm2-135m", revision=None, dtype="float32", device="auto")``:
    a :class:`~intervene.models.loading.LoadedModel`, loaded once per session (and shared with
    the spec runs of the same model and device)."""
    from intervene.api import cached_model
    from intervene.models.loading import resolve_device

    def load(name: str = "smollm2-135m", revision: str | None = None, dtype: str = "float32",
             device: str = "auto") -> Any:
        return cached_model(name, revision, dtype, str(resolve_device(device)))

    return load


@pytest.fixture(scope="session")
def tiny_model() -> Callable[[str], Any]:
    """``tiny_model(family)``: a seeded tiny random model (an adapter) of ``gpt2``,
    ``llama_gqa``, ``neox_parallel`` or ``qwen2``, built once per process."""
    from intervene.testing.tiny import tiny

    return tiny
