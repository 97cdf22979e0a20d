"""Where SmolLM2's IOI name movers attend, and what every node writes towards the answer.

    python examples/ioi_name_mover_attention.py [--n 8] [--figure docs/img/ioi_name_mover_attention.png]

Runs ``specs/ioi_record.yaml`` (a ``kind: record`` experiment): the attention patterns at END
of every head of layers 16-29, in the clean run and in a run whose S-inhibition candidates
read the ABC-corrupted prompt, then prints the heads that attend most from END to the
indirect object (IO) with how much of their attention goes to IO, the subject's two mentions
(S1, S2) and elsewhere, and their direct logit attribution; the logit lens and the top nodes
by DLA; and draws the attention split as a bar chart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import intervene
from intervene import report

TARGETS = ["IO", "S1", "S2"]


def attention_split(rec: intervene.record.Recording, run: str, head: str, examples: list[dict]) -> dict[str, float]:
    """Mean attention from END to IO, S1, S2 and to every other position, over the prompts."""
    p = rec[run, f"pattern {head}"][:, 0].double().numpy()  # [n, keys]: the one query position, END
    rows = np.arange(len(examples))
    out = {t: float(p[rows, [ex["positions"][t] for ex in examples]].mean()) for t in TARGETS}
    out["other"] = 1.0 - sum(out.values())
    return out


def figure(splits: dict[tuple[str, str], dict[str, float]], runs: list[str], heads: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot()
    width = 0.38
    colors = {"IO": "#2a7ab9", "S1": "#e08a2c", "S2": "#c0392b", "other": "#bbbbbb"}
    for j, run in enumerate(runs):
        x = np.arange(len(heads)) + (j - 0.5) * width
        bottom = np.zeros(len(heads))
        for t in [*TARGETS, "other"]:
            v = np.array([splits[(run, h)][t] for h in heads])
            ax.bar(x, v, width * 0.95, bottom=bottom, color=colors[t], label=t if j == 0 else None,
                   hatch="" if j == 0 else "//", edgecolor="white", linewidth=0.5)
            bottom += v
    ax.set_xticks(np.arange(len(heads)), [f"{h}\n(clean | S-inh. corr.)" for h in heads], fontsize=7)
    ax.set_ylabel("attention from END")
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(ncol=4, fontsize=7, loc="upper center", frameon=False)
    ax.set_title("SmolLM2-135M IOI: heads attending most from END to IO, and a23.h3", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="IOI prompts")
    ap.add_argument("--figure", type=Path, default=None, help="write the bar chart here (PNG)")
    args = ap.parse_args()

    spec = intervene.load_spec(Path(__file__).parent.parent / "specs" / "ioi_record.yaml")
    clean = spec.datasets["clean"].model_copy(update={"n": args.n})
    spec = spec.model_copy(update={"datasets": {**spec.datasets, "clean": clean}})
    res = intervene.run(spec)
    look = res["look"]
    rec = look.recording
    examples = res.datasets["clean"]
    report.print_results(res, top=10, fmt="markdown")

    runs = look.runs
    patterns = [e["what"].removeprefix("pattern ") for e in look.entries
                if e["run"] == runs[0] and e["what"].startswith("pattern ")]
    splits = {(run, h): attention_split(rec, run, h, examples) for run in runs for h in patterns}
    heads = sorted(patterns, key=lambda h: -splits[(runs[0], h)]["IO"])[:5]
    heads += [h for h in ("a23.h3",) if h not in heads]  # the head with the largest patching effect
    print("\n| head | run | END→IO | END→S1 | END→S2 | elsewhere | DLA |\n|---|---|---|---|---|---|---:|")
    for h in heads:
        for run in runs:
            s = splits[(run, h)]
            print(f"| {h} | {run} | {s['IO']:.2f} | {s['S1']:.2f} | {s['S2']:.2f} | {s['other']:.2f} | "
                  f"{look.dla[run][h].mean:+.2f} |")
    if args.figure is not None:
        figure(splits, runs, heads, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
