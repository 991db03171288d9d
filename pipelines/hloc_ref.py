"""hloc's source (``../shared/refs/hloc-src``, not on PyPI) as a reference for benchmarks: import it."""

from __future__ import annotations

import sys
import types
from pathlib import Path

#: where the workplace keeps hloc's source (see its SOURCE.txt)
HLOC_SRC = Path(__file__).resolve().parents[2] / "shared" / "refs" / "hloc-src"


def import_match_dense(src: Path = HLOC_SRC):
    """``hloc.match_dense`` from ``src``. torchvision, which only hloc's own dense matching needs, is stubbed
    when it is not installed (the benchmarks use hloc's aggregation and assignment on our raw matches)."""
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    try:
        import torchvision.transforms.functional  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                            "torchvision.transforms.functional": tv.transforms.functional})
    from hloc import match_dense

    return match_dense
