"""The project's search spaces, as data: one YAML file per space in this folder.

Adding a space means adding a ``NAME.yaml`` file here; ``python -m study.run --space NAME``
then finds it. :mod:`study.spaces` parses and validates the files.
"""

from __future__ import annotations

from pathlib import Path

SPACES_DIR: Path = Path(__file__).resolve().parent


def available_spaces() -> list[str]:
    """Names of the spaces shipped in this folder, sorted."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml") if p.is_file())


def space_file(name: str) -> Path | None:
    """The file of the shipped space ``name``, or None when there is no such space."""
    if name not in available_spaces():
        return None
    return SPACES_DIR / f"{name}.yaml"
