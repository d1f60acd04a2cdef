"""Supply chain, offline: what the functions ship is pinned, and the hashed lock file
(`make audit` checks it against the vulnerability database) agrees with the pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "shared"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            lines.append(text)
    return lines


def lock_entries(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    entries: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = _name(match.group(1))
            entries[current] = (match.group(3), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
    return entries


def test_everything_the_functions_ship_is_pinned_exactly() -> None:
    files = [LAYER / "requirements.txt", *sorted((ROOT / "functions").glob("*/requirements.txt"))]
    for path in files:
        for line in requirement_lines(path):
            assert PIN.match(line), f"{path.relative_to(ROOT)}: {line!r} is not pinned with =="


def test_the_lock_file_has_hashes_and_agrees_with_the_pins() -> None:
    lock = lock_entries(LAYER / "requirements.lock")
    assert lock, "layers/shared/requirements.lock is empty"
    unhashed = [name for name, (_, hashes) in lock.items() if hashes == 0]
    assert not unhashed, f"no hashes for {unhashed}"
    for line in requirement_lines(LAYER / "requirements.txt"):
        match = PIN.match(line)
        assert match
        name, version = _name(match.group(1)), match.group(3)
        assert name in lock, f"{name} is pinned in requirements.txt but not in requirements.lock: regenerate it"
        assert lock[name][0] == version, f"{name}: {version} in requirements.txt, {lock[name][0]} in the lock"
