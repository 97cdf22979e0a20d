"""What a loaded model must be for the executor to reproduce it, checked when it is loaded.

What it owns: :class:`ModelLoadError` (with its spec error code: ``E019`` for a family with no
adapter, ``E040`` for a configuration the adapter cannot reproduce), :class:`Refusal` (one
configuration field the executor would compute differently from Hugging Face), and the checks
shared by every family. Each adapter adds its family's own checks
(:meth:`intervene.models.adapters.Adapter.refusals`); :func:`intervene.models.adapters.adapt`
raises on the first model that has any, so a model is never run approximately (DESIGN.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intervene.errors import ErrorCode, InterveneError

SOFTCAP_FIELDS = ("attn_logit_softcapping", "final_logit_softcapping")
BATCH_DEPENDENT_ROPE = {
    "dynamic": "its frequencies grow with the longest sequence in the batch",
    "longrope": "it switches frequency sets on the longest sequence in the batch",
}


class ModelLoadError(InterveneError, RuntimeError):
    """The model could not be found, loaded or reproduced; the message says what to fix.

    ``code`` is the spec error code when there is one (``E019`` unsupported-model, ``E040``
    unsupported-configuration); ``field`` and ``value`` name the configuration entry refused."""

    def __init__(self, message: str, code: ErrorCode | None = None, field: str | None = None,
                 value: object = None) -> None:
        super().__init__(message)
        self.code, self.field, self.value = code, field, value


@dataclass(frozen=True)
class Refusal:
    """One configuration entry the executor would not reproduce, and why."""

    field: str
    value: object
    why: str

    def error(self, model_type: str) -> ModelLoadError:
        text = (f"{ErrorCode.E040.value} {ErrorCode.E040.slug}: {model_type} config {self.field}={self.value!r} "
                f"is not supported: {self.why}")
        return ModelLoadError(text, ErrorCode.E040, self.field, self.value)


def common_refusals(hf: Any, rope: bool, softcap: bool = False) -> list[Refusal]:
    """Checks every family shares: logit soft-capping (unless the family implements it:
    ``softcap``), quantised weights (per-head slices of packed integers are meaningless) and,
    with ``rope``, rotary scalings whose frequencies depend on the batch (the executor's chunks
    are not Hugging Face's batches)."""
    c = hf.config
    out = [] if softcap else [
        Refusal(f, getattr(c, f), "attention and logit soft-capping are not implemented for this family")
        for f in SOFTCAP_FIELDS if getattr(c, f, None) is not None]
    packed = sorted({str(p.dtype) for p in hf.parameters() if not p.dtype.is_floating_point})
    if packed:
        out.append(Refusal("quantization_config", getattr(c, "quantization_config", None),
                           f"weights stored as {', '.join(packed)} cannot be split per head; load a "
                           "de-quantised (float) copy"))
    if rope:
        params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
        if not isinstance(params, dict):
            params = {}
        # one set of parameters, or one per layer type (Gemma 3: {"sliding_attention": {...}, ...})
        nested = {k: v for k, v in params.items() if isinstance(v, dict)}
        for where, p in (nested.items() if nested else [("", params)]):
            kind = p.get("rope_type", p.get("type", "default"))
            if kind in BATCH_DEPENDENT_ROPE:
                field = f"rope_parameters.{where}.rope_type" if where else "rope_parameters.rope_type"
                out.append(Refusal(field, kind,
                                   f"{BATCH_DEPENDENT_ROPE[kind]}, so a fused, chunked run would not equal the model"))
    return out
