"""The tree matches docs/architecture.md's module map, and imports flow one way down its layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = ROOT / "docs" / "architecture.md"

# Folder in the repository -> the package it installs as.
FOLDERS = {"shmpool": "shmpool", "coordinator": "shmpool.coordinator", "workers": "shmpool.workers"}

# Which shmpool packages each package may import (besides itself). The CLI may import tools too.
# shmpool._core is the compiled core (Cython, not parsed here): below the substrate, it imports
# only shmpool.errors.
ALLOWED = {
    "shmpool.substrate": {"shmpool.errors", "shmpool._core"},
    "shmpool.data": {"shmpool.errors", "shmpool._core", "shmpool.substrate"},
    "shmpool.jobs": {"shmpool.errors", "shmpool._core", "shmpool.substrate", "shmpool.data"},
    "shmpool.workers": {"shmpool.errors", "shmpool._core", "shmpool.substrate", "shmpool.data", "shmpool.jobs"},
    "shmpool.coordinator": {"shmpool.errors", "shmpool._core", "shmpool.substrate", "shmpool.data",
                            "shmpool.jobs", "shmpool.workers", "shmpool"},
}
CLI_MAY_ALSO = {"shmpool.tools"}
LAYERED = tuple(ALLOWED)


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module that ships."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> set[str]:
    """Every shmpool module or package this file imports, absolute, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(module, path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == "shmpool" or name.startswith("shmpool.")}


def _layer(name: str) -> str:
    for layer in (*LAYERED, "shmpool.tools", "shmpool.errors", "shmpool._core"):
        if name == layer or name.startswith(layer + "."):
            return layer
    return "shmpool"


def test_every_module_in_the_tree_has_a_row_in_the_module_map_and_every_row_exists():
    text = ARCH.read_text()
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))
    shipped = {str(path.relative_to(ROOT)) for path in _modules().values()
               if path.name != "__init__.py" or path.parent == ROOT / "shmpool"}
    assert shipped - listed == set(), f"modules without a row in docs/architecture.md: {sorted(shipped - listed)}"
    assert listed - shipped == set(), f"rows naming no module: {sorted(listed - shipped)}"


def test_imports_flow_one_way_down_the_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        own = _layer(module)
        if own not in ALLOWED:
            continue
        allowed = ALLOWED[own] | {own} | (CLI_MAY_ALSO if module == "shmpool.coordinator.cli" else set())
        for name in _imports(module, path):
            target = _layer(name)
            # "from shmpool import x" names the package itself: judge by what x is.
            if name == "shmpool":
                continue
            if target not in allowed:
                wrong.append(f"{module} imports {name} ({target} is not allowed in {own})")
    assert wrong == [], "\n".join(wrong)


def test_importing_shmpool_loads_no_coordinator_or_worker_code():
    import subprocess
    import sys
    code = ("import sys, shmpool; shmpool.attach; shmpool.connect; "
            "print(sorted(m for m in sys.modules if m.startswith(('shmpool.coordinator', 'shmpool.workers', "
            "'shmpool.tools'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_user_api_is_what_all_lists_and_low_level_pieces_live_in_lowlevel():
    import shmpool
    import shmpool.lowlevel
    for name in shmpool.__all__:
        assert getattr(shmpool, name) is not None, name
    assert {"Coordinator", "attach", "connect"} <= set(shmpool.__all__)
    assert not {"AllocationTable", "SharedInstance", "Handle"} & set(shmpool.__all__)
    assert {"AllocationTable", "SharedInstance", "Handle"} <= set(shmpool.lowlevel.__all__)
