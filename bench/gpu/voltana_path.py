"""``import voltana`` from a plain checkout on a GPU host (the repository root is the package).

Standard library only, so the scripts beside it can call it before anything else
is importable.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def ensure_voltana() -> None:
    """Load the checkout two folders up as the ``voltana`` package, unless it is importable."""
    try:
        import voltana  # noqa: F401
    except ImportError:
        root = Path(__file__).resolve().parents[2]
        spec = importlib.util.spec_from_file_location(
            "voltana", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the voltana package from {root}") from None
        module = importlib.util.module_from_spec(spec)
        sys.modules["voltana"] = module
        spec.loader.exec_module(module)
