"""The semantic diff of two commits' manifests: objects and fields, never YAML text.

It compares the validated manifests (pydantic models dumped by alias), so reordered keys or list items,
comments and formatting are not changes, and an explicit default equals an omitted one. Every list in the
manifest format is a set (tag filters are OR-ed, tag sets AND-ed, hosts and rollback events unordered), which
is why list order is ignored. The same canonical form fingerprints the manifests of a saved plan.

Changes are found on the real values and shown through `reconciler.plan.public`: a field marked secret changes
as `(secret) -> (secret, changed)`, and no URL keeps its credentials.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from reconciler.desired.manifests import (
    ApplicationManifest,
    DeploymentConfigManifest,
    DeploymentGroupManifest,
    Desired,
    NotificationManifest,
)
from reconciler.plan.model import KIND_ORDER, FieldChange, Kind, ObjectChange
from reconciler.plan.public import HIDDEN_CHANGE, HIDDEN_VALUE, FieldPath, public_change, secret_field


def canonical(value: Any) -> Any:
    """Key-sorted dicts and order-free lists: two manifests mean the same thing iff canonical forms are equal."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return sorted((canonical(item) for item in value), key=_sort_key)
    return value


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _object_fields(
    manifest: ApplicationManifest | DeploymentGroupManifest | DeploymentConfigManifest | NotificationManifest,
) -> dict[str, Any]:
    """The part of a document that means something: its spec, plus labels and annotations when set. The name
    is the identity, so it is not a field; apiVersion and kind are fixed by the identity too. A list the
    document leaves out (`analysis`) is not a field either: `[]` by default says nothing a reviewer wrote."""
    fields: dict[str, Any] = manifest.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    unset = set(type(manifest.spec).model_fields) - manifest.spec.model_fields_set
    for name in unset:
        alias = type(manifest.spec).model_fields[name].alias or name
        if fields.get(alias) == []:
            del fields[alias]
    metadata = {
        key: value
        for key, value in (("labels", manifest.metadata.labels), ("annotations", manifest.metadata.annotations))
        if value
    }
    if metadata:
        fields["metadata"] = metadata
    return fields


def _objects(desired: Desired | None) -> dict[tuple[str, str], dict[str, Any]]:
    if desired is None:
        return {}
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for app_name, app in desired.applications.items():
        objects[("Application", app_name)] = _object_fields(app)
    for config_name, config in desired.configs.items():
        objects[("DeploymentConfig", config_name)] = _object_fields(config)
    for group_name, group in desired.groups.items():
        objects[("DeploymentGroup", group_name)] = _object_fields(group)
    for notification_name, notification in desired.notifications.items():
        objects[("Notification", notification_name)] = _object_fields(notification)
    return objects


def diff_values(before: Any, after: Any) -> list[FieldChange]:
    """Field changes between two JSON values, descending into dicts, and into lists only when items changed in
    place (so `targets.tagSets.1.0.value: production -> prod` rather than two whole lists). Values as they are:
    a plan shows them through `reconciler.plan.public` (`diff_manifests`)."""
    return [FieldChange(path=_dotted(path), before=old, after=new) for path, old, new in _changes(before, after, ())]


def _dotted(path: FieldPath) -> str:
    return ".".join(map(str, path))


def _changes(before: Any, after: Any, path: FieldPath) -> list[tuple[FieldPath, Any, Any]]:
    if canonical(before) == canonical(after):
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[tuple[FieldPath, Any, Any]] = []
        for key in sorted(set(before) | set(after)):
            child = (*path, key)
            if key not in before or key not in after:
                changes.append((child, before.get(key), after.get(key)))
            else:
                changes.extend(_changes(before[key], after[key], child))
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        moved = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if canonical(old) != canonical(new)]
        gone = Counter(_sort_key(canonical(v)) for v in before) - Counter(_sort_key(canonical(v)) for v in after)
        if len(moved) == sum(gone.values()):
            return [change for i in moved for change in _changes(before[i], after[i], (*path, i))]
    return [(path, before, after)]


def _public_changes(kind: str, before: Any, after: Any) -> list[FieldChange]:
    """The changes a plan shows: compared on the real values, shown without secrets (`reconciler.plan.public`)."""
    changes = []
    secrets_changed: set[FieldPath] = set()
    for path, old, new in _changes(before, after, ()):
        secret = secret_field(kind, path)
        if secret is not None and secret != path:
            # A change inside a secret field (one argument of a list) is shown once, as the field's.
            if secret not in secrets_changed:
                secrets_changed.add(secret)
                changes.append(FieldChange(path=_dotted(secret), before=HIDDEN_VALUE, after=HIDDEN_CHANGE))
            continue
        shown_before, shown_after = public_change(kind, path, old, new)
        changes.append(FieldChange(path=_dotted(path), before=shown_before, after=shown_after))
    return changes


def _source(desired: Desired | None, kind: str, name: str, folder: str) -> str | None:
    if desired is None:
        return None
    ref = desired.sources.get((kind, name))
    if ref is None:
        return None
    prefix = folder.strip("/")
    return f"{prefix}/{ref.file}:{ref.line}" if prefix and prefix != "." else f"{ref.file}:{ref.line}"


def diff_manifests(base: Desired | None, head: Desired | None, *, folder: str = ".") -> list[ObjectChange]:
    """Objects added, removed or changed from base to head, by (kind, name), in kind then name order.
    `folder` is the manifests folder in the repo, so sources read as repo paths."""
    before, after = _objects(base), _objects(head)
    changes: list[ObjectChange] = []
    for kind, name in sorted(set(before) | set(after), key=lambda k: (KIND_ORDER[k[0]], k[1])):
        old, new = before.get((kind, name)), after.get((kind, name))
        typed_kind: Kind = kind  # type: ignore[assignment]
        if old is None:
            assert new is not None
            changes.append(ObjectChange(kind=typed_kind, name=name, change="added",
                                        source=_source(head, kind, name, folder),
                                        fields=_public_changes(kind, {}, new)))
        elif new is None:
            changes.append(ObjectChange(kind=typed_kind, name=name, change="removed",
                                        source=_source(base, kind, name, folder),
                                        fields=_public_changes(kind, old, {})))
        else:
            fields = _public_changes(kind, old, new)
            if fields:
                changes.append(ObjectChange(kind=typed_kind, name=name, change="changed",
                                            source=_source(head, kind, name, folder), fields=fields))
    return changes


def canonical_objects(desired: Desired) -> dict[str, Any]:
    """Every object in canonical form, keyed `Kind/name`, sorted."""
    return {f"{kind}/{name}": canonical(fields) for (kind, name), fields in sorted(_objects(desired).items())}


def manifests_digest(desired: Desired) -> str:
    """One hash of what the manifests mean (not how they are written): equal digests, equal desired state."""
    return _digest_objects(canonical_objects(desired))


def _digest_objects(objects: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()
