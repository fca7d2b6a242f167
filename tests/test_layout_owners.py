"""A segment's words are written by the object that owns it; the modules around it ask.

The board (shmpool/jobs/jobboard.py) owns the jobs segment's columns, SharedInstance the
coordinator's words; workers, the pool, the client and the coordinator go through their
methods. These checks read the modules' imports, so indexing another module's segment again
(which starts with importing its column enum) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shmpool.jobs import jobs_layout

from shmpool.substrate import layout

ROOT = Path(__file__).resolve().parent.parent

# module -> names it must not import: the column and word enums of segments it does not own.
FORBIDDEN = {
    "workers/worker.py": {"JW", "SC", "CC", "JobWord", "SlotCol", "ChannelCol", "W", "ControlWord"},
    "coordinator/pool.py": {"JW", "SC", "CC", "JobWord", "SlotCol", "ChannelCol"},
    "shmpool/jobs/client.py": {"JW", "SC", "CC", "JobWord", "SlotCol", "ChannelCol", "W", "ControlWord"},
    "coordinator/coordinator.py": {"JW", "SC", "CC", "JobWord", "SlotCol", "ChannelCol"},
}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported, names imported from modules) of one source file."""
    tree = ast.parse(path.read_text())
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
            names.update(alias.name for alias in node.names)
    return modules, names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_modules_around_a_segment_do_not_import_its_columns(module):
    _modules, names = _imports(ROOT / module)
    assert not names & FORBIDDEN[module], f"{module} imports {sorted(names & FORBIDDEN[module])}"


def test_the_worker_uses_public_surfaces_only():
    source = (ROOT / "workers/worker.py").read_text()
    modules, _names = _imports(ROOT / "workers/worker.py")
    assert "shmpool.substrate._proc" not in modules
    attributes = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    assert "_inst" not in attributes  # Reader.instance, not reader._inst


def test_every_state_word_has_a_name():
    # The bare numbers the code once compared with are enum members now, with the values the
    # segments have always held (a renumbering would be a layout change).
    assert [int(s) for s in layout.InstanceState] == [1, 2]
    assert [int(s) for s in layout.RecordState] == [0, 1, 2]  # 2 LENT since layout 9
    assert [int(s) for s in layout.Touched] == [0, 1, 2]
    assert [int(s) for s in jobs_layout.BoardState] == [1, 2]
    assert (layout.STATE_RUNNING, layout.STATE_STOPPING) == (1, 2)
    assert layout.W is layout.ControlWord and jobs_layout.SC is jobs_layout.SlotCol


def test_a_closed_region_raises_a_typed_error(sample_dir):
    from shmpool.errors import RegionClosed, ShmPoolError
    from shmpool.data.region import Region

    region = Region.open(sorted(sample_dir.glob("*.region"))[0])
    first = region.layer_ids()[0]
    region.close()
    with pytest.raises(RegionClosed) as err:
        region.index
    assert isinstance(err.value, ShmPoolError) and isinstance(err.value, ValueError)
    assert err.value.source == region.source and "closed" in str(err.value)
    with pytest.raises(RegionClosed):
        region.layer(first)
