"""Ray workers (intervene.distributed): a program spread over a local cluster of two CPU workers
gives exactly the numbers of one process (DESIGN.md §6 invariant 8), waves that read computed
runs included, and a worker killed mid-chunk has its chunk redone, nothing lost or counted
twice. Marked ``ray`` (a local cluster takes seconds to start): ``pytest -m "not ray"`` skips it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import random_batch, tiny

from intervene import ir
from intervene.execute import Executor
from intervene.graph import Node

ray = pytest.importorskip("ray")
distributed = pytest.importorskip("intervene.distributed")

pytestmark = pytest.mark.ray
FAMILY = "llama_gqa"
BATCHES = {"clean": random_batch(6, 8, 3, [8, 8, 8, 6, 6, 6]), "corr": random_batch(6, 8, 4, [8, 8, 8, 6, 6, 6])}


def logits(ex: Executor) -> Any:
    """A readout factory: the float32 logits of every row (a worker builds it with its executor)."""
    return lambda ds, lg, idx: lg


def program() -> ir.Program:
    """A head sweep, and a run ``B`` that reads the computed run ``A`` (a second wave, whose
    inputs the workers must receive from the first)."""
    src = ir.Source("run", "corr")
    runs = [ir.Run("clean", "clean")]
    runs += [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
             for l in range(3) for h in range(4)]
    runs.append(ir.Run("A", "clean", (ir.Op("patch", Node("head", 0, 1), None, src),), scored=False))
    runs.append(ir.Run("B", "clean", (ir.Op("patch", Node("mlp", 1), None, ir.Source("run", "clean", run="A")),)))
    return ir.Program("spread", runs)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    distributed.connect("local", num_cpus=2)
    yield
    ray.shutdown()


def spread(**kw: Any) -> tuple[list[torch.Tensor | None], Any]:
    import functools

    from intervene.testing.tiny import tiny as tiny_

    ex = distributed.RayExecutor(tiny(FAMILY), BATCHES, {}, "END", max_tokens=24, workers=2,
                                 model_factory=functools.partial(tiny_, FAMILY), readout_factory=logits, **kw)
    try:
        with torch.no_grad():
            got = ex.execute(program(), ex.readout())
        ex.alive = len(ex.actors)
        return got, ex
    finally:
        ex.close()


def alone() -> list[torch.Tensor | None]:
    with torch.no_grad():
        return Executor(tiny(FAMILY), BATCHES, {}, "END", max_tokens=24).execute(program(), logits(None))  # type: ignore[arg-type]


def test_two_workers_give_exactly_the_numbers_of_one_process(cluster) -> None:  # type: ignore[no-untyped-def]
    got, ex = spread()
    want = alone()
    assert ex.alive == 2 and ex.restarts == 0
    assert [v is None for v in got] == [v is None for v in want]
    for g, w in zip(got, want):
        if w is not None:
            assert torch.equal(g, w)  # type: ignore[arg-type]
    assert (want[-1] - want[0]).abs().max() > 1e-3  # B departs from clean: the second wave read A


def test_a_worker_killed_mid_chunk_has_its_chunk_redone(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "killed"
    got, ex = spread(chunk_hook=distributed.KillOnce(str(marker), 1))
    assert marker.exists(), "a worker was killed"
    assert ex.restarts == 1 and ex.alive == 2  # the dead worker was replaced
    for g, w in zip(got, alone()):
        if w is not None:
            assert torch.equal(g, w)  # type: ignore[arg-type]


def test_ray_missing_or_unreachable_is_E093(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from intervene.errors import ErrorCode

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "ray" else real(name, *a, **k))
    with pytest.raises(distributed.RayUnavailable, match=r"intervene-lm\[ray\]") as e:
        distributed.connect("auto")
    assert e.value.code == ErrorCode.E093
