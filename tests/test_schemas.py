"""The committed JSON Schemas match the models, and the example manifests point editors at them."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.desired.schemas import SCHEMA_DIR, generate, main

ROOT = Path(__file__).resolve().parent.parent


def test_committed_schemas_match_the_models() -> None:
    generated = generate()
    for name, text in generated.items():
        committed = (SCHEMA_DIR / name).read_text()
        assert committed == text, f"schemas/{name} is stale: run python -m reconciler.desired.schemas"
    assert main(["--check"]) == 0


def test_check_detects_drift(tmp_path: Path) -> None:
    for name, text in generate().items():
        (tmp_path / name).write_text(text)
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / "deploymentconfig.json").read_text())
    schema["title"] = "edited by hand"
    (tmp_path / "deploymentconfig.json").write_text(json.dumps(schema))
    assert main(["--check", "--dir", str(tmp_path)]) == 1


def test_combined_schema_is_discriminated_by_kind() -> None:
    combined = json.loads(generate()["manifest.json"])
    assert set(combined["discriminator"]["mapping"]) == {"Application", "DeploymentGroup", "DeploymentConfig",
                                                       "Notification"}
    group = combined["$defs"]["DeploymentGroupSpec"]
    assert group["additionalProperties"] is False
    assert {"application", "targets", "revision", "deploymentConfig", "autoRollback"} <= set(group["properties"])


def test_example_manifests_carry_the_schema_comment() -> None:
    manifests = sorted((ROOT / "examples" / "config-repo").rglob("*.yaml"))
    assert manifests
    for path in manifests:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("=", 1)[1]).resolve()
        assert target == SCHEMA_DIR / "manifest.json"
