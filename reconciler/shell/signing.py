"""The reconciler's signing key and the store it signs through (docs/trust.md).

Where the key comes from, in order: `FLEETSHIFT_SIGNING_KEY` (the key itself, for CI secret stores), then
`signing.keyFile`. Neither: documents are written unsigned, as before signing existed, and agents that pin a key
refuse them. AWS KMS (which signs Ed25519 since 2025) is not supported yet: a key file or a CI secret covers the
places a reconciler runs today, and KMS signing could not be tested here (moto has no Ed25519 keys); the
`Signer` interface is where it would plug in.

Writers (`--once`, `watch`, the operator commands) must have the key when one is configured: an unreadable key
is a settings error (exit 1), never a silent fall-back to unsigned writes. Readers (`status`, `history`,
`plan`) only need to check signatures: they use the key when they can read it and the public keys in
`signing.trustedKeys` otherwise, so a plan job in CI needs no private key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

import structlog

from contract.signing import PublicKey, Signer, SigningError, Trust, load_public_key
from contract.store import Store, open_store
from contract.store.sealed import seal_store
from reconciler.errors import SettingsError
from reconciler.settings import SIGNING_KEY_VARIABLE, DeploySettings

log = structlog.get_logger(__name__)


def load_signer(settings: DeploySettings, environ: Mapping[str, str] | None = None) -> Signer | None:
    """The configured private key, or None when signing is not configured; SettingsError when it is and the
    key cannot be used."""
    environ = os.environ if environ is None else environ
    try:
        if environ.get(SIGNING_KEY_VARIABLE):
            return Signer.load(environ[SIGNING_KEY_VARIABLE].encode(), SIGNING_KEY_VARIABLE)
        path = settings.signing.key_file
        if path is None:
            return None
        try:
            data = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as exc:
            raise SettingsError(f"signing.keyFile: cannot read {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("signing.key_file_open", path=str(path), mode=oct(mode & 0o777),
                        hint=f"chmod 600 {path}: anyone who can read the key can run programs on every host")
        return Signer.load(data, f"signing.keyFile {path}")
    except SigningError as exc:
        raise SettingsError(str(exc)) from None


def trusted_keys(settings: DeploySettings) -> list[PublicKey]:
    keys: list[PublicKey] = []
    for index, text in enumerate(settings.signing.trusted_keys):
        try:
            keys.append(load_public_key(text))
        except SigningError as exc:
            raise SettingsError(f"signing.trustedKeys[{index}]: {exc}") from None
    return keys


def store_keys(settings: DeploySettings, *, writer: bool) -> tuple[Signer | None, Trust | None]:
    """The key to sign with (writers) and the keys whose signatures are accepted (None: nothing is checked)."""
    try:
        signer = load_signer(settings)
    except SettingsError as exc:
        if writer:
            raise
        signer = None
        if not settings.signing.trusted_keys:
            # Say so: otherwise status and plan would show forged records as genuine without a word.
            log.warning("signing.not_checked", error=str(exc),
                        hint="signatures are not checked: this side cannot read the key; list its public key in "
                        "signing.trustedKeys (`reconcile keys show`)")
    keys = trusted_keys(settings)
    if signer is not None:
        keys.insert(0, signer.public)
    return (signer if writer else None), (Trust(keys) if keys else None)


def open_fleet_store(settings: DeploySettings, *, create: bool = True, writer: bool = True) -> Store:
    """The configured store, signing what this process writes and checking what it reads."""
    signer, trust = store_keys(settings, writer=writer)
    return seal_store(open_store(settings.store, create=create), signer=signer, trust=trust)


def require_signed_record(settings: DeploySettings) -> None:
    """`repository.verify: strict` starts from the store's record of the last applied commit; unsigned, anyone who
    can write the store could move that start past an unsigned commit. So strict needs the records signed
    (docs/trust.md, "Verified commits")."""
    if settings.repository.verify.mode == "strict" and load_signer(settings) is None:
        raise SettingsError("repository.verify.mode: strict needs a signing key (signing.keyFile or "
                            "FLEETSHIFT_SIGNING_KEY): it starts from the last applied commit recorded in the store, "
                            "and only a signed record can be trusted; or use mode: head")
