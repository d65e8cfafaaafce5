"""The dependency locks: requirements.txt and requirements-dev.txt pin every package of the
tree with its hashes, and agree with the pins written in requirements.in and
requirements-dev.in (a pin changed by hand, or a .in changed without `make lock`, fails)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {
    "requirements-bootstrap.txt": "requirements-bootstrap.in",
    "requirements.txt": "requirements.in",
    "requirements-dev.txt": "requirements-dev.in",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[str]:
    """Each requirement of a pip file as one line (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins(path: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a file and of the files it -r's."""
    found: dict[str, str] = {}
    for line in requirements(path):
        if line.startswith("-r "):
            found.update(pins(path.parent / line.split()[1]))
        elif match := PIN.match(line):
            found[canonical(match[1])] = match[3]
    return found


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_is_pinned_with_its_hashes(lock):
    lines = [line for line in requirements(ROOT / lock) if not line.startswith("-")]
    assert lines
    unpinned = [line for line in lines if not PIN.match(line)]
    unhashed = [line.split()[0] for line in lines if "--hash=sha256:" not in line]
    assert unpinned == [] and unhashed == [], "run `make lock` (docs/dependencies.md)"


@pytest.mark.parametrize(("lock", "source"), LOCKS.items())
def test_the_lock_holds_the_versions_the_in_file_pins(lock, source):
    locked = pins(ROOT / lock)
    wanted = pins(ROOT / source)
    assert wanted, source
    stale = {
        name: (version, locked.get(name))
        for name, version in wanted.items()
        if locked.get(name) != version
    }
    assert stale == {}, f"{source} and {lock} disagree ({{name: (in, lock)}}): run `make lock`"


def test_the_dev_lock_installs_the_runtime_at_the_same_versions():
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime
