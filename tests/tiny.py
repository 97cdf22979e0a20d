"""Re-export of :mod:`intervene.testing.tiny` (the tiny-model factory now lives in the package)."""

from intervene.testing.tiny import CONFIGS, FAMILIES, VOCAB, random_batch, tiny  # noqa: F401
