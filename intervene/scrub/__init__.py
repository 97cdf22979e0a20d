"""Causal scrubbing (DESIGN.md §5): features, hypotheses, treeified draws, one batched pass, scores."""
