"""Run the IOI head sweep from Python, then patch the top heads together.

    python examples/ioi_from_python.py [--n 16]

Shows the three things the API is for: load and check a spec, run it (one fused program),
and read the numbers (means with bootstrap intervals), then build a follow-up experiment in
code from what the sweep found.
"""

from __future__ import annotations

import argparse

import intervene
from intervene import api, report
from intervene.spec import schema


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="IOI prompts")
    args = ap.parse_args()

    spec = intervene.load_spec("specs/ioi_head_sweep.yaml")
    # A smaller copy of the spec: specs are frozen pydantic models, so derive a new one.
    clean = spec.datasets["clean"].model_copy(update={"n": args.n})
    spec = spec.model_copy(update={"datasets": {**spec.datasets, "clean": clean}})

    res = intervene.run(spec)
    sweep = res["head_sweep"]
    report.print_results(res, top=8)

    top = [str(r.key.node) for r in sweep.top(5) if r.normalised and r.normalised.mean > 0]
    print(f"\npatching the top heads together: {top}")
    together = schema.PatchExperiment(
        name="top_heads", kind="patch", dataset="clean",
        interventions=(schema.PatchIntervention(kind="patch", nodes=tuple(top), source=schema.DatasetSource(
            kind="dataset", dataset="corrupted")),))
    spec2 = spec.model_copy(update={"experiments": (together,)})
    res2 = api.run(spec2)
    row = res2["top_heads"].row
    print(f"all {len(top)} heads patched: logit diff {row.metric.mean:.3f} "
          f"[{row.metric.lo:.3f}, {row.metric.hi:.3f}], normalised {row.normalised.mean:.3f}" if row.normalised else "")


if __name__ == "__main__":
    main()
