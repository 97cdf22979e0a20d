"""DESIGN.md §6 invariants on the model the specs use: one line per model.

``check_model`` draws random inputs (seeded) and checks that the executor reproduces the
Hugging Face logits, that patching from an identical input changes nothing, that patching
everything from a corrupted input gives the corrupted logits, and that fused runs equal runs
done one at a time. A new model family is property-tested the same way:
``check_model("org/new-model")``; leave ``only`` out to run every invariant.
"""

from intervene.testing.invariants import check_model


def test_the_default_model_keeps_the_invariants(model) -> None:  # type: ignore[no-untyped-def]
    check_model(model, examples=2, only=["identity", "clean_into_clean", "all_corrupted", "fused_equals_sequential"])
