"""Benchmarks, soak, load generator, fault proxy and the reference model.

What measures cachesync or checks it, kept apart from the commands a user runs (devkit).
"""

import devkit  # noqa: F401  (puts the shared layer's package, cachesync, on the path for every harness module)
