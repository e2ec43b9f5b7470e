"""What a plan may show of the manifests: never a secret field's value, never a URL's credentials.

Where it sits: between the manifests and every output of `reconcile plan` (text, Markdown, JSON, a saved plan
and a stale plan's refusal), which end up in CI logs, pull-request comments and artifacts that more people can
read than the config repo's secrets were meant for.

- Fields marked secret on the models (`reconciler.desired.secrets`) are replaced by `(secret)`; a change to one
  reads `(secret) -> (secret, changed)`. The diff itself compares the real values (`reconciler.plan.diff`), so
  a change is never hidden, only its value.
- Every string a plan carries goes through `contract.redact.redact_urls` (`https://user:[REDACTED]@host`,
  `?token=[REDACTED]`), wherever it came from: a field diff, a revision's repository, a gate's address, the
  config repo's own URL, an error message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from contract.redact import redact_urls
from reconciler.desired.manifests import ApplicationSpec, DeploymentConfigSpec, DeploymentGroupSpec
from reconciler.desired.notification_spec import NotificationSpec
from reconciler.desired.secrets import SecretPath, is_secret, leads_to_secret, secret_field_paths
from reconciler.plan.model import Plan

#: What a plan shows instead of a secret field's value, and for its new value when it changed.
HIDDEN_VALUE = "(secret)"
HIDDEN_CHANGE = "(secret, changed)"

#: A plan's object fields are its spec (plus `metadata` labels and annotations, never secret), so secret paths
#: are looked up from the spec model of each kind.
_SPEC_MODELS: dict[str, type[BaseModel]] = {
    "Application": ApplicationSpec,
    "DeploymentGroup": DeploymentGroupSpec,
    "DeploymentConfig": DeploymentConfigSpec,
    "Notification": NotificationSpec,
}

FieldPath = tuple[str | int, ...]


@functools.cache
def secret_paths(kind: str) -> tuple[SecretPath, ...]:
    model = _SPEC_MODELS.get(kind)
    return secret_field_paths(model) if model is not None else ()


def public_value(value: Any, path: FieldPath = (), secrets: Sequence[SecretPath] = ()) -> Any:
    """A JSON value found at `path` of an object, as a plan may show it: secret parts replaced by
    `(secret)`, URLs' credentials redacted in every string."""
    if secrets and is_secret(path, secrets):
        return HIDDEN_VALUE
    descend = bool(secrets) and leads_to_secret(path, secrets)
    if isinstance(value, dict):
        return {key: public_value(item, (*path, key), secrets if descend else ()) for key, item in value.items()}
    if isinstance(value, list):
        return [public_value(item, (*path, index), secrets if descend else ()) for index, item in enumerate(value)]
    if isinstance(value, str):
        return redact_urls(value)
    return value


def secret_field(kind: str, path: FieldPath) -> FieldPath | None:
    """The secret field `path` is in (itself or an ancestor), or None: a change inside one is shown as a change
    of the whole field, so not even which argument of a secret list changed is told."""
    secrets = secret_paths(kind)
    return next((path[:end] for end in range(1, len(path) + 1) if is_secret(path[:end], secrets)), None)


def public_change(kind: str, path: FieldPath, before: Any, after: Any) -> tuple[Any, Any]:
    """One changed field's two sides as a plan shows them. A secret field present on both sides changed (the
    diff compared the real values): its new value reads `(secret, changed)`."""
    secrets = secret_paths(kind)
    if before is not None and after is not None and is_secret(path, secrets):
        return HIDDEN_VALUE, HIDDEN_CHANGE
    return public_value(before, path, secrets), public_value(after, path, secrets)


def public_objects(objects: dict[str, Any]) -> dict[str, Any]:
    """Canonical objects keyed `Kind/name` (what a saved plan records), with secrets and URL credentials out."""
    return {key: public_value(fields, (), secret_paths(key.split("/", 1)[0])) for key, fields in objects.items()}


def public_plan(plan: Plan) -> Plan:
    """`plan` with every string's URL credentials redacted: the last step of computing a plan, so no renderer
    and no saved plan can show one, whichever field it came in by."""
    data = plan.model_dump(mode="json", by_alias=True)
    cleaned = public_value(data)
    return plan if cleaned == data else Plan.model_validate(cleaned)


__all__ = ["HIDDEN_CHANGE", "HIDDEN_VALUE", "public_change", "public_objects", "public_plan", "public_value",
           "secret_field", "secret_paths"]
