"""Testing interventions: hypothesis strategies, DESIGN.md §6 invariants as a library, spec
files with ``expect:`` blocks as pytest tests.

* :mod:`intervene.testing.strategies` — hypothesis strategies built from a model's graph.
* :mod:`intervene.testing.invariants` — the §6 invariants, runnable on any supported model.
* :mod:`intervene.testing.tiny` — tiny random models of every family, random batches.
* :mod:`intervene.testing.expect` — the ``expect:`` language: parsing and checking against results.
* :mod:`intervene.testing.spectest` — running a spec for its expectations (fast mode, disk cache).
* :mod:`intervene.testing.plugin` — the pytest plugin (entry point ``pytest11``: ``intervene``).

See docs/testing.md. Submodules are imported on use (``strategies`` and ``invariants`` need
hypothesis, which is a test dependency).
"""
