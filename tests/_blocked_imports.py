"""Making an optional dependency look uninstalled to a child process, for the CLI's hint tests."""

from __future__ import annotations

from pathlib import Path


def blocker(tmp_path: Path, package: str) -> str:
    """A PYTHONPATH entry under which ``import package`` fails, as if it were not installed."""
    root = tmp_path / f"block-{package}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(f"raise ImportError('{package} is blocked by the test')\n")
    return str(root)
