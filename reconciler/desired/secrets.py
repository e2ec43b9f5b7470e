"""Which manifest fields may hold secrets: declared once, on the models, and read from them here.

A field is marked with `json_schema_extra=SECRET` on its pydantic `Field`. That one declaration is what
`reconcile plan` reads (`reconciler/plan/diff.py`: the value is shown as `(secret)`, a change as
`(secret, changed)`, in every format and in saved plans) and what the JSON Schemas in `schemas/` carry
(`"secret": true`, so an editor or a linter of the config repo can know it too).

Marked: only fields whose whole value may be a credential and that a reviewer does not need to read to judge
a change. Today that is the traffic `command` load balancer's `run` (a program's arguments: API tokens of a
load balancer's management API end up there). URLs are not marked: a reviewer needs to see which Prometheus
or health check URL a group uses, so plans show every URL with its credentials redacted instead
(`contract.redact.redact_url`: `user:[REDACTED]@`, `?token=[REDACTED]`). docs/trust.md, "Secrets in output",
lists what is and is not treated as secret and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from contract.annotations import type_members

#: `json_schema_extra` of a field whose value may be a credential.
SECRET: dict[str, Any] = {"secret": True}
#: In a secret field's path, any list index or mapping key.
ANY = "*"

#: A secret field's path from the model it was found in, by the names written in files (aliases).
SecretPath = tuple[str, ...]


def secret_field_paths(model: type[BaseModel]) -> tuple[SecretPath, ...]:
    """Every path under `model` that leads to a field marked secret, with `ANY` for list items and mapping
    values: `("trafficControl", "loadBalancers", "*", "command", "run")` under `DeploymentGroupSpec`."""
    found: list[SecretPath] = []
    _walk(model, (), found, frozenset())
    return tuple(found)


def is_secret(path: Sequence[str | int], secret_paths: Sequence[SecretPath]) -> bool:
    """Whether `path` (as written: names and list indices) is a secret field or lies inside one."""
    return any(len(path) >= len(secret) and _along(secret, path) for secret in secret_paths)


def leads_to_secret(path: Sequence[str | int], secret_paths: Sequence[SecretPath]) -> bool:
    """Whether a secret field lies somewhere below `path` (so a value at `path` must be looked into)."""
    return any(len(path) < len(secret) and _along(secret, path) for secret in secret_paths)


def _along(secret: SecretPath, path: Sequence[str | int]) -> bool:
    """`path` and `secret` agree as far as both go."""
    return all(part in (ANY, str(given)) for part, given in zip(secret, path, strict=False))


def _walk(annotation: Any, prefix: SecretPath, found: list[SecretPath], seen: frozenset[type]) -> None:
    for leaf in type_members(annotation):
        origin = get_origin(leaf)
        if isinstance(leaf, type) and issubclass(leaf, BaseModel):
            if leaf in seen:
                continue
            for name, info in leaf.model_fields.items():
                path = (*prefix, info.alias or name)
                if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("secret") is True:
                    found.append(path)
                else:
                    _walk(info.annotation, path, found, seen | {leaf})
        elif isinstance(origin, type) and issubclass(origin, Mapping):
            _walk(get_args(leaf)[-1], (*prefix, ANY), found, seen)
        elif isinstance(origin, type) and issubclass(origin, list | tuple | set | frozenset):
            for item in get_args(leaf)[:1]:
                _walk(item, (*prefix, ANY), found, seen)


__all__ = ["ANY", "SECRET", "SecretPath", "is_secret", "leads_to_secret", "secret_field_paths"]
