"""Every validation error a user can make, with the exact message they will read (golden files).

Each `invalid/<case>.yaml` is loaded alone; `invalid/<case>.expected` holds the errors, one per line, as
`reconcile validate` prints them. Regenerate after an intended wording change with FLEETSHIFT_REGEN=1 and
review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.desired.loader import load_files
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors

CASES = Path(__file__).parent / "invalid"


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_invalid_manifest_reports_every_error_with_location(case: str) -> None:
    source = CASES / f"{case}.yaml"
    with pytest.raises(ManifestErrors) as raised:
        load_files([ManifestFile(source.name, source.read_bytes())])
    actual = "\n".join(str(error) for error in raised.value.errors) + "\n"
    expected_file = CASES / f"{case}.expected"
    if os.environ.get("FLEETSHIFT_REGEN"):
        expected_file.write_text(actual)
    assert actual == expected_file.read_text()
    for error in raised.value.errors:
        assert error.file == source.name
        assert error.line >= 1 and error.column >= 1


def test_errors_from_several_files_are_all_reported() -> None:
    files = [ManifestFile(p.name, p.read_bytes()) for p in sorted(CASES.glob("*.yaml"))]
    with pytest.raises(ManifestErrors) as raised:
        load_files(files)
    reported_files = {e.file for e in raised.value.errors}
    # Every broken file shows up at once; the user fixes them in one round, not one per run.
    assert reported_files == {p.name for p in CASES.glob("*.yaml")}


def test_valid_documents_are_not_applied_when_another_is_invalid() -> None:
    good = b"apiVersion: deploy/v1\nkind: Application\nmetadata: {name: ok}\n"
    bad = b"apiVersion: deploy/v1\nkind: Application\nmetadata: {name: ok2}\nspec: {descripton: x}\n"
    with pytest.raises(ManifestErrors) as raised:
        load_files([ManifestFile("good.yaml", good), ManifestFile("bad.yaml", bad)])
    assert [e.file for e in raised.value.errors] == ["bad.yaml"]
