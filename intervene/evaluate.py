"""Circuit evaluation on the fused executor: the evaluator that :mod:`intervene.scores` calls.

What it owns: turning a list of :class:`intervene.circuit.Circuit` s into one program (a run
per circuit, each with everything outside the circuit read from the ablation source — DESIGN.md
§2's edge-source table, lowered by :func:`intervene.compile.circuit_run`), executing it as
stacked rows of one batched pass, and reading out per example the metric and KL(M ‖ C) of the
next-token distributions at the metric position. One :class:`CircuitEvaluator` keeps its
executor, so the clean and source passes are computed once for every call.

Cost of one call over n circuits: the clean and source passes (first call only) plus one mixed
row group per circuit; the whole model M is the clean pass itself, and ∅ is read at the logits
only (a run that starts at the last layer). Senders with no kept edge have their outputs
replaced (whole rows of the table, as node patches); only the ablated edges of the circuit's
own senders go through the per-receiver correction.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from intervene import graph, ir, stats
from intervene.circuit import Circuit
from intervene.compile import circuit_run
from intervene.execute import BatchLike, Executor
from intervene.metrics import Metric
from intervene.models.adapters import Adapter
from intervene.scores import Measured


class CircuitEvaluator:
    """Evaluates circuits on ``dataset`` with the rest of the model ablated from ``source``."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], dataset: str, source: ir.Source,
                 metric: Metric, *, metric_position: str = "END", max_tokens: int = 32768,
                 max_edge_bytes: int = 2**29, progress: Callable[[int, int], None] | None = None,
                 executor: Executor | None = None, origin: str = "", by_rows: bool = True,
                 views: Sequence[ir.Run] = (), indices: dict[str, ir.Index] | None = None,
                 saes: dict[str, ir.Sae] | None = None) -> None:
        self.model = model
        self.views = list(views)  # runs the source reads (feature-matched resampling), with their indices
        self.indices = dict(indices or {})
        self.saes = dict(saes or {})  # the SAEs spliced in (feature circuits patch their nodes)
        self.dataset = dataset
        self.source = source
        self.metric = metric
        self.origin = origin
        self.by_rows = by_rows  # False: every circuit as one edge block (no node rows), for checks
        self.exe = executor or Executor(model, batches, {}, metric_position, max_tokens=max_tokens,
                                        progress=progress, max_edge_bytes=max_edge_bytes)
        self.all_edges = frozenset(graph.edges(model.shape))
        self.calls = 0
        self.rows = 0
        self.programs: list[str] = []  # every program a call ran, as printed

    def program(self, circuits: Sequence[Circuit]) -> ir.Program:
        """The program one call runs (printable: one run per circuit)."""
        shape = self.model.shape if self.by_rows else None
        runs = [circuit_run(c, self.dataset, self.source, self.all_edges, key=(str(i),), origin=self.origin,
                            shape=shape) for i, c in enumerate(circuits)]
        return ir.Program("circuits", self.views + runs, metric_position=self.exe.metric_position,
                          indices=self.indices, saes=self.saes)

    def __call__(self, circuits: Sequence[Circuit]) -> list[Measured]:
        program = self.program(circuits)
        self.programs.append(str(program))
        batch = self.exe.batches[self.dataset]

        def readout(ds: str, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            clean = self.exe.base(ds).logits[idx.to(logits.device)]  # type: ignore[index]
            ans = {k: v[idx] for k, v in batch.answer_ids.items()}  # type: ignore[attr-defined]
            return torch.stack((self.metric(logits, ans, clean).float(), stats.kl(clean, logits)), 1)

        with torch.inference_mode():
            values = self.exe.execute(program, readout)[len(self.views):]
        self.calls += 1
        self.rows += len(circuits) * batch.input_ids.shape[0]
        return [Measured(v[:, 0].double().numpy(), v[:, 1].double().numpy()) for v in values]
