"""Generates `schemas/*.json` from the manifest models, so editors validate manifests as people type.

`python -m reconciler.desired.schemas` rewrites them; `--check` exits 1 when the committed files differ from what the
models produce (CI runs it, and tests/test_schemas.py does too), so the schemas can never drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from contract.exitcodes import ExitCode
from reconciler.desired.manifests import (
    ApplicationManifest,
    DeploymentConfigManifest,
    DeploymentGroupManifest,
    Manifest,
    NotificationManifest,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
BASE_ID = "https://fleetshift.dev/schemas/"


def _finish(schema: dict[str, Any], filename: str, title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE_ID + filename,
            "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def generate() -> dict[str, str]:
    """File name -> JSON text for every schema we publish."""
    out: dict[str, dict[str, Any]] = {
        "application.json": _finish(ApplicationManifest.model_json_schema(by_alias=True), "application.json",
                                    "fleetshift Application"),
        "deploymentgroup.json": _finish(DeploymentGroupManifest.model_json_schema(by_alias=True),
                                        "deploymentgroup.json", "fleetshift DeploymentGroup"),
        "deploymentconfig.json": _finish(DeploymentConfigManifest.model_json_schema(by_alias=True),
                                         "deploymentconfig.json", "fleetshift DeploymentConfig"),
        "notification.json": _finish(NotificationManifest.model_json_schema(by_alias=True), "notification.json",
                                     "fleetshift Notification"),
    }
    # What `reconcile events --format json` prints and webhooks receive (docs/events.md): the shape as serialised.
    from contract.events import Event

    out["event.json"] = _finish(Event.model_json_schema(by_alias=True, mode="serialization"), "event.json",
                                "fleetshift event")
    # Discriminated by `kind`, so an editor reports errors against the right kind instead of all of them.
    combined = TypeAdapter(Annotated[Manifest, Field(discriminator="kind")]).json_schema(by_alias=True)
    out["manifest.json"] = _finish(combined, "manifest.json", "fleetshift manifest (any kind)")
    return {name: json.dumps(schema, indent=2, sort_keys=True) + "\n" for name, schema in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.desired.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if schemas/ is out of date")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.dir / name
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(name)
            if not args.check:
                args.dir.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.check and stale:
        print(f"schemas out of date: {', '.join(stale)}; run: python -m reconciler.desired.schemas", file=sys.stderr)
        return ExitCode.INVALID
    if not args.check:
        print(f"wrote {len(stale)} schema file(s) to {args.dir}" if stale else "schemas already up to date")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
