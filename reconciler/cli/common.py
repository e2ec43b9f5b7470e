"""What the operator's commands share: the config repo source, opening the store without creating it, the
manifests read tolerantly for read-only commands, and turning a GROUP argument into a group key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.store import Store
from contract.store.file import missing_folder
from reconciler.desired.loader import load_git
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import GitSource
from reconciler.errors import ManifestErrors, ReconcilerError, SourceError
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.observe import Snapshot, StoreReader
from reconciler.shell.signing import open_fleet_store


class UnknownGroup(ReconcilerError):
    """A GROUP argument that names no deployment group (exit 1)."""


def source(settings: DeploySettings, ref: str | None = None) -> GitSource:
    repository = settings.repository
    return GitSource(repository.url, ref or repository.ref, repository.path)


def open_for_reading(settings: DeploySettings) -> tuple[Store, Path | None]:
    """The store for a command that must not create it (everything but `--once` and `watch`), and the folder
    of a `file://` store that does not exist yet (nothing has been deployed there, or the path is wrong)."""
    store = open_fleet_store(settings, create=False, writer=False)
    return store, missing_folder(store)


def no_store(folder: Path) -> str:
    return f"no store at {folder} yet: nothing has been deployed there"


def require_store(store: Store, what: str) -> None:
    """Operator writes act on records a pass wrote: against a store that does not exist there is nothing to
    act on, and creating an empty store at a possibly mistyped path would only hide the mistake."""
    folder = missing_folder(store)
    if folder is not None:
        raise ReconcilerError(f"{no_store(folder)}, so there is nothing to {what} (check --store or `store:` in "
                              f"deploy.yaml)")


def try_desired(settings: DeploySettings) -> tuple[Desired | None, str | None]:
    """Manifests for read-only commands: a broken config repo must not hide the store's records."""
    try:
        return load_git(source(settings)), None
    except ManifestErrors as exc:
        return None, f"the manifests at {settings.repository.ref} are invalid ({count(len(exc.errors), 'error')})"
    except SourceError as exc:
        return None, str(exc)


@dataclass(frozen=True)
class Known:
    """The store's records and the manifests (when readable), read once for a command about groups."""

    snapshot: Snapshot
    desired: Desired | None
    #: Why the manifests could not be read, or None.
    problem: str | None

    @property
    def groups(self) -> set[str]:
        """Every group key either side knows: recorded by a pass, or in the manifests."""
        return set(self.snapshot.state.groups) | (set(self.desired.desired_groups()) if self.desired else set())


def read_known(settings: DeploySettings, reader: StoreReader) -> Known:
    desired, problem = try_desired(settings)
    return Known(snapshot=reader.snapshot(), desired=desired, problem=problem)


def resolve_group(name: str, known: set[str], missing_store: Path | None = None) -> str:
    """`APP/GROUP` or a bare `GROUP` (unique across applications) -> the group key. `missing_store`: the
    folder of a store that does not exist yet, named in the error because it is the likelier mistake."""
    if name in known:
        return name
    matches = sorted(key for key in known if split_group_key(key)[1] == name)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UnknownGroup(f"{name!r} names several groups ({', '.join(matches)}); write APPLICATION/GROUP")
    listing = ", ".join(sorted(known)) or "none yet"
    store_note = f"; {no_store(missing_store)}" if missing_store is not None else ""
    raise UnknownGroup(f"no deployment group named {name!r} (known: {listing}){store_note}")


def split_group_key(key: str) -> tuple[str, str]:
    """`APP/GROUP` -> (APP, GROUP): the inverse of `contract.models.group_key`."""
    application, name = key.split("/", 1)
    return application, name


def short_commit(commit: str | None) -> str:
    return commit[:12] if commit else "-"


__all__ = [
    "Known",
    "UnknownGroup",
    "no_store",
    "open_for_reading",
    "read_known",
    "require_store",
    "resolve_group",
    "short_commit",
    "source",
    "split_group_key",
    "try_desired",
]
