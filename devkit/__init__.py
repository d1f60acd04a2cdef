"""Local tooling: servers, event generator, docker-free invoke, local run, benchmarks, soak.

The shared layer's package (`layers/shared/cachesync`) is importable from here
as it is inside Lambda, where the layer sits on the path.
"""

import sys
from pathlib import Path

_LAYER = str(Path(__file__).resolve().parent.parent / "layers" / "shared")
if _LAYER not in sys.path:
    sys.path.append(_LAYER)
