"""Running a spec for its expectations: fast mode, the results cache, the repro command.

What it owns, for the pytest plugin (and anyone checking specs outside pytest):

* :func:`load` — a spec file with an ``expect:`` block, checked, its expectations parsed
  (:class:`~intervene.errors.SpecError` with file:line:col on any problem);
* :func:`shrink` — fast mode: every generated (``ioi``) dataset capped at ``n`` examples
  (``ioi_abc`` corruptions follow their base) and every ``jsonl`` one read as ``n`` of its
  lines, drawn by its ``seed`` (paired files of one length keep their pairs);
* :class:`ResultsCache` — results on disk as JSON, keyed by :func:`cache_key`: the sha256 of
  the spec file's text, the contents of the files it names (JSONL datasets, vectors), the
  model (name, revision, dtype; for a local folder, its files' names, sizes and times), the
  fast-mode cap and ``intervene.__version__``. An unchanged spec is not recomputed; any
  change to those inputs is a new key;
* :func:`results` — the results of a loaded spec (from the cache, or computed by
  :func:`execute` on the model loaded once per process and then stored).

The cache stores the results file's content (:meth:`intervene.results.Results.to_dict`);
:func:`results` gives typed :class:`intervene.results.Results`, which
:mod:`intervene.testing.expect` reads, read back from the same data whether fresh or cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import intervene
from intervene.data.jsonl import count_examples
from intervene.files import write_atomic
from intervene.results import Results, ResultsFileError
from intervene.spec import schema
from intervene.spec.check import load_spec
from intervene.testing import expect

__all__ = ["SpecTest", "load", "has_expectations", "shrink", "cache_key", "ResultsCache", "execute", "results",
           "default_cache_dir"]


@dataclass
class SpecTest:
    """A spec loaded for testing: the (possibly shrunk) spec, its expectations, its cache key."""

    path: Path
    spec: schema.Spec
    expectations: list[expect.Expectation]
    fast_n: int | None
    key: str


def has_expectations(path: Path) -> bool:
    """Whether a YAML file has a top-level ``expect:`` block (a cheap text test, no parsing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.startswith("expect:") for line in text.splitlines())


def load(path: str | Path, fast_n: int | None = None) -> SpecTest:
    """Load and check a spec and its expectations; shrink it when ``fast_n`` is given."""
    path = Path(path)
    spec = load_spec(path)
    exps = expect.parse_all(spec)
    small = shrink(spec, fast_n) if fast_n else spec
    return SpecTest(path, small, exps, fast_n, cache_key(spec, fast_n))


def shrink(spec: schema.Spec, n: int) -> schema.Spec:
    """The spec with every ``ioi`` dataset capped at ``n`` examples, and every ``jsonl`` one
    reading ``n`` of its lines (its ``n``/``seed`` draw: paired files of one length stay
    paired); file positions kept."""
    def small(d: Any) -> Any:
        if isinstance(d, schema.IoiDataset):
            return d.model_copy(update={"n": min(d.n, n)})
        if isinstance(d, schema.JsonlDataset):
            lines = count_examples(spec.resolve(d.path))
            return d.model_copy(update={"n": min(d.n or lines, n, lines) or None})
        return d

    datasets = {name: small(d) for name, d in spec.datasets.items()}
    small = spec.model_copy(update={"datasets": datasets})
    small._path, small._source_map = spec.path, spec.source_map
    return small


def _named_files(spec: schema.Spec) -> list[Path]:
    """Files the spec reads besides itself: JSONL datasets and .npy vectors."""
    out = [spec.resolve(d.path) for d in spec.datasets.values() if isinstance(d, schema.JsonlDataset)]
    for e in spec.experiments:
        for iv in getattr(e, "interventions", ()):
            for v in (getattr(iv, "vector", None), getattr(iv, "direction", None)):
                if v is not None and v.file is not None:
                    out.append(spec.resolve(v.file))
    return out


def cache_key(spec: schema.Spec, fast_n: int | None) -> str:
    """sha256 over what determines the numbers (see the module docstring)."""
    h = hashlib.sha256()
    text = spec.source_map.text if spec.source_map is not None else spec.model_dump_json()
    m = spec.model
    parts: list[Any] = [text, m.name, m.revision, m.dtype, fast_n, intervene.__version__]
    for f in _named_files(spec):
        parts.append(hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else f"missing:{f}")
    parts += _model_folder(spec)
    h.update(json.dumps(parts).encode())
    return h.hexdigest()


def _model_folder(spec: schema.Spec) -> list[Any]:
    """A model read from a local folder: each file's name, size and modification time (so new
    weights are a new key without hashing gigabytes)."""
    folder = Path(spec.model_path())  # where the loader reads it
    if not folder.is_dir():
        return []
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in sorted(folder.iterdir()) if f.is_file()]


def default_cache_dir() -> Path:
    """``$INTERVENE_CACHE/results`` (default ``~/.cache/intervene/results``)."""
    from intervene.models.loading import cache_dir

    return cache_dir() / "results"


class ResultsCache:
    """Results JSON files in one folder, ``<key>.json`` each, written atomically."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored results, or None (absent or unreadable: recompute)."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, data: dict[str, Any]) -> Path:
        """Store results data atomically, with the usual file permissions."""
        return write_atomic(self.path(key), json.dumps(data, allow_nan=False))


def execute(spec: schema.Spec, device: str | None = None) -> dict[str, Any]:
    """Run a spec (model loaded once per process) and return its results file's content
    (:meth:`intervene.results.Results.to_dict` as JSON data)."""
    from intervene import api
    from intervene.models.loading import resolve_device

    dev = str(resolve_device(device or spec.model.device))  # "auto" resolved: one cache entry per device
    res = api.run(spec, device=dev)
    return json.loads(json.dumps(res.to_dict(), allow_nan=False))


def results(t: SpecTest, cache: ResultsCache | None = None, device: str | None = None, refresh: bool = False
            ) -> tuple[Results, bool]:
    """The typed results of ``t`` and whether they came from the cache (``refresh``: recompute
    and store anyway; a cached file of another format is recomputed). The current module's
    :func:`execute` does the work, so tests may replace it."""
    if cache is not None and not refresh:
        hit = cache.get(t.key)
        if hit is not None:
            try:
                return Results.from_dict(hit, str(cache.path(t.key))), True
            except ResultsFileError:
                pass  # written by an older intervene: recompute
    data = execute(t.spec, device)
    res = Results.from_dict(data, f"results of {t.spec.path or t.spec.name}")
    if cache is not None:
        cache.put(t.key, data)
    return res, False