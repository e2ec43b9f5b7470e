"""`reconcile keys generate|show|reseal`: the signing key's life (docs/trust.md, "Keys").

- `generate` writes a new Ed25519 private key (PEM, mode 0600, never over an existing file) and prints the public
  key line agents pin.
- `show` prints the public key of the configured key (`signing.keyFile` or FLEETSHIFT_SIGNING_KEY) and the
  keys still trusted, so the line for agent.yaml never has to be derived by hand.
- `reseal` re-signs, with the configured key, every signed record whose signature is by another trusted key
  (the last step of a rotation, after which the old key can be dropped everywhere), and with
  `--adopt-unsigned` the records written before signing was turned on. Each record is rewritten with
  compare-and-swap, so a reconciler running meanwhile is never overwritten: a record it changed is already
  signed with the current key, or is counted as skipped and can be resealed again. A record whose signature
  does not hold is never signed: it is listed, and the command exits 1, because somebody wrote the store.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from contract.exitcodes import ExitCode
from contract.signing import Refused, Signer, is_envelope, open_envelope
from contract.store import PreconditionFailed, open_store
from contract.store.sealed import SEALED_PREFIXES, store_audience
from reconciler.cli.common import require_store
from reconciler.errors import ReconcilerError
from reconciler.plan.words import count
from reconciler.settings import DeploySettings
from reconciler.shell.signing import load_signer, store_keys


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    keys = sub.add_parser(
        "keys",
        parents=[parent],
        help="the signing key: generate, show, reseal",
        description="Manage the Ed25519 key the reconciler signs commands and its records with (docs/trust.md).",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser("generate", parents=[parent], help="write a new private key, print its public key")
    generate.add_argument("--out", type=Path, required=True, help="where to write the private key (PEM, mode 0600)")
    generate.add_argument("--comment", default="fleetshift", help="the public key line's comment (default: fleetshift)")
    generate.set_defaults(func=cmd_generate)
    show = actions.add_parser("show", parents=[parent], help="print the configured key's public key for agent.yaml")
    show.set_defaults(func=cmd_show)
    reseal = actions.add_parser(
        "reseal",
        parents=[parent],
        help="re-sign the store's records with the configured key (end of a rotation)",
        description="Re-sign every record signed by another trusted key (signing.trustedKeys) with the configured "
        "key; with --adopt-unsigned, also sign the records written before signing was turned on.",
    )
    reseal.add_argument("--adopt-unsigned", action="store_true",
                        help="sign unsigned records too (once, right after turning signing on)")
    reseal.set_defaults(func=cmd_reseal)


def _agent_snippet(signer: Signer) -> str:
    return (f"# agent.yaml\ncommandSigning:\n  trustedKeys:\n    - {signer.public.text}\n")


def cmd_generate(args: argparse.Namespace, settings: DeploySettings) -> int:
    signer = Signer.generate(args.comment)
    path: Path = args.out
    try:
        # O_EXCL: a key is never overwritten (that would lock every agent out); 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReconcilerError(f"{path} exists; a signing key is never overwritten (move it away first)") from None
    except OSError as exc:
        raise ReconcilerError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_pem())
    print(f"private key: {path} (keep it secret: set signing.keyFile to it, or its contents in FLEETSHIFT_SIGNING_KEY)")
    print(f"key id:      {signer.public.key_id}")
    print(f"public key:  {signer.public.text}")
    print()
    print(_agent_snippet(signer), end="")
    return ExitCode.OK


def cmd_show(args: argparse.Namespace, settings: DeploySettings) -> int:
    signer = load_signer(settings)
    if signer is None:
        print("no signing key configured (signing.keyFile or FLEETSHIFT_SIGNING_KEY): records are written unsigned",
              file=sys.stderr)
        return ExitCode.INVALID
    print(f"key id:     {signer.public.key_id}")
    print(f"public key: {signer.public.text}")
    _, trust = store_keys(settings, writer=False)
    others = [key for key_id, key in (trust.keys.items() if trust else []) if key_id != signer.public.key_id]
    for key in others:
        print(f"also trusted: {key.key_id} {key.text}")
    print()
    print(_agent_snippet(signer), end="")
    return ExitCode.OK


def cmd_reseal(args: argparse.Namespace, settings: DeploySettings) -> int:
    signer, trust = store_keys(settings, writer=True)
    if signer is None or trust is None:
        raise ReconcilerError("no signing key configured (signing.keyFile or FLEETSHIFT_SIGNING_KEY): nothing to "
                              "reseal with")
    # Opened as a writer: a store from before markers gets its marker now, so the records are signed for the
    # store id every other writer will check, not for its path. A missing store is not created.
    require_store(open_store(settings.store, create=False), "reseal")
    store = open_store(settings.store)
    audience = store_audience(store)
    resealed = current = unsigned = changed = 0
    refused: list[str] = []
    for prefix in SEALED_PREFIXES:
        for entry in store.list(prefix):
            stored = store.get(entry.key)
            if stored is None or stored.oversize is not None:
                continue
            if is_envelope(stored.data):
                try:
                    payload, key_id = open_envelope(stored.data, trust=trust, audience=audience, key=stored.key)
                except Refused as exc:
                    refused.append(f"{stored.key}: {exc}")
                    continue
                if key_id == signer.public.key_id:
                    current += 1
                    continue
            elif not args.adopt_unsigned:
                unsigned += 1
                continue
            else:
                payload = stored.data
            try:
                store.put_if_version(stored.key, signer.sign(audience=audience, key=stored.key, payload=payload),
                                     stored.version)
                resealed += 1
            except PreconditionFailed:
                changed += 1
    print(f"resealed {count(resealed, 'record')} with {signer.public.key_id}; {current} already signed with it")
    if changed:
        print(f"{count(changed, 'record')} changed while this ran (a reconciler wrote it): run reseal again")
    if unsigned:
        print(f"{count(unsigned, 'unsigned record')} left as is: readers that check signatures treat them as absent; "
              "--adopt-unsigned signs them (only right after turning signing on, when the store is trusted as is)")
    if refused:
        print(f"{count(len(refused), 'record')} whose signature does not hold, left as is (somebody else wrote the "
              "store; the reconciler treats them as absent):", file=sys.stderr)
        for line in refused:
            print(f"  {line}", file=sys.stderr)
        return ExitCode.INVALID
    return ExitCode.OK

