"""docs/shm-layout.md agrees with the code: offset tables, header struct, field tables, constants.

The page's tables were once merged from two branches and silently went wrong; these checks make
a layout change that forgets the page fail. They read the defaults from the code's signatures,
so a changed default also asks for the tables to be regenerated.
"""

from __future__ import annotations

import inspect
import re
import struct
from pathlib import Path

import pytest

from shmpool.coordinator import Coordinator
from shmpool.jobs import jobs_layout
from shmpool.substrate import layout
from shmpool.substrate.instance import DEFAULT_POOLS, SharedInstance
from shmpool.jobs.jobs_layout import ChannelCol, JobsLayout, JobWord, SlotCol
from shmpool.substrate.layout import HEADER, ControlWord, FileCol, Layout, PinCol, ReaderCol, TagCol

PAGE = (Path(__file__).parent.parent / "docs" / "shm-layout.md").read_text()
FILLERS = {"reserved", "unused", "spare"}


def _default(func, name):
    return inspect.signature(func).parameters[name].default


def _table_after(marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after ``marker``
    (a regular expression; any run of whitespace in it matches any other, line breaks included)."""
    found = re.search(r"\s+".join(re.escape(word) for word in marker.split()), PAGE)
    assert found, f"{marker!r} not found in docs/shm-layout.md"
    at = found.start()
    lines = PAGE[at:].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _int(cell: str) -> int:
    return int(cell.replace("*", "").replace(" ", ""), 0)


def _offsets(marker: str) -> dict[str, tuple[int, int, str]]:
    """{section: (offset, hex column, bytes column)} of an offset table."""
    out = {}
    for row in _table_after(marker):
        name = row[0].replace("*", "")
        out[name] = (_int(row[1]), _int(row[2]), row[3])
    return out


def _control_layout():
    growth = _default(SharedInstance.create, "growth")
    rows = list(DEFAULT_POOLS) + [spec for spec in DEFAULT_POOLS for _ in range(growth)]
    return Layout.compute([p.block_count for p in rows],
                          max_records=_default(SharedInstance.create, "max_records"),
                          max_dimensions=_default(Coordinator.__init__, "max_dimensions"),
                          max_readers=_default(Coordinator.__init__, "max_readers"))


def test_control_offset_table_matches_layout_compute():
    lay = _control_layout()
    table = _offsets("the output of `Layout.compute(")
    expected = {"header": (0, None), "words": (lay.words_offset, layout.WORDS * 8),
                "pools": (lay.pools_offset, lay.pool_count * layout.POOL_COLS * 8),
                "records": (lay.records_offset, lay.max_records * layout.RECORD_COLS * 8),
                "directory": (lay.directory_offset, lay.max_dimensions * layout.DIR_COLS * 8),
                "readers": (lay.readers_offset, lay.max_readers * layout.READER_COLS * 8),
                "pins": (lay.pins_offset, layout._pins_bytes(lay.max_dimensions, lay.max_readers)),
                "tags": (lay.tags_offset, lay.max_records * layout.TAG_COLS * 8),
                "files": (lay.files_offset, lay.max_files * layout.FILE_COLS * 8),
                "total": (lay.size, None)}
    for p, size in enumerate(lay.bitmap_sizes):
        expected[f"bitmap {p}"] = (lay.bitmap_offsets[p], size)
        expected[f"backed {p}"] = (lay.backed_offsets[p], size)
    assert list(table) == list(sorted(expected, key=lambda k: (expected[k][0], k != "header"))), \
        "sections listed out of order, or missing"
    for name, (offset, nbytes) in expected.items():
        doc_offset, doc_hex, doc_bytes = table[name]
        assert (doc_offset, doc_hex) == (offset, offset), f"{name}: the page says {doc_offset} / {doc_hex:#x}"
        if nbytes is not None:
            assert _int(doc_bytes) == nbytes, f"{name}: the page says {doc_bytes} bytes, the code {nbytes}"
    assert table["header"][2].startswith(f"{HEADER.size} used, {layout.HEADER_SIZE} reserved")


def test_jobs_offset_table_matches_jobs_layout_compute():
    slots, clients, payload = (_default(Coordinator.__init__, k) for k in ("job_slots", "max_clients", "job_payload"))
    lay = JobsLayout.compute(slots, clients, payload)
    table = _offsets("the output of `JobsLayout.compute(")
    expected = {"words": (0, jobs_layout.JOB_WORDS * 8), "free": (lay.free_offset, slots * 8),
                "queue": (lay.queue_offset, slots * 8),
                "slots": (lay.slots_offset, slots * jobs_layout.SLOT_COLS * 8),
                "channels": (lay.channels_offset, clients * jobs_layout.CHANNEL_COLS * 8),
                "rings": (lay.rings_offset, clients * slots * 8),
                "data": (lay.data_offset, slots * 2 * payload)}
    assert list(table) == [*expected, "total"]
    for name, (offset, nbytes) in expected.items():
        assert table[name][:2] == (offset, offset), f"{name}: the page says {table[name][0]}"
        assert _int(table[name][2]) == nbytes, f"{name}: the page says {table[name][2]} bytes"
    assert table["total"][:2] == (lay.size, lay.size)
    assert f"`JobsLayout.compute({slots}, {clients}, {payload})`" in PAGE


def test_header_struct_and_field_offsets_match():
    fmt = re.search(r'`HEADER = struct\.Struct\("([^"]+)"\)`: (\d+) bytes', PAGE)
    assert fmt and fmt.group(1) == HEADER.format and int(fmt.group(2)) == HEADER.size
    fields = re.findall(r"\d*[a-zA-Z]", HEADER.format.lstrip("<"))
    offsets = [struct.calcsize("<" + "".join(fields[:i])) for i in range(len(fields) + 1)]
    rows = _table_after("### Header")
    documented = [(int(r[0]), int(r[1])) for r in rows if r[3] != "reserved"]
    assert documented == [(offsets[i], offsets[i + 1] - offsets[i]) for i in range(len(fields))]
    reserved = [r for r in rows if r[3] == "reserved"]
    assert [(int(r[0]), int(r[1])) for r in reserved] == [(HEADER.size, layout.HEADER_SIZE - HEADER.size)]


def _index_cells(row):
    first, _, last = row[0].partition("-")
    return range(int(first), int(last or first) + 1)


@pytest.mark.parametrize("marker, enum, name_col", [
    ("### Words (`ControlWord`, `W`)", ControlWord, 3), ("### Jobs words (`JobWord`, `JW`)", JobWord, 2),
    ("### Slot rows (`SlotCol`, `SC`)", SlotCol, 2), ("### Channel rows (`ChannelCol`, `CC`)", ChannelCol, 2),
    ("### Reader rows (`ReaderCol`, `RD`)", ReaderCol, 2), ("### Pins (`PinCol`, `PN`)", PinCol, 2),
    ("### Record tags (`TagCol`, `RT`)", TagCol, 2), ("### File rows (`FileCol`, `F`)", FileCol, 2)])
def test_field_tables_name_the_code_fields_in_order(marker, enum, name_col):
    by_index = {int(m): m.name for m in enum}
    seen = set()
    for row in _table_after(marker):
        indices = _index_cells(row)
        name = row[name_col]
        seen.update(indices)
        if name in FILLERS:
            named = [by_index[i] for i in indices if i in by_index and not by_index[i].startswith("UNUSED")]
            assert not named, f"{marker}: {list(indices)} documented as {name} but the code has {named}"
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            assert len(indices) == 1 and by_index.get(indices[0]) == name, \
                f"{marker}: index {row[0]} is {name} on the page, {by_index.get(indices[0])} in the code"
    assert set(by_index) <= seen, f"{marker}: fields missing from the page: {set(by_index) - seen}"


def test_words_table_default_offsets():
    lay = _control_layout()
    for row in _table_after("### Words (`ControlWord`, `W`)"):
        first = _index_cells(row)[0]
        assert int(row[1].split("-")[0]) == first * 8
        assert int(row[2].split("-")[0]) == lay.words_offset + first * 8


def test_constants_quoted_on_the_page_match_the_code():
    jobs_at = PAGE.index("## Jobs segment")
    quoted = [(m.start() > jobs_at, m.group(1), int(m.group(2)))
              for m in re.finditer(r"\b((?:[A-Z]+_)?(?:COLS|WORDS)) = (\d+)", PAGE)]
    assert len(quoted) >= 10
    for in_jobs, name, value in quoted:
        # SLOT_COLS names the directory slots in layout.py and the job slots in jobs_layout.py.
        module = jobs_layout if in_jobs and hasattr(jobs_layout, name) else layout
        assert value == getattr(module, name), f"the page says {name} = {value}, {module.__name__} {getattr(module, name)}"
    assert f"`LAYOUT_VERSION` ({layout.LAYOUT_VERSION})" in PAGE
    magic = jobs_layout.JOBS_MAGIC.to_bytes(8, "big").decode()
    assert f"`{jobs_layout.JOBS_MAGIC:#X}`".replace("0X", "0x") in PAGE and f'"{magic}"' in PAGE


def test_layer_index_header_and_rows_match_layer_index():
    from shmpool.data import layer_index

    fmt = re.search(r'`HEADER = struct\.Struct\("([^"]+)"\)` \(`layer_index\.HEADER`\), (\d+) bytes', PAGE)
    assert fmt and fmt.group(1) == layer_index.HEADER.format and int(fmt.group(2)) == layer_index.HEADER_SIZE
    rows = _table_after("`HEADER = struct.Struct(\"" + layer_index.HEADER.format + "\")`")
    assert [(int(r[0]), r[3]) for r in rows] == sorted((off, name) for name, off in layer_index.HEADER_OFFSETS.items())
    dtype = layer_index.ROW_DTYPE
    documented = [(int(r[0]), int(r[1]), r[3]) for r in _table_after("**Rows** (`ROW_DTYPE`)")]
    assert documented == [(dtype.fields[n][1], dtype.fields[n][0].itemsize, n) for n in dtype.names]
    assert f"{dtype.itemsize} bytes each" in PAGE and f"{layer_index.HEADER_SIZE} bytes)" in PAGE
