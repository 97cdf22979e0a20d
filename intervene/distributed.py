"""Spreading a program over Ray workers (the optional extra ``pip install 'intervene-lm[ray]'``).

What it owns: :class:`RayExecutor`, an :class:`~intervene.execute.Executor` whose waves go to
Ray actors instead of running here, and the actor itself (:class:`Worker`). Ray is the engine
that places workers, restarts them and moves data; nothing here schedules on its own beyond
"give the next chunk to the first idle worker".

How a run is spread:

1. the driver plans the program as it would to run it alone (:meth:`Scheduler._plan`: base
   passes, waves, chunks cut to the same token budget);
2. every worker (an actor: one per GPU, or per CPU worker) loads the model once, when started,
   and receives the program, the tokenised data and the budget; it computes the base passes
   itself, with the driver's chunking and torch thread count, so they are the driver's bit for
   bit;
3. each chunk (a :class:`~intervene.sources.Rows`: the same rows as in one process) goes to an
   idle worker, which runs it and sends back its readout values and the places of its runs
   that later waves read; the driver keeps one answer per chunk and gathers them in program
   order. The numbers are exactly those of a one-process run with the same budget and thread
   count (DESIGN.md §6 invariant 8);
4. a worker that dies (its process killed, its node lost) fails only the chunk it held: that
   chunk goes to another worker, and a replacement worker is started; no chunk is counted
   twice, none is dropped.

Point it at a cluster with ``address``: ``"auto"`` joins the cluster this machine belongs to
(started with ``ray start``; ``RAY_ADDRESS`` if set) or starts a local one, ``"local"`` always
starts a local one, and ``"HOST:6379"`` / ``"ray://HOST:10001"`` join that head node.
"""

from __future__ import annotations

import functools
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from intervene import ir
from intervene.errors import ErrorCode, ExecutionError
from intervene.execute import Executor, Readout
from intervene.models.adapters import Adapter
from intervene.models.support import ModelLoadError
from intervene.schedule import Wave
from intervene.sources import BatchLike, Rows

ModelFactory = Callable[[], Adapter]
"""Builds the model in a worker (pickled to it; it must not hold the model itself)."""
ReadoutFactory = Callable[[Executor], Readout]
"""Builds a readout for an executor (pickled to each worker, called there with its executor)."""


class RayUnavailable(ModelLoadError):
    """Ray is not installed, or no cluster answers at the address (E093)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.E093, "ray")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("running on Ray workers needs Ray: pip install 'intervene-lm[ray]'") from None
    return ray


def connect(address: str = "auto", num_cpus: int | None = None) -> Any:
    """The ``ray`` module, connected: ``auto`` (the cluster this machine is part of, else a new
    local one), ``local`` (a new local one with ``num_cpus``), or a head node's address."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        elif address == "auto":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailable(f'no Ray cluster at "{address}": {e}; start one with `ray start --head`') from e
    return ray


def load_adapter(name: str, revision: str | None, dtype: str, device: str,
                 device_map: str | dict[str, Any] | None = None) -> Adapter:
    """A worker's model from a spec's model fields (a :data:`ModelFactory` with them bound)."""
    from intervene.models.loading import load_model

    return load_model(name, revision, dtype, device, device_map).adapter


@dataclass(frozen=True)
class KillOnce:
    """A chunk hook for fault tests: the first worker to start chunk ``chunk`` kills its own
    process (SIGKILL, as a lost node would end) after creating ``marker``; later attempts run."""

    marker: str
    chunk: int

    def __call__(self, index: int) -> None:
        if index != self.chunk:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


class Worker:
    """One Ray actor: a model loaded once, an executor over the shipped data, and the program
    being run (see the module docstring)."""

    def __init__(self, model_factory: ModelFactory, data: tuple[dict[str, BatchLike], dict[str, Tensor]],
                 metric_position: str, max_tokens: int, max_edge_bytes: int, threads: int) -> None:
        torch.set_num_threads(threads)
        batches, vectors = data
        model = model_factory()
        self.ex = Executor(model, {k: b.to(model.device) if hasattr(b, "to") else b for k, b in batches.items()},
                           {k: v.to(model.device, model.dtype) for k, v in vectors.items()}, metric_position,
                           max_tokens=max_tokens, max_edge_bytes=max_edge_bytes)
        self.program: ir.Program | None = None
        self.readout: Readout | None = None
        self.hook: Callable[[int], None] | None = None

    def begin(self, program: ir.Program, readout_factory: ReadoutFactory,
              hook: Callable[[int], None] | None = None) -> int:
        """Take a program: its checks and base passes, as the driver planned them."""
        self.program, self.hook = program, hook
        self.ex._plan(program)
        self.readout = readout_factory(self.ex)
        return os.getpid()

    def records(self, cache: dict[str, dict[Any, Tensor]]) -> None:
        """The places of computed runs later waves read, as the driver holds them."""
        dev = self.ex.model.device
        self.ex._cache = {n: {s: t.to(dev) for s, t in sites.items()} for n, sites in cache.items()}

    def run(self, index: int, ds: str, rows: Rows) -> tuple[Tensor | None, dict[str, tuple[Tensor, dict[Any, Tensor]]]]:
        """One chunk: its readout values, and the recorded places of its runs (slots, values)."""
        if self.hook is not None:
            self.hook(index)
        assert self.program is not None and self.readout is not None
        v = self.ex._run_split(self.program, ds, rows, self.readout)
        rec: dict[str, tuple[Tensor, dict[Any, Tensor]]] = {}
        for ri in np.unique(rows.run):
            name = self.program.runs[int(ri)].name
            if name in self.ex._cache:
                ex = torch.from_numpy(rows.ex[rows.run == ri])
                rec[name] = (ex, {s: t[ex.to(t.device)].cpu() for s, t in self.ex._cache[name].items()})
        return v, rec


class RayExecutor(Executor):
    """An executor whose chunks run on Ray workers (see the module docstring).

    ``model_factory`` builds the model in each worker; ``readout_factory`` builds the readout
    there (and here: :meth:`readout`). A program executed with :meth:`readout`'s readout is
    spread; any other readout runs here, as :class:`Executor` does."""

    def __init__(self, model: Adapter, batches: dict[str, BatchLike], vectors: dict[str, Tensor] | None = None,
                 metric_position: str = "END", max_tokens: int | None = 32768, *,
                 model_factory: ModelFactory, readout_factory: ReadoutFactory, address: str = "auto",
                 workers: int | None = None, gpus_per_worker: float | None = None,
                 progress: Callable[[int, int], None] | None = None, max_edge_bytes: int | None = 2**29,
                 max_memory: str | int | None = None, chunk_hook: Callable[[int], None] | None = None) -> None:
        super().__init__(model, batches, vectors, metric_position, max_tokens, progress, max_edge_bytes, max_memory)
        self.ray = connect(address, workers)
        res = self.ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        self.gpus_per_worker = (1.0 if gpus else 0.0) if gpus_per_worker is None else gpus_per_worker
        n = workers or (gpus if self.gpus_per_worker else int(res.get("CPU", 1)))
        self.model_factory, self.readout_factory, self.chunk_hook = model_factory, readout_factory, chunk_hook
        self._readout: Readout | None = None
        self._spread, self._program, self._offset, self._ready = False, ir.Program(""), 0, set[int]()
        cpu = lambda t: t.cpu() if isinstance(t, Tensor) else t  # noqa: E731
        self._data = self.ray.put(({k: (b.to("cpu") if hasattr(b, "to") else b) for k, b in batches.items()},
                                   {k: cpu(v) for k, v in (vectors or {}).items()}))
        self._actor_cls = self.ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=0)(Worker)
        self.actors = [self._start() for _ in range(max(1, n))]
        self.restarts = 0  # workers started to replace dead ones

    def readout(self) -> Readout:
        """The readout whose programs are spread over the workers."""
        if self._readout is None:
            self._readout = self.readout_factory(self)
        return self._readout

    def _start(self) -> Any:
        # the data travel once to the object store; each worker reads them from there
        return self._actor_cls.remote(self.model_factory, self._data, self.metric_position, self.max_tokens,
                                      self.max_edge_bytes, torch.get_num_threads())

    def execute(self, program: ir.Program, readout: Readout) -> list[Tensor | None]:
        self._spread = readout is self._readout and readout is not None
        self._program, self._offset, self._ready = program, 0, set()
        return super().execute(program, readout)

    def _run_wave(self, program: ir.Program, wave: Wave, readout: Readout
                  ) -> Iterator[tuple[str, Rows, Tensor | None]]:
        if not self._spread:
            yield from super()._run_wave(program, wave, readout)
            return
        ray = self.ray
        offset, self._offset = self._offset, self._offset + len(wave)
        idle = deque(self._setup(list(self.actors)) or self._replace())
        todo = deque(range(len(wave)))
        running: dict[Any, tuple[int, Any]] = {}
        while todo or running:
            while todo and idle:
                actor, i = idle.popleft(), todo.popleft()
                running[actor.run.remote(offset + i, *wave[i])] = (i, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            try:
                v, rec = ray.get(ref)
            except ray.exceptions.RayActorError:  # the worker died: its chunk runs again elsewhere
                todo.appendleft(i)
                self.actors.remove(actor)
                idle.extend(self._replace())
                continue
            self._merge(rec)
            idle.append(actor)
            yield wave[i][0], wave[i][1], v

    def _setup(self, actors: list[Any]) -> list[Any]:
        """Give ``actors`` the program and the records later waves read; those that answered
        (a dead one is dropped)."""
        cache = {n: {s: t.cpu() for s, t in sites.items()} for n, sites in self._cache.items()}
        pending = [(a, ([] if id(a) in self._ready else [a.begin.remote(self._program, self.readout_factory,
                                                                         self.chunk_hook)])
                    + ([a.records.remote(cache)] if cache else [])) for a in actors]
        alive = []
        for a, refs in pending:
            try:
                self.ray.get(refs)
                alive.append(a)
                self._ready.add(id(a))
            except self.ray.exceptions.RayActorError:
                self.actors.remove(a)
        return alive

    def _replace(self) -> list[Any]:
        """A new worker in place of a dead one, set up for the program being run."""
        for _ in range(3):
            a = self._start()
            self.actors.append(a)
            self.restarts += 1
            if self._setup([a]):
                return [a]
        raise ExecutionError("Ray workers keep dying while they load the model or take the program")

    def _merge(self, rec: dict[str, tuple[Tensor, dict[Any, Tensor]]]) -> None:
        """Write a chunk's recorded places into the driver's records (sent on to later waves)."""
        for name, (ex, sites) in rec.items():
            for site, values in sites.items():
                dst = self._cache[name][site]
                dst[ex.to(dst.device)] = values.to(dst.device, dst.dtype)

    def close(self) -> None:
        """Stop the workers (the Ray connection stays for the next executor)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


def spec_model_factory(spec: Any, device: str | None = None) -> ModelFactory:
    """The :data:`ModelFactory` of a spec's model (a local model folder must be reachable at
    the same path on every worker's machine: a shared filesystem, or a Hugging Face id)."""
    m = spec.model
    dm = None if device else m.device_map
    path = spec.model_path()
    return functools.partial(load_adapter, str(Path(path).resolve()) if Path(path).exists() else path, m.revision,
                             m.dtype, device or m.device, dm)
