"""The golden parity set ships with the repository, whole and unchanged (tests/golden)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GOLDEN_DIR, golden_problems

pytestmark = pytest.mark.golden


def test_every_golden_file_is_present_and_matches_its_checksum() -> None:
    assert golden_problems() == []
    listed = {
        line.split(maxsplit=1)[1].lstrip("*").removeprefix("./")
        for line in (GOLDEN_DIR / "SHA256SUMS").read_text().splitlines()
        if line.strip()
    }
    on_disk = {
        p.relative_to(GOLDEN_DIR).as_posix()
        for p in GOLDEN_DIR.rglob("*")
        if p.is_file() and p.name != "SHA256SUMS"
    }
    assert listed == on_disk  # no unlisted file rides along, none is left out
    assert {"case_1/expected.npz", "case_2/expected.npz", "case_3/expected.npz"} <= listed


def test_a_damaged_or_missing_golden_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    (tmp_path / "SHA256SUMS").write_text(
        "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed  ./a.txt\n"
        "0000000000000000000000000000000000000000000000000000000000000000  ./b.txt\n"
        "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed  ./c.txt\n"
    )
    problems = golden_problems(tmp_path)
    assert len(problems) == 2
    assert "b.txt does not match" in problems[0]
    assert "c.txt is missing" in problems[1]
    nowhere = tmp_path / "nowhere"
    assert golden_problems(nowhere) == [f"{nowhere / 'SHA256SUMS'} is missing"]
