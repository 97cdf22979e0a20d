"""Files the library writes: atomically, with the usual permissions, and what goes in them.

What it owns: :func:`write_atomic` (a temporary file beside the target, renamed into place,
with the mode any new file would get under the process's umask — 0644 under umask 022 — not
mkstemp's 0600), :func:`jsonable` (a value as it reads back from JSON) and
:func:`environment` (the versions a results file records). The results file
(:mod:`intervene.results`) and the test plugin's cache (:mod:`intervene.testing.spectest`)
write through it.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place. The file gets
    the permissions any new file would (0644 under umask 022), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask: from /proc where Linux has it (reading it there changes nothing),
    else by setting it and straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def jsonable(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples become lists, other objects their ``str``), so
    that what is kept in memory equals what :meth:`intervene.results.Results.load` gives."""
    return json.loads(json.dumps(x, default=str))


def environment() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    import numpy as np
    import torch
    import transformers

    from intervene import __version__

    return {"intervene": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform()}
