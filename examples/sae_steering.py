"""Steering SmolLM2 with an SAE latent: train a small SAE, sweep its latents, steer with one.

    python examples/sae_steering.py [--steps 300] [--scales -2 -1 1 2]

1. Train a small sparse autoencoder (256 latents, ReLU + L1) on SmolLM2's residual stream
   entering layer 22, over the tokens of 64 IOI prompts (the attention-sink tokens, whose
   residuals are ~100 times larger, left out), and save it in SAELens's format to
   ``specs/saes/smollm2-r22`` (the folder ``specs/sae_steering.yaml`` names). A real SAE would
   be trained on millions of tokens (SAELens) and only loaded here.
2. Run ``specs/sae_steering.yaml``: every latent at END read from the ABC-corrupted prompt,
   one run per latent, fused into one program.
3. Take the latent that carries the most logit difference and steer with it: add ``scale``
   times its decoder direction to the residual at END (``kind: steer``; ``--scales`` are in
   units of the latent's mean value where it is active), and report the logit
   difference and the change of the next-token distribution (KL from the unsteered model), and
   the tokens its decoder direction writes towards (through the final norm's weight and the
   unembedding; the norm's division by the residual's size left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import intervene
from intervene import api, report
from intervene.sae.train import site_values, train
from intervene.spec import schema

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "sae_steering.yaml"
LAYER, LATENTS = 22, 256


def train_sae(lm: api.LoadedModel, steps: int) -> tuple[Path, torch.Tensor]:
    """Residuals entering layer 22 over 64 IOI prompts (every real token but the attention sinks,
    whose norms are ~100 times the others') -> a saved SAE."""
    data = {"version": 1, "datasets": {"text": {"kind": "ioi", "n": 64, "seed": 7}},
            "metric": {"kind": "logit_diff", "answer": "IO", "wrong": "S"},
            "experiments": [{"name": "none", "kind": "patch", "dataset": "text",
                             "interventions": [{"kind": "patch", "nodes": ["m0"], "source": {"kind": "zero"}}]}]}
    acts = site_values(api.prepare(data, model=lm), "text", f"r{LAYER}")
    norms = acts.norm(dim=1)
    acts = acts[norms < 3 * norms.median()]  # leave out the few attention-sink tokens (norms ~100x the rest)
    sae = train(acts, LATENTS, steps=steps, lr=3e-3, l1=3e-2)
    folder = SPEC.parent / "saes" / f"smollm2-r{LAYER}"
    sae.save(folder, hook_name=f"blocks.{LAYER}.hook_resid_pre")
    with torch.no_grad():
        f = sae.encode(acts)
        fvu = ((sae.decode(f) - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()).item()
    print(f"trained on {len(acts)} residuals: {(f > 0).float().sum(1).mean():.1f} latents active per token, "
          f"fraction of variance unexplained {fvu:.3f}; saved to {folder.relative_to(ROOT)}")
    return folder, f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="SAE training steps")
    ap.add_argument("--scales", type=float, nargs="+", default=[-2.0, -1.0, 1.0, 2.0],
                    help="steering scales, in units of the latent's mean value where it is active")
    args = ap.parse_args()

    lm = api.cached_model("smollm2-135m", None, "float32", "cpu" if not torch.cuda.is_available() else "cuda")
    folder, values = train_sae(lm, args.steps)  # the latents' values on the tokens trained on

    spec = intervene.load_spec(SPEC)
    res = intervene.run(spec, model=lm)
    report.print_results(res, top=6)
    sweep = res["latent_sweep"]
    ranked = [r for r in sweep.top(len(sweep.rows)) if r.key.node is not None and r.key.node.kind == "resid_latent"]
    best = ranked[0]  # the latent carrying the most logit difference
    latent = str(best.key.node)
    i = best.key.node.head  # the latent index
    unit = float(values[:, i][values[:, i] > 0].mean())
    print(f"\nsteering with {latent} at END (normalised effect {best.normalised.mean:+.3f}; mean value where "
          f"active {unit:.2f}, the unit of the scales)")

    from intervene.sae.model import load

    w = load(folder).W_dec[i].to(lm.adapter.device)
    with torch.no_grad():
        logit = lm.adapter.hf.get_output_embeddings().weight @ (lm.adapter.hf.model.norm.weight * w)
    top = [lm.tokenizer.decode([t]) for t in logit.topk(8).indices.tolist()]
    print(f"its decoder direction writes towards: {top}")

    steer = [schema.PatchExperiment(
        name=f"steer_{'m' if s < 0 else 'p'}{abs(s):g}".replace(".", "_"), kind="patch", dataset="clean",
        interventions=(schema.SteerIntervention(kind="steer", nodes=(latent,), positions=("END",),
                                                scale=s * unit),))
        for s in args.scales]
    diff = api.run(spec.model_copy(update={"experiments": tuple(steer)}), model=lm)
    kl = api.run(spec.model_copy(update={"experiments": tuple(steer),
                                         "metric": schema.KlToCleanMetric(kind="kl_to_clean")}), model=lm)
    clean = diff[steer[0].name].m_clean
    print(f"\n{'scale':>7}  {'logit diff':>18}  {'KL(clean ‖ steered)':>20}")
    print(f"{0:>7g}  {clean.mean:>+10.3f} [{clean.lo:+.2f}, {clean.hi:+.2f}]  {0:>20.4f}")
    for s, e in zip(args.scales, steer):
        m, k = diff[e.name].row.metric, kl[e.name].row.metric
        print(f"{s:>+7g}  {m.mean:>+10.3f} [{m.lo:+.2f}, {m.hi:+.2f}]  {k.mean:>20.4f}")


if __name__ == "__main__":
    main()
