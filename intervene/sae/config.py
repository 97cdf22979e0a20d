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

A **transcoder** (SAELens's ``Transcoder``, ``SkipTranscoder``, ``JumpReLUTranscoder``:
architectures ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``) reads an MLP's input
and predicts its output: its ``cfg.json`` adds ``d_out`` and ``hook_name_out``, ``W_dec`` is
[d_sae, d_out], ``b_dec`` [d_out], and a skip transcoder has ``W_skip`` [d_out, d_in]. Its
``hook_name`` says which input it reads (:data:`TRANSCODER_INPUTS`), its ``hook_name_out`` must
be the same layer's MLP output (:data:`TRANSCODER_OUTPUTS`), ``d_out`` must equal ``d_in``, and
``apply_b_dec_to_input`` must be false (SAELens refuses it too: ``b_dec`` is an output bias).

Refused (:class:`SaeConfigError`, with the spec error code to report): other architectures
(gated, batchtopk), transcoders reading or writing other hooks, ``normalize_activations``
other than ``none``, SAEs on attention heads' z (``hook_z`` reshaping, ``hook_head_index``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk")
TRANSCODERS = {"transcoder": "standard", "skip_transcoder": "standard", "jumprelu_transcoder": "jumprelu"}
"""SAELens's transcoder architectures and the activation each encodes with."""
TRANSCODER_INPUTS = {"ln2.hook_normalized": "normalized", "mlp.hook_in": "mlp_in", "hook_resid_mid": "resid",
                     "hook_mlp_in": "resid"}
"""TransformerLens hook names (``blocks.{l}.<name>``) a transcoder may read, and what each is in
the model: ``normalized`` -- the residual the MLP reads through its norm *without* the norm's
weight and bias (TransformerLens's ``ln2.hook_normalized``: Gemma Scope's transcoders);
``mlp_in`` -- the MLP's actual input, the norm's output (circuit-tracer's ``mlp.hook_in``, as
SAELens loads its Llama and Qwen3 transcoders); ``resid`` -- the residual before the norm."""
TRANSCODER_OUTPUTS = ("hook_mlp_out", "mlp.hook_out")
"""Hook names a transcoder may write: the MLP's write to the residual stream (``m{l}``)."""
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
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
    d_out: int | None = None  # a transcoder's (= d_in); None for an SAE
    reads: str | None = None  # a transcoder's input (a value of TRANSCODER_INPUTS); None for an SAE
    hook_name_in: str | None = None  # a transcoder's hook_name and hook_name_out as cfg.json has them
    hook_name_out: str | None = None

    @property
    def transcoder(self) -> bool:
        return self.reads is not None


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
    tc = isinstance(arch, str) and arch in TRANSCODERS
    said_out = cfg.get("d_out") is not None or _meta(cfg, "hook_name_out") is not None
    if not tc and (said_out or "transcoder" in str(arch)):
        raise SaeConfigError(f'{folder.name}: a transcoder of architecture "{arch}" is not supported',
                             f"supported transcoders: {', '.join(TRANSCODERS)}", "unsupported-sae")
    if not tc and arch not in ARCHITECTURES:
        raise SaeConfigError(f'{folder.name}: architecture "{arch}" is not supported',
                             f"supported: {', '.join(ARCHITECTURES + tuple(TRANSCODERS))}", "unsupported-sae")
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
    io = _transcoder_io(folder, cfg, arch) if tc else None
    d_out = d_in
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,),
            **({"threshold": (d_sae,)} if arch in ("jumprelu", "jumprelu_transcoder") else {}),
            **({"W_skip": (d_out, d_in)} if arch == "skip_transcoder" else {})}
    head = header(folder / WEIGHTS)
    shapes = {name: tuple(v.get("shape", ())) for name, v in head.items() if isinstance(v, dict)}
    for name, shape in want.items():
        if name not in shapes:
            raise SaeConfigError(f"{folder / WEIGHTS} has no tensor {name}", f"a {arch} SAE has "
                                 f"{', '.join(want)}", "bad-sae-config")
        if shapes[name] != shape:
            raise SaeConfigError(f"{folder / WEIGHTS}: {name} has shape {list(shapes[name])}, cfg.json's d_in "
                                 f"{d_in} and d_sae {d_sae} need {list(shape)}", None, "bad-sae-config")
    if io is not None:  # hook_name: the MLP output's TransformerLens name (what spec checks compare with site)
        layer, reads, hook_in, hook_out = io
        return SaeConfig(folder, arch, d_in, d_sae, None, False, f"blocks.{layer}.hook_mlp_out", shapes, d_out,
                         reads, hook_in, hook_out)
    hook = _meta(cfg, "hook_name")
    return SaeConfig(folder, arch, d_in, d_sae, k if arch == "topk" else None,
                     bool(cfg.get("apply_b_dec_to_input", True)), hook if isinstance(hook, str) else None, shapes)


def _transcoder_io(folder: Path, cfg: dict[str, Any], arch: str) -> tuple[int, str, str, str]:
    """(layer, what it reads, hook_name, hook_name_out) of a transcoder's ``cfg.json``, checked."""
    where = folder / CFG
    if cfg.get("d_out") != cfg["d_in"]:
        raise SaeConfigError(f"{where}: a transcoder at an MLP reads and writes the residual's width, but d_in is "
                             f"{cfg['d_in']} and d_out {cfg.get('d_out')!r}", "d_in and d_out are both d_model",
                             "sae-size-mismatch")
    if cfg.get("apply_b_dec_to_input"):
        raise SaeConfigError(f"{folder.name}: apply_b_dec_to_input is true, but a transcoder's b_dec is an output "
                             "bias", "save it with apply_b_dec_to_input: false (SAELens refuses true too)",
                             "unsupported-sae")
    names = {"hook_name": _meta(cfg, "hook_name"), "hook_name_out": _meta(cfg, "hook_name_out")}
    allowed = {"hook_name": TRANSCODER_INPUTS, "hook_name_out": TRANSCODER_OUTPUTS}
    layers: dict[str, int] = {}
    for key, name in names.items():
        m = _HOOK.match(name) if isinstance(name, str) else None
        if m is None or m.group(2) not in allowed[key]:
            raise SaeConfigError(f"{where}: a transcoder's {key} {name!r} is not supported",
                                 f"supported: blocks.<layer>.{{{','.join(allowed[key])}}}", "unsupported-sae")
        layers[key] = int(m.group(1))
    if layers["hook_name"] != layers["hook_name_out"]:
        raise SaeConfigError(f"{where}: hook_name {names['hook_name']!r} and hook_name_out "
                             f"{names['hook_name_out']!r} are in different layers", "a transcoder replaces one "
                             "layer's MLP: both hooks name that layer", "bad-sae-site")
    reads = TRANSCODER_INPUTS[_HOOK.match(names["hook_name"]).group(2)]  # type: ignore[union-attr]
    return layers["hook_name"], reads, names["hook_name"], names["hook_name_out"]  # type: ignore[return-value]
