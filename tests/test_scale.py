"""Devices, memory budgets and device maps (intervene.devices, intervene.memory, the scheduler's
budget and out-of-memory retry): names checked with a clear error (E090-E092) before anything
loads; chunks cut to the memory a cap allows; a chunk that runs out of memory split and retried
with the same numbers; the placement logic of a model split over devices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny import random_batch, tiny
from typer.testing import CliRunner

from intervene import api, devices, ir, memory
from intervene.cli import app
from intervene.errors import ErrorCode, SpecError
from intervene.execute import Executor
from intervene.graph import Node
from intervene.models.adapters import adapt
from intervene.models.loading import place

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0


# -- devices --------------------------------------------------------------------------------------

BAD = ["gpu", "cuda:x", "tpu", "cuda:7" if n_gpus < 8 else "cuda:99"]
BAD += [] if n_gpus else ["cuda", "cuda:0"]
BAD += [] if torch.backends.mps.is_available() else ["mps"]


@pytest.mark.parametrize("name", BAD)
def test_a_device_this_machine_lacks_is_E090(name: str) -> None:
    with pytest.raises(devices.DeviceError) as e:
        devices.resolve_device(name)
    assert e.value.code == ErrorCode.E090 and name in str(e.value) and "this machine has cpu" in str(e.value)


def test_auto_and_cpu_resolve() -> None:
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto").type == ("cuda" if n_gpus else "cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:7" if n_gpus < 8 else "cuda:99"])
def test_cli_device_is_checked_before_the_spec_or_model(name: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", str(tmp_path / "never-read.yaml"), "--device", name])
    assert r.exit_code == 2 and "error[E090] --device" in r.output and name in r.output


def test_cli_max_memory_is_a_size() -> None:
    r = CliRunner().invoke(app, ["run", "nowhere.yaml", "--max-memory", "lots"])
    assert r.exit_code == 2 and "error[E092] --max-memory" in r.output


@pytest.mark.skipif(n_gpus >= 10, reason="needs fewer than 10 GPUs")
def test_a_spec_device_this_machine_lacks_points_at_the_spec(tmp_path: Path) -> None:
    lines = (Path(__file__).parents[1] / "specs" / "ioi_head_sweep.yaml").read_text().splitlines()
    at = lines.index("model:") + 1
    lines.insert(at, "  device: cuda:9")
    f = tmp_path / "s.yaml"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        api.model_for(api.load_spec(f))
    (d,) = e.value.diagnostics
    assert (d.code, d.line, d.field) == (ErrorCode.E090, at + 1, "model.device")


# -- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,bytes_", [("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("2g", 2 * 10**9),
                                         ("1.5KiB", 1536), (4096, 4096), ("100", 100)])
def test_sizes(text: str | int, bytes_: int) -> None:
    assert memory.parse_size(text) == bytes_


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "8 parsecs", ""])
def test_not_a_size_is_E092(text: str) -> None:
    with pytest.raises(memory.MemoryCapError) as e:
        memory.parse_size(text)
    assert e.value.code == ErrorCode.E092


def test_budget_follows_the_cap_and_the_sequence_length() -> None:
    m = tiny("llama_gqa")
    assert memory.bytes_per_token(m, 64) > memory.bytes_per_token(m, 8)  # attention scores grow with T
    small, large = memory.token_budget(m, 8, "64KiB"), memory.token_budget(m, 8, "1MiB")
    assert small < large and small == max(8, 64 * 1024 // memory.bytes_per_token(m, 8))
    assert memory.budget_bytes("cpu") <= memory.free_bytes("cpu")
    assert memory.token_budget(m, 8, 1) == 8  # at least one row


BATCHES = {"clean": random_batch(8, 8, 1, [8, 8, 8, 8, 6, 6, 6, 6]), "corr": random_batch(8, 8, 2, [8] * 4 + [6] * 4)}


def sweep(m) -> ir.Program:  # type: ignore[no-untyped-def]
    src = ir.Source("run", "corr")
    return ir.Program("s", [ir.Run(f"a{l}.h{h}", "clean", (ir.Op("patch", Node("head", l, h), None, src),))
                            for l in range(m.shape.n_layers) for h in range(m.shape.n_heads)])


def run(ex: Executor, m) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return torch.stack(ex.execute(sweep(m), lambda ds, lg, idx: lg))  # type: ignore[arg-type]


def test_memory_aware_chunks_fit_the_cap_and_give_the_same_numbers() -> None:
    m = tiny("llama_gqa")
    capped = Executor(m, BATCHES, {}, "END", max_tokens=None, max_memory="48KiB")
    chunks = [rows for ds, rows in capped._plan(sweep(m))[0]]
    for r in chunks:  # every chunk within the cap (rows of n tokens: n · bytes_per_token(n) each)
        n = int(BATCHES["clean"].lengths[r.inp].max())
        assert len(r.run) == 1 or len(r.run) * n * memory.bytes_per_token(m, n) <= 48 * 1024
    assert len(chunks) > len(Executor(m, BATCHES, {}, "END")._plan(sweep(m))[0])
    torch.testing.assert_close(run(capped, m), run(Executor(m, BATCHES, {}, "END"), m), atol=1e-5, rtol=1e-5)


def test_a_chunk_out_of_memory_is_split_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny("gpt2")
    want = run(Executor(m, BATCHES, {}, "END"), m)
    real = Executor._run_chunk
    seen: list[int] = []

    def small_device(self, program, ds, rows, readout):  # type: ignore[no-untyped-def]
        seen.append(len(rows.run))
        if len(rows.run) > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(self, program, ds, rows, readout)

    monkeypatch.setattr(Executor, "_run_chunk", small_device)
    ex = Executor(m, BATCHES, {}, "END")
    got = run(ex, m)
    assert ex.splits > 0 and max(seen) > 5 and ex.max_tokens < 32768
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny("gpt2")
    monkeypatch.setattr(Executor, "_run_chunk", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(Executor(m, BATCHES, {}, "END"), m)


# -- device maps ----------------------------------------------------------------------------------

MAP = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cuda:1", "model.layers.2": 1,
       "model.norm": 1, "lm_head": "cpu"}


def test_placement_reads_each_layer_from_the_longest_matching_key() -> None:
    names = [f"model.layers.{l}" for l in range(3)]
    assert devices.layer_devices(MAP, names) == [torch.device("cuda:0"), torch.device("cuda:1"), torch.device("cuda:1")]
    assert devices.module_device(MAP, "model.layers.1.self_attn.q_proj") == torch.device("cuda:1")
    assert devices.module_device(MAP, "model.layers.10") is None  # not "model.layers.1" + "0"
    assert devices.module_device({"": "cpu", "lm_head": 0}, "model.layers.4") == torch.device("cpu")
    assert devices.split_devices(devices.layer_devices(MAP, names)) == [(0, torch.device("cuda:0")),
                                                                       (1, torch.device("cuda:1"))]
    with pytest.raises(devices.DeviceError) as e:
        devices.layer_devices({"lm_head": 0}, names)
    assert e.value.code == ErrorCode.E091


@pytest.mark.parametrize("dm", ["everywhere", {"model.layers.0": "disk"}, {"lm_head": "meta"}]
                         + ([] if n_gpus > 3 else [{"model.layers.0": "cuda:3"}]))
def test_bad_device_maps_are_E091(dm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(devices.DeviceError) as e:
        devices.check_device_map(dm)
    assert e.value.code == ErrorCode.E091


@pytest.mark.parametrize("dm", [{"": "cpu"}, "auto", "balanced", "sequential"])
def test_a_model_placed_by_a_device_map_over_cpu_gives_the_same_numbers(dm) -> None:  # type: ignore[no-untyped-def]
    m = tiny("llama_gqa")
    placed = adapt(place(copy.deepcopy(m.hf), dm))
    assert set(placed.hf.hf_device_map.values()) == {"cpu"}
    assert torch.equal(run(Executor(placed, BATCHES, {}, "END"), placed), run(Executor(m, BATCHES, {}, "END"), m))


# -- example shards -------------------------------------------------------------------------------


def test_a_program_run_shard_by_shard_gives_the_numbers_of_one_run() -> None:
    from intervene import shards

    m = tiny("qwen2")
    want = run(Executor(m, BATCHES, {}, "END"), m)
    built: list[int] = []

    def executor(b):  # type: ignore[no-untyped-def]
        built.append(len(b["clean"]))
        return Executor(m, b, {}, "END")

    got = shards.execute_sharded(sweep(m), BATCHES, 3, executor, lambda e, b: (lambda ds, lg, idx: lg))
    assert built == [3, 3, 2]  # each shard's base passes hold only its examples
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)  # type: ignore[arg-type]


def test_what_cannot_be_sharded_says_why() -> None:
    from intervene import shards

    m = tiny("gpt2")
    assert shards.unshardable(sweep(m)) is None
    head = Node("head", 0, 0)
    for src, why in ((ir.Source("mean", "corr"), "mean over corr"),
                     (ir.Source("run", "corr", pairing="resample", seed=1), "resamples corr")):
        p = ir.Program("p", [ir.Run("r", "clean", (ir.Op("patch", head, None, src),))])
        assert why in shards.unshardable(p)  # type: ignore[operator]
    big = shards.shard_size(m, BATCHES, 2**30)
    assert shards.shard_size(m, BATCHES, 2**20) < big
    assert shards.shard_size(m, BATCHES, 2**20) == max(1, 2**19 // sum(
        shards.base_bytes_per_example(m, 8) for _ in BATCHES))


def test_a_sweep_under_a_small_memory_cap_runs_shard_by_shard_with_the_same_numbers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Through the API: the hand-set additive model's sweep (paired by index) under a cap its
    base passes do not fit in runs in shards, and scores as it does uncapped."""
    from intervene import shards
    from intervene.groundtruth import additive
    from intervene.spec.check import parse_spec

    root = Path(__file__).parents[1] / "specs" / "groundtruth"
    text = (root / "additive_sweep.yaml").read_text().split("  - name: head_sweep_resample")[0]
    spec = parse_spec(text, str(root / "capped.yaml"), base_dir=root)
    lm = additive.load()
    calls: list[int] = []
    real = shards.execute_sharded
    monkeypatch.setattr(shards, "execute_sharded", lambda p, b, size, *a: calls.append(size) or real(p, b, size, *a))
    free = api.run(spec, model=lm)["head_sweep_corrupted"]
    assert not calls
    n = len(api.prepare(spec, model=lm).batches["clean"])
    cap = shards.base_bytes_per_example(lm.adapter, 8) * n  # base passes of both datasets need 2x this
    capped = api.run(spec, model=lm, max_memory=cap)["head_sweep_corrupted"]
    assert calls and calls[0] < n
    for a, b in zip(free.rows, capped.rows):
        assert a.metric.mean == pytest.approx(b.metric.mean, abs=1e-5)


def test_load_model_with_a_device_map() -> None:
    from intervene.groundtruth import additive
    from intervene.models.loading import load_model

    lm = load_model(str(additive.MODEL_DIR), device_map="auto")
    assert lm.adapter.hf.hf_device_map == {"": "cpu"} or set(lm.adapter.hf.hf_device_map.values()) == {"cpu"}
    with pytest.raises(devices.DeviceError) as e:
        load_model(str(additive.MODEL_DIR), device_map={"model": "disk"})
    assert e.value.code == ErrorCode.E091
