"""Runs the SnapStart runtime hooks as Lambda does, for tests and measurements.

Lambda runs the `before_snapshot` hooks once, when it snapshots a newly published
version (in the reverse order of their registration), and the `after_restore` hooks in
each copy resumed from the snapshot, before its first request (in the order of their
registration): see cachesync.snapstart. `only` keeps the hooks it accepts, for a test
process that has loaded several copies of a handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Hook = Callable[..., Any]


def run_before_snapshot(only: Callable[[Hook], bool] | None = None) -> int:
    """Runs the before-snapshot hooks; returns how many ran."""
    import snapshot_restore_py

    return _run(list(reversed(snapshot_restore_py.get_before_snapshot())), only)


def run_after_restore(only: Callable[[Hook], bool] | None = None) -> int:
    """Runs the after-restore hooks; returns how many ran."""
    import snapshot_restore_py

    return _run(list(snapshot_restore_py.get_after_restore()), only)


def _run(hooks: list[Any], only: Callable[[Hook], bool] | None) -> int:
    ran = 0
    for function, args, kwargs in hooks:
        if only is None or only(function):
            function(*args, **kwargs)
            ran += 1
    return ran
