"""Circuit discovery: scores for every edge (or node), and circuits from them (DESIGN.md §4,
docs/discovery.md).

The package is also the function: ``intervene.discover(spec, ...)`` runs one discovery
(:func:`intervene.api.discover`) and returns a :class:`~intervene.discover.result.DiscoveryResult`;
its modules are reached as usual (``intervene.discover.mib``).

* :mod:`~intervene.discover.attribution` — EAP and EAP-IG: one gradient pass gives ∂m/∂in_r at
  every receiver, contracted with the senders' (source − clean) outputs;
* :mod:`~intervene.discover.exact` and :mod:`~intervene.discover.lower` — exact patching, one
  run per edge or node in the spec's fused program;
* :mod:`~intervene.discover.atp` — AtP* on heads (QK fix, GradDrop);
* :mod:`~intervene.discover.acdc` — ACDC, candidate removals as stacked runs;
* :mod:`~intervene.discover.circuits` — ranking, pruning to input → logits paths, circuit specs;
* :mod:`~intervene.discover.mib` — MIB's CPR and CMD, and its graph files;
* :mod:`~intervene.discover.result`, :mod:`~intervene.discover.show` — the result type, its
  table and pictures; :mod:`~intervene.discover.run` — running an experiment of a spec.

Importing the package loads nothing heavy (the spec layer and the compiler import from it).
"""

from __future__ import annotations

from intervene.callable_module import make_callable


make_callable(__name__, "discover")
