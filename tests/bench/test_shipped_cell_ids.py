"""The cell ids of every shipped suite are pinned: results, --resume, compare and check match cells by id, so a
change to how a suite becomes cells must not move them (shipped_cell_ids.json; regenerate it only on purpose)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybench.bench import suite as S

ROOT = Path(__file__).resolve().parents[2]
PINNED = json.loads((Path(__file__).with_name("shipped_cell_ids.json")).read_text())


def test_every_shipped_suite_is_pinned():
    assert sorted(PINNED) == sorted(p.stem for p in (ROOT / "suites").glob("*.toml"))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_suite_cell_and_group_ids_do_not_move(name):
    cells = S.expand(S.load(ROOT / "suites" / f"{name}.toml", require_data=False))
    assert [f"{c.cell_id} {c.group_id} {c.label()}" for c in cells] == PINNED[name]
