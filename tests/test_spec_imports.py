"""The spec layer must load without torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_spec_layer_does_not_import_torch() -> None:
    code = (
        "import sys; import intervene.spec, intervene.errors; from intervene import spec;"
        "spec.load_spec('tests/valid/ioi_full.yaml'); spec.parse_expression('IO - S');"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
