"""Ground-truth models: small models whose mechanism is known exactly (DESIGN.md §7).

Test fixtures and worked examples for circuit discovery and causal scrubbing
(docs/groundtruth.md):

* `intervene.groundtruth.additive` -- a hand-set two-layer GPT-2: the answer ``p{x}_{y}`` to
  ``x y z`` gets +5 from a1.h0 (copies the token at X) and +5 from a1.h1 (copies the token at
  Y) and nothing from anything else; other heads copy tokens into directions nobody reads.
* `intervene.groundtruth.induction` -- a two-layer attention-only transformer trained on
  ``... A B ... A`` -> ``B``: previous-token head a0.h1, induction heads a1.h0-a1.h3; weights
  committed under ``models/induction``.
* `intervene.groundtruth.tokenizer` -- the word-level tokenizer both use (``" t5"`` is one
  token; ``<bos>`` added in front).
* `intervene.groundtruth.common` -- JSONL export, loading a model folder, attention patterns.

Each task module has ``dataset(n, seed)`` and ``corrupted(base, seed)`` (`intervene.data.Dataset`
objects), ``write_data()`` (the JSONL files under ``specs/groundtruth/data``), ``load()`` (an
`intervene.models.loading.LoadedModel`) and ``MODEL_DIR``. Rebuild everything with
``python -m intervene.groundtruth.additive`` and ``python -m intervene.groundtruth.induction
--train``.
"""

from intervene.groundtruth import additive, induction
from intervene.groundtruth.common import attention_patterns, load_folder, write_jsonl
from intervene.groundtruth.tokenizer import word_tokenizer

__all__ = ["additive", "attention_patterns", "induction", "load_folder", "word_tokenizer", "write_jsonl"]
