"""Lambda SnapStart runtime hooks, registered where the runtime looks for them.

With SnapStart, Lambda runs a function's initialization when a version is published,
snapshots the process, and later resumes copies of that snapshot instead of starting
cold. `before_snapshot` hooks run once, before the snapshot (in the reverse order of
registration); `after_restore` hooks in each resumed copy, before its first request (in
the order of registration). The `snapshot_restore_py` library that holds them ships with
Lambda's Python runtimes (3.12 and later); where it is absent nothing snapshots the
process, so nothing is registered.
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[], None]


def register(before_snapshot: Hook | None = None, after_restore: Hook | None = None) -> bool:
    """Registers the hooks given; False when this runtime has no SnapStart hooks to register with."""
    try:
        import snapshot_restore_py
    except ImportError:
        return False
    if before_snapshot is not None:
        snapshot_restore_py.register_before_snapshot(before_snapshot)
    if after_restore is not None:
        snapshot_restore_py.register_after_restore(after_restore)
    return True
