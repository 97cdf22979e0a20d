"""Modules callable as an API function: ``intervene.discover(...)`` and ``intervene.record(...)``
are modules (their helpers and types live there) that also run :mod:`intervene.api`'s function
of the same purpose. Pure Python; :mod:`intervene.api` is imported on the first call."""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module: str, function: str) -> None:
    """Make the loaded module ``module`` callable as ``intervene.api.<function>``."""

    class _Callable(types.ModuleType):
        __doc__ = f"{module}, callable as intervene.api.{function}."

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from intervene import api

            return getattr(api, function)(*args, **kwargs)

    sys.modules[module].__class__ = _Callable
