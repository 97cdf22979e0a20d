"""Feature circuits (intervene.sae.circuits, docs/sae.md "Feature circuits"): circuits of SAE
latents and error nodes, lowered to SAE patch ops, against the literal computation on the
Hugging Face model (hooks rewriting each site's value as decode(f') + err'), scored from a spec,
and their check-time errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import Tensor

from reference import hf_end_logits

from intervene import api, ir, scores
from intervene.graph import Node
from intervene.sae.circuits import FeatureCircuit, feature_run, site_nodes
from intervene.sae.model import Sae
from intervene.testing import invariants as inv
from intervene.testing.tiny import tiny
from test_sae import INDUCTION, N, err, latent, random_sae

SITES = ("r1", "m2")


def site_node(site: str) -> Node:
    return Node("resid" if site[0] == "r" else "mlp", int(site[1:]))


def circuit(nodes: list[Node], name: str = "c") -> FeatureCircuit:
    return FeatureCircuit.of(nodes, [(site_node(s), N) for s in SITES], name)


def hf_edit(m, batch, edits: dict[str, Callable[[Tensor], Tensor]],  # type: ignore[no-untyped-def]
            grab: dict[str, Tensor] | None = None) -> Tensor:
    """Logits at END of the Hugging Face model with each site's value ``x`` replaced by
    ``edits[site](x)`` (and recorded in ``grab``)."""
    layers = m.hf.model.layers
    hooks = []

    def edit(site: str, x: Tensor) -> Tensor:
        if grab is not None:
            grab[site] = x.detach().clone()
        return edits[site](x) if site in edits else x

    for site in set(edits) | set(SITES if grab is not None else ()):
        l = int(site[1:])
        if site[0] == "r":
            hooks.append(layers[l].register_forward_pre_hook(
                lambda _, args, kw, s=site: ((edit(s, args[0]),) + args[1:], kw) if args
                else (args, {**kw, "hidden_states": edit(s, kw["hidden_states"])}), with_kwargs=True))
        else:
            hooks.append(layers[l].mlp.register_forward_hook(lambda _, __, out, s=site: edit(s, out)))
    with torch.no_grad():
        return hf_end_logits(m, batch, hooks)


def literal(m, batches, saes: dict[str, Sae], kept: set[Node], source: str | None) -> Tensor:  # type: ignore[no-untyped-def]
    """The feature circuit by hand: at each site, f' = the kept latents' own values, the others'
    from the source run (``corr``; None: zero), the same for the error; the site := decode(f') + err'."""
    src: dict[str, Tensor] = {}
    if source is not None:
        hf_edit(m, batches[source], {}, grab=src)

    def fn(site: str) -> Callable[[Tensor], Tensor]:
        sae = saes[site]

        def go(x: Tensor) -> Tensor:
            f = sae.encode(x)
            e = x - sae.decode(f)
            fs = sae.encode(src[site]) if source is not None else torch.zeros_like(f)
            es = src[site] - sae.decode(fs) if source is not None else torch.zeros_like(e)
            keep = torch.tensor([latent(site, i) in kept for i in range(N)])
            f2 = torch.where(keep, f, fs)
            e2 = e if err(site) in kept else es
            return sae.decode(f2) + e2
        return go

    return hf_edit(m, batches["clean"], {s: fn(s) for s in SITES})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # type: ignore[no-untyped-def]
    m = tiny("llama_gqa")
    batches = inv.standard_batches(m)
    saes = {s: random_sae("standard", seed=k + 3) for k, s in enumerate(SITES)}
    refs = {s: ir.Sae(s, s, str(sae.save(tmp_path_factory.mktemp(s))), "standard", N) for s, sae in saes.items()}
    return m, batches, saes, refs


def executed(setup, c: FeatureCircuit, source: ir.Source) -> Tensor:  # type: ignore[no-untyped-def]
    m, batches, _, refs = setup
    return inv._execute(m, batches, [feature_run(c, "clean", source)], saes=refs)[0]


CORR = ir.Source("run", "corr")


def test_every_node_kept_is_the_model(setup) -> None:  # type: ignore[no-untyped-def]
    m, batches, _, _ = setup
    full = circuit([]).full()
    assert feature_run(full, "clean", CORR).ops == ()  # nothing to patch: M is the model itself
    assert len(full) == 2 * (N + 1) and set(full.units) == set(site_nodes(full.sites))
    c = circuit(list(full.units))  # the same nodes, named: still the untouched model
    torch.testing.assert_close(executed(setup, c, CORR), hf_edit(m, batches["clean"], {}), atol=1e-5, rtol=0)


@pytest.mark.parametrize("source", ["corr", None])
def test_nothing_kept_is_every_node_from_the_source(setup, source: str | None) -> None:  # type: ignore[no-untyped-def]
    m, batches, saes, _ = setup
    empty = circuit([]).empty()
    got = executed(setup, empty, CORR if source else ir.Source("zero"))
    torch.testing.assert_close(got, literal(m, batches, saes, set(), source), atol=1e-5, rtol=0)
    if source:  # decode(f_src) + err_src is the source's value: ∅ reads both sites from the source
        grabbed: dict[str, Tensor] = {}
        hf_edit(m, batches["corr"], {}, grab=grabbed)
        want = hf_edit(m, batches["clean"], {s: lambda x, s=s: grabbed[s] for s in SITES})
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("source", ["corr", None])
def test_circuit_is_the_literal_computation(setup, source: str | None) -> None:  # type: ignore[no-untyped-def]
    """Some latents of r1 and m2 and r1's error kept: the executor's run equals the Hugging Face
    model with both sites rewritten (m2's latents computed from its value after r1's edit)."""
    m, batches, saes, _ = setup
    kept = {latent("r1", i) for i in (0, 3, 5, 7, 11, 20)} | {latent("m2", i) for i in (1, 2, 9)} | {err("r1")}
    got = executed(setup, circuit(sorted(kept)), CORR if source else ir.Source("zero"))
    want = literal(m, batches, saes, kept, source)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    clean = hf_edit(m, batches["clean"], {})
    assert (got - clean).abs().max() > 1e-3  # the ablation mattered: the test can fail


def test_algebra_and_keys() -> None:
    """C ∖ K drops nodes and keeps the sites; ∅ at other sites is another circuit (another key);
    the unit order is the forward order."""
    a, b = latent("r1", 4), err("m2")
    c = circuit([b, a])
    assert c.units == (a, b) and len(c) == 2
    smaller = c.without([a])
    assert isinstance(smaller, FeatureCircuit) and smaller.units == (b,) and smaller.sites == c.sites
    assert scores.circuit_key(smaller) == scores.circuit_key(circuit([b], "other name"))
    only_r1 = FeatureCircuit.of([], [(site_node("r1"), N)])
    assert scores.circuit_key(only_r1) != scores.circuit_key(c.empty())
    run = feature_run(c, "clean", CORR, key=("circuit",))
    assert len(run.ops) == 2 * (N + 1) - 2 and all(op.source == CORR and op.positions is None for op in run.ops)
    assert "latents" in str(ir.Program("p", [run]))  # printed as one line per site, not one per latent


# -- from a spec ---------------------------------------------------------------------------------

TRIPLES = [(3, 9, 20), (4, 11, 30), (5, 13, 40), (6, 15, 50), (7, 17, 22), (8, 19, 33)]


def write_spec(tmp: Path, experiments: str, circuits: str) -> Path:
    """A spec on the small induction model with a trained SAE at r1 (16 latents) and one at m0."""
    from intervene.sae.train import train

    rows = lambda last: "".join(json.dumps({"text": f"t{a} t{b} t{c} t{last(a, c)}", "answers": {"B": f" t{b}"},  # noqa: E731
                                            "positions": {"END": -1}}) + "\n" for a, b, c in TRIPLES)
    (tmp / "clean.jsonl").write_text(rows(lambda a, c: a))
    (tmp / "corr.jsonl").write_text(rows(lambda a, c: c + 1))
    head = f"""version: 1
model: {{name: {INDUCTION}, device: cpu}}
datasets:
  clean: {{kind: jsonl, path: clean.jsonl}}
  corr: {{kind: jsonl, path: corr.jsonl}}
metric: {{kind: logprob, answer: B}}
"""
    saes = "saes:\n  res1: {path: sae_r1, site: r1}\n  mlp0: {path: sae_m0, site: m0}\n"
    f = tmp / "spec.yaml"
    if not (tmp / "sae_r1").exists():
        f.write_text(head + "experiments:\n  - {name: s, kind: sweep, dataset: clean, targets: [m0], source: {kind: zero}}\n")
        p = api.prepare(f)
        from intervene.sae.train import site_values

        train(site_values(p, "clean", "r1"), 16, steps=80).save(tmp / "sae_r1")
        train(site_values(p, "clean", "m0"), 8, steps=80).save(tmp / "sae_m0")
    f.write_text(head + saes + "experiments:\n" + experiments + ("circuits:\n" + circuits if circuits else ""))
    return f


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fc")
    write_spec(tmp, "", "")
    return tmp


def test_spec_scores_feature_circuits(spec_dir: Path) -> None:
    """Scored from a spec: keeping every node is M (F = 1 exactly); ∅ equals patching both
    sites from the source (an independent path: plain node patches); the circuit's units are its
    nodes; the compiled program prints the SAE ops."""
    few = "completeness: {random: 1, greedy: 1}, minimality: {samples: 0}"
    f = write_spec(spec_dir, f"""  - {{name: all, kind: circuit, dataset: clean, circuit: everything, ablate: {{kind: dataset, dataset: corr}},
     {few}}}
  - {{name: some, kind: circuit, dataset: clean, circuit: some, ablate: {{kind: dataset, dataset: corr}}, {few}}}
  - name: both
    kind: patch
    dataset: clean
    interventions: [{{kind: patch, nodes: [r1, m0], source: {{kind: dataset, dataset: corr}}}}]
""", """  everything: {nodes: ["r1.sae[*]", r1.sae.err, "m0.sae[*]", m0.sae.err]}
  some:
    groups: {early: ["m0.sae[0..2]", m0.sae.err]}
    nodes: [early, "r1.sae[1,4]"]
""")
    assert api.check(f) == []
    p = api.prepare(f)
    text = str(p.program)
    assert "16 latents" in text or "latents" in text
    res = api.run(f)
    whole, some = res["all"], res["some"]
    assert whole.m_circuit.mean == whole.m_full.mean and whole.faithfulness.mean == 1.0
    both = res["both"].row.metric.mean
    assert some.m_empty.mean == pytest.approx(both, abs=1e-5) and whole.m_empty.mean == pytest.approx(both, abs=1e-5)
    assert abs(some.m_empty.mean - some.m_full.mean) > 1e-3  # the ablation moves the metric
    assert sorted(str(m.unit) for m in some.minimality) == sorted(
        ["m0.sae[0]", "m0.sae[1]", "m0.sae[2]", "m0.sae.err", "r1.sae[1]", "r1.sae[4]"])
    assert some.completeness is not None and str(some["r1.sae[4]"].unit) == "r1.sae[4]"


@pytest.mark.parametrize("case, code, value", [
    ("mixed", "E127", "m0"), ("edges", "E127", "m0 -> logits"), ("positions", "E127", "r1.sae[0]@END"),
    ("range", "E126", "r1.sae[16]"), ("nosae", "E125", "r0.sae[1]"), ("group", "E023", "nowhere")])
def test_check_errors(spec_dir: Path, case: str, code: str, value: str) -> None:
    body = {"mixed": '{nodes: ["r1.sae[0]", m0]}', "edges": '{nodes: ["r1.sae[0]"], edges: ["m0 -> logits"]}',
            "positions": '{nodes: ["r1.sae[0]@END"]}', "range": '{nodes: ["r1.sae[16]"]}',
            "nosae": '{nodes: ["r0.sae[1]"]}', "group": '{groups: {g: ["r1.sae[0]"]}, nodes: [g, nowhere]}'}[case]
    f = write_spec(spec_dir, "  - {name: fc, kind: circuit, dataset: clean, circuit: c, ablate: {kind: zero}}\n",
                   f"  c: {body}\n")
    diags = api.check(f)
    got = [d for d in diags if d.code.value == code]
    assert got, [d.format() for d in diags]
    line = next(i for i, text in enumerate(f.read_text().splitlines(), 1) if text.startswith("  c:"))
    assert got[0].line == line and got[0].value == value
