"""`policy` in deploy.yaml, applied to manifests that are already valid: rules about what they may ask for.

Where it sits: after the loader (a `Desired` exists only when every document is valid) and before anything uses
the manifests. `reconcile validate` reports violations as errors, `reconcile plan` refuses a head that has any
(exit 1, like invalid manifests), `--once` and `watch` apply nothing from such a commit. The policy is a setting
of the reconciler, not part of the manifests, so the loader knows nothing of it; this module is a pure function
of the manifests and the policy, and says where each violation is as the loader would (file, line, column,
field), because the person who has to fix it is editing that file.

`policy.requireImmutableRevisions` (docs/trust.md, "Pinned revisions"): every revision the manifests name, a
group's `spec.revision` and an application's `spec.defaultRevision` alike (used or not), must name content
that cannot change under the same name. Otherwise whoever can write the bucket, push a branch or edit a file
on the hosts changes what is deployed without a reviewed commit, and a rollback may not restore what ran:

- S3: `version` (the object version itself is immutable) or `sha256` (the agent refuses other bytes). An
  `eTag` alone does not count: it is an MD5 at best (not one for multipart or SSE-KMS objects), not a digest
  an attacker cannot match;
- Git: a full 40-character commit id; a branch, tag or short id can move. The manifest format already requires
  one; the check is repeated so the policy does not depend on that staying so;
- local (a path on each host): `sha256` of the bundle file. A `directory` bundle cannot carry one (the agent
  checks a sha256 only on a file), so under this policy a local revision must be a zip, tar or tgz file.
"""

from __future__ import annotations

import re

from contract.models import Revision
from reconciler.desired.manifests import Desired, SourceRef
from reconciler.errors import ManifestError, ManifestErrors

POLICY_KEY = "policy.requireImmutableRevisions"
_FULL_COMMIT = re.compile(r"^[0-9a-f]{40}$")

#: A path inside a document, as written (`("spec", "revision", "s3")`).
FieldPath = tuple[str | int, ...]


def mutable_reason(revision: Revision) -> tuple[FieldPath, str] | None:
    """Why `revision` does not name immutable content, and the part of it to point at (relative to the
    revision); None when it does."""
    if revision.s3 is not None:
        if revision.s3.version or revision.sha256:
            return None
        etag = "; an eTag is not enough, it is no digest an attacker cannot match" if revision.s3.e_tag else ""
        return ("s3",), (f"revision {revision.short()} is mutable: {POLICY_KEY} needs version or sha256 "
                         f"(the object can be replaced under the same key{etag})")
    if revision.git is not None:
        if _FULL_COMMIT.match(revision.git.commit):
            return None
        return ("git", "commit"), (f"revision {revision.short()} is mutable: {POLICY_KEY} needs the full "
                                   f"40-character commit id (a branch, tag or short id can move)")
    local = revision.local
    assert local is not None, "a revision has exactly one source"
    if local.bundle_type == "directory":
        return ("local",), (f"revision {local.path} (a directory on each host) is mutable and cannot be pinned: "
                            f"{POLICY_KEY} needs a bundle file (zip, tar or tgz) with its sha256")
    if revision.sha256:
        return None
    return ("local",), (f"revision {local.path} (a file on each host) is mutable: {POLICY_KEY} needs sha256 "
                        f"(the file at that path can change on any host)")


def _violation(source: SourceRef | None, resource: str, at: FieldPath, reason: tuple[FieldPath, str]) -> ManifestError:
    path = (*at, *reason[0])
    line, column = source.where(path) if source is not None else (1, 1)
    return ManifestError(source.file if source is not None else "?", line, column, resource,
                         ".".join(map(str, path)), reason[1])


def revision_policy_violations(desired: Desired, *, require_immutable_revisions: bool) -> list[ManifestError]:
    """Every revision in the manifests that breaks the policy, located, in file and line order (empty when the
    policy is off)."""
    if not require_immutable_revisions:
        return []
    found: list[ManifestError] = []
    for name, application in desired.applications.items():
        revision = application.spec.default_revision
        reason = mutable_reason(revision) if revision is not None else None
        if reason is not None:
            found.append(_violation(desired.sources.get(("Application", name)), f"Application/{name}",
                                    ("spec", "defaultRevision"), reason))
    for name, group in desired.groups.items():
        revision = group.spec.revision
        reason = mutable_reason(revision) if revision is not None else None
        if reason is not None:
            found.append(_violation(desired.sources.get(("DeploymentGroup", name)), f"DeploymentGroup/{name}",
                                    ("spec", "revision"), reason))
    return sorted(found, key=lambda e: (e.file, e.line, e.column))


def check_revision_policy(desired: Desired, *, require_immutable_revisions: bool) -> Desired:
    """`desired` when it follows the policy; otherwise ManifestErrors, so every caller that refuses invalid
    manifests (nothing applied, exit 1, every error located) refuses these the same way."""
    violations = revision_policy_violations(desired, require_immutable_revisions=require_immutable_revisions)
    if violations:
        raise ManifestErrors(violations)
    return desired


__all__ = ["POLICY_KEY", "check_revision_policy", "mutable_reason", "revision_policy_violations"]
