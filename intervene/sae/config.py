"""Reading an SAE folder in SAELens's format without torch: ``cfg.json`` and the tensor shapes in
``sae_weights.safetensors``'s header.

What it owns: what a supported SAE folder *is*, checked before any weight is loaded, so that
``intervene check`` can refuse a folder with a clear message. A folder holds

* ``cfg.json``: ``d_in``, ``d_sae``, ``architecture`` (``standard``, ``jumprelu``, ``topk``;
  older files say ``activation_fn_str: topk`` with ``activation_fn_kwargs: {k: ...}``), ``k``
  (topk), ``apply_b_dec_to_input``, ``normalize_activations`` and ``hook_name`` (at the top
  level or under ``metadata``/``meta``);
* ``sae_weights.safetensors``: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec``
  [d_sae, d_in], ``b_dec`` [d_in], and ``threshold`` [d_sae] for JumpReLU.

Refused (:class:`SaeConfigError`, with the spec error code to report): other architectures
(gated, batchtopk, transcoders with ``d_out`` or ``hook_name_out``), ``normalize_activations``
other than ``none``, SAEs on attention heads' z (``hook_z`` reshaping, ``hook_head_index``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk")
MAX_HEADER = 1 << 24
"""The largest safetensors header read (16 MiB: an SAE's has a handful of entries)."""


class SaeConfigError(ValueError):
    """A folder that is not a supported SAE; ``code`` is the spec error code's slug."""

    def __init__(self, message: str, hint: str | None, code: str) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


@dataclass(frozen=True)
class SaeConfig:
    """The facts of a supported SAE folder."""

    path: Path
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    apply_b_dec_to_input: bool
    hook_name: str | None
    shapes: dict[str, tuple[int, ...]]


def _meta(cfg: dict[str, Any], key: str) -> Any:
    for holder in (cfg, cfg.get("metadata"), cfg.get("meta")):
        if isinstance(holder, dict) and holder.get(key) is not None:
            return holder[key]
    return None


def header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SaeConfigError(f"{path.name} is not a safetensors file (too short)", None, "bad-sae-config")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER:
            raise SaeConfigError(f"{path.name}: a header of {n:,} bytes is not an SAE's", None, "bad-sae-config")
        try:
            out = json.loads(f.read(n))
        except ValueError as e:
            raise SaeConfigError(f"{path.name} is not a safetensors file ({e})", None, "bad-sae-config") from None
    if not isinstance(out, dict):
        raise SaeConfigError(f"{path.name} is not a safetensors file", None, "bad-sae-config")
    return out


def read(folder: str | Path) -> SaeConfig:
    """The checked facts of an SAE folder; :class:`SaeConfigError` says what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SaeConfigError(f'SAE folder "{folder}" does not exist', "paths are relative to the spec file",
                             "sae-not-found")
    for name in (CFG, WEIGHTS):
        if not (folder / name).is_file():
            raise SaeConfigError(f'SAE folder "{folder}" has no {name}',
                                 f"an SAELens folder holds {CFG} and {WEIGHTS} (SAE.save_model writes them)",
                                 "sae-not-found")
    try:
        cfg = json.loads((folder / CFG).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise SaeConfigError(f"{folder / CFG} is not JSON ({e})", None, "bad-sae-config") from None
    if not isinstance(cfg, dict):
        raise SaeConfigError(f"{folder / CFG} is not a JSON object", None, "bad-sae-config")
    arch = cfg.get("architecture") or "standard"
    k = cfg.get("k")
    if cfg.get("activation_fn_str") == "topk":  # SAELens before version 6
        arch, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    if cfg.get("d_out") is not None or _meta(cfg, "hook_name_out") is not None or "transcoder" in str(arch):
        raise SaeConfigError(f"{folder.name}: transcoders are not supported yet", "attach an SAE (input = output "
                             "site); a transcoder reads the MLP's input and writes its output", "unsupported-sae")
    if arch not in ARCHITECTURES:
        raise SaeConfigError(f'{folder.name}: architecture "{arch}" is not supported',
                             f"supported: {', '.join(ARCHITECTURES)}", "unsupported-sae")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            raise SaeConfigError(f"{folder / CFG}: {key} must be a positive integer, got {cfg.get(key)!r}",
                                 None, "bad-sae-config")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise SaeConfigError(f'{folder.name}: normalize_activations "{norm}" is not supported',
                             "fold the scaling into the weights and save with normalize_activations: none",
                             "unsupported-sae")
    if cfg.get("reshape_activations", "none") not in (None, "none") or _meta(cfg, "hook_head_index") is not None:
        raise SaeConfigError(f"{folder.name}: SAEs on attention heads' outputs (hook_z) are not supported",
                             "attach SAEs at a residual (r{l}) or an MLP output (m{l})", "unsupported-sae")
    if arch == "topk" and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg["d_sae"]):
        raise SaeConfigError(f"{folder / CFG}: a topk SAE needs k between 1 and d_sae, got {k!r}", None,
                             "bad-sae-config")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,),
            **({"threshold": (d_sae,)} if arch == "jumprelu" else {})}
    head = header(folder / WEIGHTS)
    shapes = {name: tuple(v.get("shape", ())) for name, v in head.items() if isinstance(v, dict)}
    for name, shape in want.items():
        if name not in shapes:
            raise SaeConfigError(f"{folder / WEIGHTS} has no tensor {name}", f"a {arch} SAE has "
                                 f"{', '.join(want)}", "bad-sae-config")
        if shapes[name] != shape:
            raise SaeConfigError(f"{folder / WEIGHTS}: {name} has shape {list(shapes[name])}, cfg.json's d_in "
                                 f"{d_in} and d_sae {d_sae} need {list(shape)}", None, "bad-sae-config")
    hook = _meta(cfg, "hook_name")
    return SaeConfig(folder, arch, d_in, d_sae, k if arch == "topk" else None,
                     bool(cfg.get("apply_b_dec_to_input", True)), hook if isinstance(hook, str) else None, shapes)
