"""The trust chain's parts, one at a time (issue 15): envelopes, keys, the sealed store, and the places that read
signed documents (the reconciler's reader, the agent's traffic gate, both sides' settings, `reconcile keys`).

tests/trust/test_hostile_store.py proves the whole chain with real agents; these tests pin each refusal reason and
each setting's error to the line of code that makes it, so a broken check fails here, fast, with its name.

The tests at the end pin defects found while writing these tests (see their docstrings), fixed since.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from agent.daemon.cli import command_trust
from agent.daemon.traffic_gate import StoreTrafficGate
from agent.settings import SettingsError as AgentSettingsError
from agent.settings import load_settings as load_agent_settings
from contract import wire
from contract.keys import command_key, group_state_key, status_key, traffic_key
from contract.models import GroupState, HostCommand, HostTraffic, LocalLocation, Revision, TrafficStepState
from contract.signing import (
    MAX_SIGNATURES,
    PublicKey,
    Refused,
    Signer,
    SigningError,
    Trust,
    is_envelope,
    load_public_key,
    open_envelope,
    unwrap,
)
from contract.store import MemoryStore, Store, StoredObject, open_store
from contract.store.bulk import get_many, read_folders
from contract.store.docs import DocumentInvalid, DocumentRefused, parse_document
from contract.store.file import FileStore
from contract.store.s3 import S3Store
from contract.store.sealed import SEALED_PREFIXES, SealedStore, seal_store, store_audience
from reconciler.cli.main import main as reconcile
from reconciler.errors import SettingsError
from reconciler.settings import SIGNING_KEY_VARIABLE, DeploySettings
from reconciler.shell.observe import StoreReader
from reconciler.shell.signing import load_signer, store_keys
from tests.conftest import require_tool

AUDIENCE = "file-store:0123456789abcdef"
KEY = command_key("web-1")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def host_command(host_id: str = "web-1", generation: int = 7) -> HostCommand:
    return HostCommand(
        host_id=host_id, generation=generation, deployment_id=f"d-{generation:09d}", application="hello",
        deployment_group="production", deployment_group_id="dg-production",
        revision=Revision(local=LocalLocation(path="/srv/bundles/hello", bundle_type="directory")), created_at=NOW,
    )


PAYLOAD = host_command().to_json()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("reconciler")


@pytest.fixture(scope="module")
def attacker() -> Signer:
    return Signer.generate("attacker")


@pytest.fixture(scope="module")
def trust(signer: Signer) -> Trust:
    return Trust([signer.public])


def edited(envelope: bytes, **fields: Any) -> bytes:
    """The envelope with some of its fields replaced (None: removed), written the way the signer writes it."""
    raw = json.loads(envelope)
    for name, value in fields.items():
        if value is None:
            raw.pop(name)
        else:
            raw[name] = value
    return json.dumps(raw, separators=(",", ":")).encode()


def refusal(data: bytes, trust: Trust, *, audience: str = AUDIENCE, key: str = KEY) -> str:
    with pytest.raises(Refused) as caught:
        open_envelope(data, trust=trust, audience=audience, key=key)
    return str(caught.value)


# --------------------------------------------------------------------------------------------------
# Envelopes


def test_a_signed_document_opens_to_the_exact_bytes_signed_and_names_its_key(signer: Signer, trust: Trust) -> None:
    """Round trip: the payload comes back byte for byte (never re-serialised) with the signing key's id."""
    envelope = signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    assert is_envelope(envelope) and not is_envelope(PAYLOAD)
    assert open_envelope(envelope, trust=trust, audience=AUDIENCE, key=KEY) == (PAYLOAD, signer.public.key_id)


def test_a_plain_document_is_refused_as_not_signed(trust: Trust) -> None:
    """A document written without the signing layer (what a store writer can do) is refused as such."""
    assert refusal(PAYLOAD, trust) == "not signed"


def test_a_document_signed_by_a_key_not_trusted_names_both_keys(signer: Signer, attacker: Signer,
                                                                  trust: Trust) -> None:
    """The attacker's own key: refused, naming the key id it carries and the ids this side trusts, so an operator
    can tell a forgery from a rotation that forgot a key."""
    message = refusal(attacker.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD), trust)
    assert message.startswith("signed by a key this side does not trust")
    assert attacker.public.key_id in message and f"trusted: {signer.public.key_id}" in message


def test_an_envelope_with_no_signature_is_refused_as_untrusted(signer: Signer, trust: Trust) -> None:
    """An empty signature list cannot pass as "no trusted signature failed"."""
    envelope = edited(signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD), signatures=[])
    assert "does not trust (no signature;" in refusal(envelope, trust)


def test_a_payload_altered_after_signing_is_refused(signer: Signer, trust: Trust) -> None:
    """Another command in a genuine envelope: the signature no longer matches."""
    envelope = signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    evil = host_command(generation=8).to_json().replace(b"/srv/bundles/hello", b"/tmp/evil")
    altered = edited(envelope, payload=base64.b64encode(evil).decode())
    assert refusal(altered, trust) == "the signature does not match the document: it was altered after signing"


@pytest.mark.parametrize("field", ["audience", "key"])
def test_editing_the_envelopes_own_audience_or_key_is_an_alteration(signer: Signer, trust: Trust, field: str) -> None:
    """The signature covers `audience` and `key`: a command signed for web-2 (or another store) whose envelope field
    is edited to say web-1 (this store) is refused as altered, never accepted and never reported as "moved"
    (which would quote values nobody signed)."""
    other = {"audience": "file-store:staging", "key": command_key("web-2")}
    envelope = signer.sign(**{"audience": AUDIENCE, "key": KEY, field: other[field]}, payload=PAYLOAD)
    forged = edited(envelope, **{field: {"audience": AUDIENCE, "key": KEY}[field]})
    assert "altered after signing" in refusal(forged, trust)


def test_a_document_moved_from_another_key_is_refused(signer: Signer, trust: Trust) -> None:
    """web-2's genuine command copied onto web-1's key."""
    envelope = signer.sign(audience=AUDIENCE, key=command_key("web-2"), payload=PAYLOAD)
    assert refusal(envelope, trust) == (
        "signed for commands/web-2.json, not commands/web-1.json: another host's document moved here"
    )


def test_a_document_signed_for_another_store_is_refused(signer: Signer, trust: Trust) -> None:
    """A genuine command of the staging store copied into production (same key, same signer)."""
    envelope = signer.sign(audience="s3://staging/fleet/", key=KEY, payload=PAYLOAD)
    message = refusal(envelope, trust)
    assert message.startswith(f"signed for the store s3://staging/fleet/, not this one ({AUDIENCE})")


def test_a_broken_envelope_is_refused_as_not_json(signer: Signer, trust: Trust) -> None:
    """Truncated (a partial upload): it starts like an envelope but does not parse."""
    envelope = signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    assert refusal(envelope[:-10], trust) == "a broken signature envelope (not JSON)"


def test_an_envelope_of_another_version_says_to_upgrade(signer: Signer, trust: Trust) -> None:
    """A newer envelope format is refused with the fix (upgrade), not taken for a broken or forged one."""
    envelope = edited(signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD), fleetshiftSigned="v2")
    assert refusal(envelope, trust) == "a signature envelope of another version ('v2'): upgrade this side"


@pytest.mark.parametrize(
    "fields",
    [
        {"payload": None},
        {"audience": None},
        {"key": None},
        {"signatures": None},
        {"payload": "not base64!"},
        {"signatures": [{"keyId": "SHA256:x", "sig": "not base64!"}]},
        {"signatures": [{"sig": "AAAA"}]},
        {"signatures": "SHA256:x"},
        {"signatures": {"keyId": "SHA256:x"}},
        {"payload": 12},
    ],
    ids=["no-payload", "no-audience", "no-key", "no-signatures", "payload-not-base64", "sig-not-base64",
         "signature-without-key-id", "signatures-a-string", "signatures-a-mapping", "payload-a-number"],
)
def test_missing_or_malformed_fields_are_refused_as_broken(signer: Signer, trust: Trust,
                                                           fields: dict[str, Any]) -> None:
    """Every malformed envelope ends as `Refused` with one message, never as a KeyError or TypeError that would
    stop the agent's poll loop."""
    envelope = edited(signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD), **fields)
    assert refusal(envelope, trust) == "a broken signature envelope (fields missing or not base64)"


def test_any_trusted_signature_among_several_is_enough(signer: Signer, attacker: Signer, trust: Trust) -> None:
    """An untrusted signature listed first does not hide a genuine one (several signers during a rotation)."""
    envelope = signer.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    foreign = json.loads(attacker.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD))["signatures"]
    both = edited(envelope, signatures=foreign + json.loads(envelope)["signatures"])
    assert open_envelope(both, trust=trust, audience=AUDIENCE, key=KEY) == (PAYLOAD, signer.public.key_id)


def test_a_trusted_key_id_with_a_signature_by_another_key_is_altered(signer: Signer, attacker: Signer,
                                                                     trust: Trust) -> None:
    """Claiming the trusted key's id does not help: the attacker's signature is checked against the trusted key."""
    forged = json.loads(attacker.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD))
    forged["signatures"][0]["keyId"] = signer.public.key_id
    assert "altered after signing" in refusal(json.dumps(forged, separators=(",", ":")).encode(), trust)


def test_unwrap_returns_the_payload_unchecked_and_plain_documents_as_they_are(attacker: Signer) -> None:
    """For readers without keys: any envelope (even an untrusted one) is unwrapped, a plain document passes, and a
    broken envelope comes back whole, to fail later as an unreadable document."""
    assert unwrap(attacker.sign(audience="anywhere", key="anything", payload=PAYLOAD)) == PAYLOAD
    assert unwrap(PAYLOAD) == PAYLOAD
    broken = b'{"fleetshiftSigned":"v1","payload":"!!"}'
    assert unwrap(broken) == broken
    assert unwrap(b'{"fleetshiftSigned":') == b'{"fleetshiftSigned":'


# --------------------------------------------------------------------------------------------------
# Keys


def test_a_pem_key_loads_back_as_the_same_key(signer: Signer, trust: Trust) -> None:
    """`reconcile keys generate` writes `private_pem()`; loading it gives the same key id, and its signatures are
    accepted by the original's public key."""
    loaded = Signer.load(signer.private_pem(), "signing.pem")
    assert loaded.public.key_id == signer.public.key_id
    envelope = loaded.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    assert open_envelope(envelope, trust=trust, audience=AUDIENCE, key=KEY)[1] == signer.public.key_id


def test_an_openssh_key_loads_and_its_id_is_the_ssh_keygen_fingerprint(tmp_path: Path) -> None:
    """A key from `ssh-keygen -t ed25519 -N ''` signs, and its key id is exactly what `ssh-keygen -lf` prints,
    for the private key and for its `.pub` line read by `load_public_key`."""
    require_tool("ssh-keygen", "openssh-client")
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f", str(path)],
                   check=True, capture_output=True)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(path) + ".pub"], check=True, capture_output=True,
                                 text=True).stdout.split()[1]
    assert fingerprint.startswith("SHA256:")
    loaded = Signer.load(path.read_bytes(), str(path))
    public = load_public_key(Path(str(path) + ".pub").read_text())
    assert loaded.public.key_id == public.key_id == fingerprint
    assert public.text.endswith(" ops@example")
    envelope = loaded.sign(audience=AUDIENCE, key=KEY, payload=PAYLOAD)
    assert open_envelope(envelope, trust=Trust([public]), audience=AUDIENCE, key=KEY) == (PAYLOAD, fingerprint)


def test_a_passphrase_protected_openssh_key_is_refused_with_the_reason(tmp_path: Path) -> None:
    """`ssh-keygen -N secret`: refused as passphrase-protected, naming the file, instead of a generic "not a key"."""
    require_tool("ssh-keygen", "openssh-client")
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(path)],
                   check=True, capture_output=True)
    with pytest.raises(SigningError, match="^" + re.escape(f"{path}: the key is protected by a passphrase")):
        Signer.load(path.read_bytes(), str(path))


def test_a_passphrase_protected_pem_key_is_refused_with_the_reason(signer: Signer) -> None:
    """The reconciler runs unattended: the message says to drop the passphrase and protect the file."""
    encrypted = signer._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(SigningError, match=r"^key.pem: the key is protected by a passphrase.*protect the file"):
        Signer.load(encrypted, "key.pem")


def test_an_rsa_key_is_refused_saying_ed25519() -> None:
    """A key of the wrong type is named, with the command that makes a right one."""
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SigningError, match=r"^rsa.pem: a RSA key; fleetshift signs with Ed25519"):
        Signer.load(rsa_pem, "rsa.pem")


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", b"\xff" * 64])
def test_garbage_is_not_a_private_key(data: bytes) -> None:
    """Empty, random, truncated or binary key material is one `SigningError` naming its source, never a crash."""
    with pytest.raises(SigningError, match=r"^FLEETSHIFT_SIGNING_KEY: not a PEM or OpenSSH private key"):
        Signer.load(data, "FLEETSHIFT_SIGNING_KEY")


def test_a_public_key_is_not_a_private_key(signer: Signer) -> None:
    """Pasting the public line where the private key goes is a clear error, not a crash."""
    with pytest.raises(SigningError, match="not a PEM or OpenSSH private key"):
        Signer.load(signer.public.text.encode(), "signing.keyFile")


def test_load_public_key_reads_the_line_keys_show_prints(signer: Signer) -> None:
    """The `ssh-ed25519 AAAA... comment` line round-trips to the same id, comment included."""
    public = load_public_key(f"  {signer.public.text}\n")
    assert (public.key_id, public.text) == (signer.public.key_id, signer.public.text)
    assert public.text.endswith(" reconciler")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not an Ed25519 public key"),
        ("ssh-ed25519", "is not an Ed25519 public key"),
        ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user", "'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ u' is not an Ed25519"),
        ("ecdsa-sha2-nistp256 AAAA", "is not an Ed25519 public key: write the `ssh-ed25519 AAAA...` line"),
        ("ssh-ed25519 AAAA!!notbase64", "AAAA!!notbase64...: not a valid Ed25519 public key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "not a valid Ed25519 public key"),
    ],
    ids=["empty", "type-only", "rsa", "ecdsa", "bad-base64", "truncated-blob"],
)
def test_load_public_key_refuses_what_is_not_an_ed25519_line(text: str, message: str) -> None:
    """Each kind of wrong public key line (empty, no key, another type, bad base64, a cut blob) is a `SigningError` that
    quotes the start of what was written."""
    with pytest.raises(SigningError, match=re.escape(message)):
        load_public_key(text)


def test_an_rsa_blob_under_the_ed25519_label_is_refused() -> None:
    """The type word is checked against the key inside the line, not only against the word itself."""
    rsa_line = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    with pytest.raises(SigningError, match="not a valid Ed25519 public key"):
        load_public_key(rsa_line.replace("ssh-rsa", "ssh-ed25519", 1))


# --------------------------------------------------------------------------------------------------
# The sealed store

SEALED_KEYS = [command_key("web-1"), traffic_key("web-1"), "deployments/d-000000007.json",
               group_state_key("hello", "web"), "analysis/d-000000007.json", "config/applied.json",
               "events/fleet.json", "events/notifications/oncall.json", "cache/warm-start.json.gz"]
PLAIN_KEYS = [status_key("web-1"), "hosts/web-1/registration.json", "leases/reconciler.json"]


@dataclass
class Sealed:
    inner: MemoryStore
    writer: SealedStore  # the reconciler: signs, and checks with its own key
    reader: SealedStore  # an agent: checks only


@pytest.fixture
def sealed(signer: Signer, trust: Trust) -> Sealed:
    inner = MemoryStore()
    writer = seal_store(inner, signer=signer, trust=trust)
    reader = seal_store(inner, trust=trust)
    assert isinstance(writer, SealedStore) and isinstance(reader, SealedStore)
    return Sealed(inner, writer, reader)


def test_the_sealed_prefixes_are_the_ones_this_test_covers() -> None:
    """A prefix added to SEALED_PREFIXES must get a key in SEALED_KEYS above."""
    assert sorted(SEALED_PREFIXES) == sorted({key.split("/")[0] + "/" for key in SEALED_KEYS})


@pytest.mark.parametrize("key", SEALED_KEYS)
def test_keys_under_sealed_prefixes_are_stored_as_envelopes_and_read_as_payloads(
    sealed: Sealed, trust: Trust, key: str
) -> None:
    """What the reconciler writes there is an envelope in the backend, bound to that key and this store; reading it
    back through the sealed store gives the payload at the backend's version."""
    version = sealed.writer.put(key, PAYLOAD)
    raw = sealed.inner.get(key)
    assert raw is not None and raw.version == version and is_envelope(raw.data)
    assert open_envelope(raw.data, trust=trust, audience=sealed.writer.audience, key=key)[0] == PAYLOAD
    for store in (sealed.writer, sealed.reader):
        assert store.get(key) == StoredObject(key, PAYLOAD, version)


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_keys_agents_write_and_the_lease_stay_plain(sealed: Sealed, key: str) -> None:
    """hosts/ and leases/ are never signed (agents hold no keys) and never checked."""
    version = sealed.writer.put(key, PAYLOAD)
    assert sealed.inner.get(key) == StoredObject(key, PAYLOAD, version)
    assert sealed.reader.get(key) == StoredObject(key, PAYLOAD, version)


def test_conditional_writes_are_sealed_too(sealed: Sealed) -> None:
    """The reconciler's compare-and-swap writes go through the same signing as `put`."""
    first = sealed.writer.put_if_absent(KEY, PAYLOAD)
    second = sealed.writer.put_if_version(KEY, host_command(generation=8).to_json(), first)
    raw = sealed.inner.get(KEY)
    assert raw is not None and raw.version == second and is_envelope(raw.data)
    read = sealed.reader.get(KEY)
    assert read is not None and HostCommand.model_validate_json(read.data).generation == 8


def test_an_unchanged_conditional_read_passes_through_without_a_check(sealed: Sealed) -> None:
    """An agent's poll of an unchanged command gets the backend's empty "unchanged" answer, not a refusal of its
    empty body (which would be "not signed" on every poll)."""
    version = sealed.writer.put(KEY, PAYLOAD)
    assert sealed.reader.get(KEY, if_version_not=version) == StoredObject(KEY, b"", version)
    assert sealed.reader.get(KEY, if_version_not="m0") == StoredObject(KEY, PAYLOAD, version)


def test_without_trust_envelopes_are_unwrapped_and_plain_documents_pass(sealed: Sealed, attacker: Signer) -> None:
    """Signing not configured on this side: everything reads as before signing existed (a store half written by a
    signing reconciler stays readable by one that does not check)."""
    unchecked = seal_store(sealed.inner)
    signed = sealed.writer.put(KEY, PAYLOAD)
    assert unchecked.get(KEY) == StoredObject(KEY, PAYLOAD, signed)
    foreign = sealed.inner.put(traffic_key("web-1"), attacker.sign(audience="x", key="y", payload=PAYLOAD))
    assert unchecked.get(traffic_key("web-1")) == StoredObject(traffic_key("web-1"), PAYLOAD, foreign)
    plain = sealed.inner.put(group_state_key("hello", "web"), PAYLOAD)
    assert unchecked.get(group_state_key("hello", "web")) == StoredObject(group_state_key("hello", "web"), PAYLOAD,
                                                                          plain)


def test_an_empty_trust_list_checks_nothing(sealed: Sealed) -> None:
    """`Trust([])` is "not configured", the same as None (the agent refuses an empty trustedKeysFile for this
    reason, see test_an_empty_trusted_keys_file_is_refused)."""
    store = seal_store(sealed.inner, trust=Trust([]))
    assert isinstance(store, SealedStore) and store.trust is None
    version = sealed.inner.put(KEY, PAYLOAD)
    assert store.get(KEY) == StoredObject(KEY, PAYLOAD, version)


def test_with_trust_an_unsigned_document_is_refused_and_parses_as_document_refused(sealed: Sealed) -> None:
    """A forged (plain) command: no data comes back, `refused` says why, and `parse_document` raises
    `DocumentRefused`, a `DocumentInvalid`, so every reader's "unreadable" path handles it."""
    version = sealed.inner.put(KEY, PAYLOAD)
    stored = sealed.reader.get(KEY)
    assert stored == StoredObject(KEY, b"", version, refused="not signed")
    with pytest.raises(DocumentRefused) as caught:
        parse_document(stored, HostCommand)
    assert isinstance(caught.value, DocumentInvalid)
    assert (caught.value.key, caught.value.reason, caught.value.version) == (KEY, "not signed", version)
    assert str(caught.value) == f"{KEY}: refused: not signed"


def test_a_document_moved_inside_the_store_is_refused_through_the_store(sealed: Sealed) -> None:
    """The store passes each object's own key to the check: web-2's command copied onto web-1's key is refused."""
    sealed.writer.put(command_key("web-2"), host_command("web-2").to_json())
    moved = sealed.inner.get(command_key("web-2"))
    assert moved is not None
    sealed.inner.put(KEY, moved.data)
    stored = sealed.reader.get(KEY)
    assert stored is not None and stored.refused is not None and "another host's document moved here" in stored.refused


def test_an_oversize_sealed_document_is_reported_as_oversize_not_refused(sealed: Sealed) -> None:
    """Too big to read: the read limit's message, not a signature error about an empty body."""
    sealed.inner.put(KEY, b" " * (1024 * 1024 + 1))
    stored = sealed.reader.get(KEY)
    assert stored is not None and stored.oversize == 1024 * 1024 + 1 and stored.refused is None
    with pytest.raises(DocumentInvalid, match="not read") as caught:
        parse_document(stored, HostCommand)
    assert not isinstance(caught.value, DocumentRefused)


def test_the_s3_audience_is_bucket_and_prefix_not_endpoint_or_region() -> None:
    """Two clients of one bucket (a reconciler through a VPC endpoint, an agent through the public one) agree on
    the audience; another prefix of the same bucket is another store."""
    near = S3Store("s3://fleet-bucket/prod?endpoint=http://127.0.0.1:9&region=us-east-1")
    far = S3Store("s3://fleet-bucket//prod/?endpoint=http://10.1.2.3:9000&region=eu-west-1")
    assert store_audience(near) == store_audience(far) == "s3://fleet-bucket/prod/"
    assert store_audience(S3Store("s3://fleet-bucket/staging?region=us-east-1")) == "s3://fleet-bucket/staging/"
    assert store_audience(seal_store(near)) == store_audience(near)


def test_a_file_stores_audience_is_its_real_path_never_the_stores_content(tmp_path: Path) -> None:
    """One folder reached through a symlink is one store: both sides compute the same audience (the real path),
    and a record signed through one path verifies through the other.

    The audience comes from each side's own settings, never from the store: a store writer who copies another
    store's `.fleetshift-store` marker (and its signed commands) into this folder does not change it. A copy of
    the folder elsewhere is another store: its records, signed for this path, are refused there."""
    folder = tmp_path / "store"
    store = open_store(f"file://{folder}")
    assert isinstance(store, FileStore)
    (tmp_path / "mount").symlink_to(folder)
    linked = open_store(f"file://{tmp_path / 'mount'}", create=False)
    audience = store_audience(store)
    assert audience == f"file://{os.path.realpath(folder)}"
    assert store_audience(linked) == audience

    signer = Signer.generate()
    seal_store(store, signer=signer).put(KEY, PAYLOAD)
    via_link = seal_store(linked, trust=Trust([signer.public])).get(KEY)
    assert via_link is not None and via_link.refused is None and via_link.data == PAYLOAD

    other = tmp_path / "other"
    open_store(f"file://{other}")
    (other / ".fleetshift-store").write_bytes((folder / ".fleetshift-store").read_bytes())  # the marker swapped
    assert store_audience(open_store(f"file://{other}")) != audience
    shutil.copytree(folder, tmp_path / "copy")
    copied = seal_store(open_store(f"file://{tmp_path / 'copy'}"), trust=Trust([signer.public])).get(KEY)
    assert copied is not None and copied.refused is not None and "another store" in copied.refused


def test_any_other_store_is_its_url() -> None:
    """A store with neither bucket nor marker (MemoryStore) is identified by its URL, wrapped or not."""
    store = MemoryStore("memory://fleet")
    assert store_audience(store) == "memory://fleet"
    assert store_audience(seal_store(store)) == "memory://fleet"


# --------------------------------------------------------------------------------------------------
# Readers of signed documents


def group_state(group: str) -> GroupState:
    return GroupState(application="hello", deployment_group=group, updated_at=NOW)


def test_the_reconciler_reads_a_forged_group_as_absent_but_keeps_its_version(sealed: Sealed) -> None:
    """A group record written unsigned into the backend is not believed (state.groups lacks it), but its version
    is in the snapshot, so the reconciler's next write replaces it by compare-and-swap instead of failing on
    put_if_absent forever."""
    genuine, forged = group_state_key("hello", "web"), group_state_key("hello", "api")
    sealed.writer.put(genuine, group_state("web").to_json())
    forged_version = sealed.inner.put(forged, group_state("api").to_json())

    reader = StoreReader(sealed.writer)
    with capture_logs() as logs:
        snapshot = reader.snapshot()
    assert set(snapshot.state.groups) == {"hello/web"}
    assert snapshot.versions[forged] == forged_version
    assert any(log["event"] == "observe.unreadable" and log["key"] == forged and "refused: not signed" in log["error"]
               for log in logs)

    replaced = sealed.writer.put_if_version(forged, group_state("api").to_json(), snapshot.versions[forged])
    again = reader.snapshot()
    assert set(again.state.groups) == {"hello/web", "hello/api"} and again.versions[forged] == replaced


def traffic_record(state: TrafficStepState, generation: int = 7) -> bytes:
    return HostTraffic(host_id="web-1", generation=generation, deployment_id="d-000000007", group="hello/production",
                       step="BlockTraffic", state=state, started_at=NOW, ended_at=NOW,
                       message="haproxy web/web-1: drained").to_json()


def stop_after(polls: int) -> Callable[[], bool]:
    """A `should_stop` that lets the gate look `polls` times."""
    calls = iter(range(polls + 1))
    return lambda: next(calls, polls) >= polls


def test_the_traffic_gate_does_not_take_a_forged_blocktraffic_as_done(sealed: Sealed) -> None:
    """A forged `traffic/web-1.json` saying BlockTraffic Succeeded for this very command: the agent keeps waiting
    (here until it is told to stop), so it never stops its service while still in the load balancers. The same
    record signed by the reconciler ends the wait at once."""
    command = wire.HostCommand.model_validate_json(host_command().to_json())  # the agent's record of it
    sealed.inner.put(traffic_key("web-1"), traffic_record(TrafficStepState.SUCCEEDED))
    gate = StoreTrafficGate(sealed.reader, "web-1", interval=0.001, stop=threading.Event())
    stored = sealed.reader.get(traffic_key("web-1"))
    assert stored is not None and gate._decided(stored, command, "BlockTraffic") is None
    with capture_logs() as logs:
        outcome = gate(command, "BlockTraffic", stop_after(3), None)
    assert not outcome.succeeded and "shutting down" in outcome.message
    assert [log["event"] for log in logs] == ["traffic.record_unreadable"]  # once per version, not per poll

    sealed.writer.put(traffic_key("web-1"), traffic_record(TrafficStepState.SUCCEEDED))
    outcome = gate(command, "BlockTraffic", stop_after(3), None)
    assert outcome.succeeded and outcome.message == "haproxy web/web-1: drained"


# --------------------------------------------------------------------------------------------------
# Agent settings


def test_a_bad_trusted_key_in_agent_yaml_names_the_setting_and_line(tmp_path: Path, signer: Signer) -> None:
    """A bad key in agent.yaml is reported at its file line, with the setting and the item's number (1-based)."""
    config = tmp_path / "agent.yaml"
    config.write_text(f"hostId: web-1\ncommandSigning:\n  trustedKeys:\n    - {signer.public.text}\n"
                      "    - ssh-ed25519 AAAAnotakey\n")
    with pytest.raises(AgentSettingsError) as caught:
        load_agent_settings(config, environ={})
    [problem] = caught.value.problems
    assert problem.startswith(f"{config}:3:3: commandSigning.trustedKeys: item 2: AAAAnotakey")
    assert "not a valid Ed25519 public key" in problem


@pytest.mark.parametrize("separator", ["\n", ",", " ,\n "])
def test_trusted_keys_from_the_environment_split_on_newlines_and_commas(signer: Signer, attacker: Signer,
                                                                        separator: str) -> None:
    """FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS holds one key per line, or comma-separated (two keys during a
    rotation), and both end up trusted."""
    environ = {"FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS":
               f"{signer.public.text}{separator}{attacker.public.text}\n"}
    settings = load_agent_settings(None, environ=environ)
    assert settings.command_signing.trusted_keys == [signer.public.text, attacker.public.text]
    trusted = command_trust(settings)
    assert trusted is not None and set(trusted.keys) == {signer.public.key_id, attacker.public.key_id}


def test_a_bad_trusted_key_from_the_environment_names_the_variable() -> None:
    """A bad key set by the variable is reported with the variable's name, since there is no file line."""
    with pytest.raises(AgentSettingsError) as caught:
        load_agent_settings(None, environ={"FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS": "ssh-rsa AAAA"})
    assert caught.value.problems[0].startswith("FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS: item 1: ")


def agent_settings_with_keys_file(tmp_path: Path, text: str | None) -> Any:
    keys_file = tmp_path / "trusted_keys"
    if text is not None:
        keys_file.write_text(text)
    return load_agent_settings(None, environ={"FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS_FILE": str(keys_file)})


def test_no_trusted_keys_means_nothing_is_checked() -> None:
    """No key anywhere: `command_trust` is None and the agent acts on unsigned commands, as before signing."""
    assert command_trust(load_agent_settings(None, environ={})) is None


@pytest.mark.parametrize("text", ["", "\n\n", "# the reconciler's key goes here\n   # and here\n"])
def test_an_empty_trusted_keys_file_is_refused(tmp_path: Path, text: str) -> None:
    """An empty trust list would mean "check nothing": a config-management run that truncated the file must not
    turn signatures off, so it is a settings error."""
    with pytest.raises(AgentSettingsError, match=r"commandSigning.trustedKeysFile: .* holds no keys"):
        command_trust(agent_settings_with_keys_file(tmp_path, text))


def test_an_unreadable_trusted_keys_file_is_refused(tmp_path: Path) -> None:
    """A trustedKeysFile that does not exist is a settings error (the agent must not start unchecked)."""
    with pytest.raises(AgentSettingsError, match=r"^commandSigning.trustedKeysFile: cannot read "):
        command_trust(agent_settings_with_keys_file(tmp_path, None))


def test_a_trusted_keys_file_with_comments_and_blank_lines(tmp_path: Path, signer: Signer, attacker: Signer) -> None:
    """Comment lines (also indented) and blank lines are skipped; each remaining line is a key."""
    text = f"# reconciler keys, managed by config management\n\n{signer.public.text}\n  # old key:\n" \
           f"  {attacker.public.text}  \n"
    trusted = command_trust(agent_settings_with_keys_file(tmp_path, text))
    assert trusted is not None and list(trusted.keys) == [signer.public.key_id, attacker.public.key_id]


def test_a_bad_line_in_the_trusted_keys_file_is_numbered(tmp_path: Path, signer: Signer) -> None:
    """A bad line in the file is named by its number among the keys read."""
    with pytest.raises(AgentSettingsError, match=r"^commandSigning: key 2: 'ssh-dss AAAA' is not an Ed25519"):
        command_trust(agent_settings_with_keys_file(tmp_path, f"{signer.public.text}\nssh-dss AAAA\n"))


# --------------------------------------------------------------------------------------------------
# Reconciler settings and `reconcile keys`


def deploy_settings(**signing: Any) -> DeploySettings:
    return DeploySettings.model_validate({"signing": signing})


def write_key(path: Path, signer: Signer, mode: int = 0o600) -> Path:
    path.write_bytes(signer.private_pem())
    path.chmod(mode)
    return path


def test_an_unreadable_key_file_is_a_settings_error_naming_signing_key_file(tmp_path: Path) -> None:
    """A configured key that cannot be read never falls back to unsigned writes."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(SettingsError, match="^" + re.escape(f"signing.keyFile: cannot read {missing}: No such file")):
        load_signer(deploy_settings(keyFile=str(missing)), environ={})


def test_a_key_file_that_is_not_a_key_names_the_setting_and_file(tmp_path: Path) -> None:
    """A readable file that holds no key is a settings error naming signing.keyFile and the path."""
    path = tmp_path / "signing.pem"
    path.write_text("not a key")
    path.chmod(0o600)
    expected = f"signing.keyFile {path}: not a PEM or OpenSSH private key"
    with pytest.raises(SettingsError, match="^" + re.escape(expected)):
        load_signer(deploy_settings(keyFile=str(path)), environ={})


def test_the_key_in_the_environment_wins_over_the_key_file(tmp_path: Path, signer: Signer, attacker: Signer) -> None:
    """FLEETSHIFT_SIGNING_KEY (a CI secret) is used even when signing.keyFile names another key, or none that
    exists; without it the file is used, and with neither nothing signs."""
    key_file = write_key(tmp_path / "file.pem", attacker)
    environ = {SIGNING_KEY_VARIABLE: signer.private_pem().decode()}
    from_env = load_signer(deploy_settings(keyFile=str(key_file)), environ=environ)
    assert from_env is not None and from_env.public.key_id == signer.public.key_id
    assert load_signer(deploy_settings(keyFile=str(tmp_path / "missing.pem")), environ=environ) is not None
    from_file = load_signer(deploy_settings(keyFile=str(key_file)), environ={})
    assert from_file is not None and from_file.public.key_id == attacker.public.key_id
    assert load_signer(deploy_settings(), environ={}) is None


def test_a_bad_key_in_the_environment_names_the_variable(signer: Signer) -> None:
    """A public key pasted into FLEETSHIFT_SIGNING_KEY is a settings error naming the variable (never its value)."""
    with pytest.raises(SettingsError, match=rf"^{SIGNING_KEY_VARIABLE}: not a PEM or OpenSSH private key"):
        load_signer(deploy_settings(), environ={SIGNING_KEY_VARIABLE: signer.public.text})


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_a_key_file_others_can_read_is_warned_about(tmp_path: Path, signer: Signer, mode: int, warned: bool) -> None:
    """Anyone who can read the key can run programs on every host: group or world access logs
    `signing.key_file_open` with the chmod to run (the key is still used)."""
    key_file = write_key(tmp_path / "signing.pem", signer, mode)
    with capture_logs() as logs:
        assert load_signer(deploy_settings(keyFile=str(key_file)), environ={}) is not None
    warnings = [log for log in logs if log["event"] == "signing.key_file_open"]
    if warned:
        assert warnings == [{"event": "signing.key_file_open", "log_level": "warning", "path": str(key_file),
                             "mode": oct(mode), "hint": f"chmod 600 {key_file}: anyone who can read the key can "
                             "run programs on every host"}]
    else:
        assert warnings == []


def test_readers_check_with_trusted_keys_when_the_private_key_is_unreadable(tmp_path: Path, signer: Signer) -> None:
    """`status`/`plan` in CI have no private key: they still check signatures with signing.trustedKeys, while a
    writer with the same settings is refused."""
    settings = deploy_settings(keyFile=str(tmp_path / "missing.pem"), trustedKeys=[signer.public.text])
    no_signer, trusted = store_keys(settings, writer=False)
    assert no_signer is None and trusted is not None and list(trusted.keys) == [signer.public.key_id]
    with pytest.raises(SettingsError, match=r"^signing\.keyFile: cannot read"):
        store_keys(settings, writer=True)


def test_a_bad_trusted_key_in_deploy_settings_names_its_index(signer: Signer) -> None:
    """signing.trustedKeys errors name the list index of the bad key."""
    with pytest.raises(SettingsError, match=r"^signing.trustedKeys\[1\]: "):
        store_keys(deploy_settings(trustedKeys=[signer.public.text, "ssh-ed25519 nope"]), writer=False)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`reconcile` run in-process from an empty folder, with no FLEETSHIFT_* variable from the caller."""
    for name in list(os.environ):
        if name.startswith("FLEETSHIFT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLEETSHIFT_LOGGING_FORMAT", "json")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_keys_show_without_a_key_exits_1(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`reconcile keys show` with no key configured says so on stderr and exits 1 (there is nothing to pin)."""
    assert reconcile(["keys", "show"]) == 1
    assert "no signing key configured" in capsys.readouterr().err


def test_keys_show_prints_the_public_key_and_the_other_trusted_keys(
    cli_env: Path, capsys: pytest.CaptureFixture[str], signer: Signer, attacker: Signer
) -> None:
    """The agent.yaml snippet holds the configured key; keys still trusted are listed apart. (A PEM key has no
    comment: the line printed carries the default one, `fleetshift`.)"""
    key_file = write_key(cli_env / "signing.pem", signer)
    config = cli_env / "deploy.yaml"
    config.write_text(f"signing:\n  keyFile: {key_file}\n  trustedKeys:\n    - {attacker.public.text}\n")
    assert reconcile(["--config", str(config), "keys", "show"]) == 0
    out = capsys.readouterr().out
    line = signer.public.text.removesuffix(" reconciler") + " fleetshift"
    assert f"key id:     {signer.public.key_id}\npublic key: {line}\n" in out
    assert f"also trusted: {attacker.public.key_id} {attacker.public.text}\n" in out
    assert out.endswith(f"commandSigning:\n  trustedKeys:\n    - {line}\n")


def test_keys_show_with_an_unreadable_key_file_exits_1_naming_it(cli_env: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An unreadable signing.keyFile is exit 1 with the setting named, through the real CLI error path."""
    config = cli_env / "deploy.yaml"
    config.write_text(f"signing:\n  keyFile: {cli_env / 'missing.pem'}\n")
    assert reconcile(["--config", str(config), "keys", "show"]) == 1
    assert "signing.keyFile: cannot read" in capsys.readouterr().err


def test_keys_generate_writes_a_0600_key_and_never_overwrites(cli_env: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The new key is private from its first byte (mode 0600), loads back to the key id printed, and a second
    `generate` to the same path exits 1 without touching it (overwriting would lock every agent out)."""
    key_file = cli_env / "signing.pem"
    assert reconcile(["keys", "generate", "--out", str(key_file), "--comment", "prod"]) == 0
    out = capsys.readouterr().out
    assert key_file.stat().st_mode & 0o777 == 0o600
    loaded = Signer.load(key_file.read_bytes(), str(key_file))
    assert f"key id:      {loaded.public.key_id}\n" in out
    assert f"    - {loaded.public.text.removesuffix(' fleetshift')} prod\n" in out

    before = key_file.read_bytes()
    assert reconcile(["keys", "generate", "--out", str(key_file)]) == 1
    assert "exists; a signing key is never overwritten" in capsys.readouterr().err
    assert key_file.read_bytes() == before


@dataclass
class ResealWorld:
    raw: Store
    config: Path
    old: Signer
    new: Signer
    attacker: Signer
    audience: str
    before: dict[str, bytes]

    def run(self, *args: str) -> int:
        return reconcile(["--config", str(self.config), "keys", "reseal", *args])

    def signed_by(self, key: str) -> str | None:
        """The key id the record at `key` verifies with (old or new key), or None when it is not signed."""
        stored = self.raw.get(key)
        assert stored is not None
        if not is_envelope(stored.data):
            return None
        payload, key_id = open_envelope(stored.data, trust=Trust([self.old.public, self.new.public]),
                                        audience=self.audience, key=key)
        assert payload == unwrap(self.before[key]), f"{key}: the payload changed"
        return key_id


@pytest.fixture
def reseal_world(cli_env: Path, signer: Signer, attacker: Signer) -> Iterator[ResealWorld]:
    """A store after a rotation: the old key (still trusted) signed a group and a command, the new key signed
    one command, a deployment was written before signing was turned on, and an attacker wrote host-2's command
    with their own key; hosts/ holds a status (never sealed)."""
    old, new = signer, Signer.generate("new")
    url = f"file://{cli_env / 'store'}"
    raw = open_store(url)
    with_old = seal_store(raw, signer=old)
    with_old.put(group_state_key("hello", "web"), group_state("web").to_json())
    with_old.put(command_key("host-1"), host_command("host-1").to_json())
    seal_store(raw, signer=new).put(command_key("host-3"), host_command("host-3").to_json())
    raw.put("deployments/d-000000007.json", b'{"written": "before signing"}')
    audience = store_audience(raw)
    raw.put(command_key("host-2"), attacker.sign(audience=audience, key=command_key("host-2"),
                                                 payload=host_command("host-2", 99).to_json()))
    raw.put(status_key("host-1"), b"{}")
    before = {}
    for prefix in ("commands/", "groups/", "deployments/", "hosts/"):
        for entry in raw.list(prefix):
            stored = raw.get(entry.key)
            assert stored is not None
            before[entry.key] = stored.data
    config = cli_env / "deploy.yaml"
    key_file = write_key(cli_env / "new.pem", new)
    config.write_text(f"store: {url}\nsigning:\n  keyFile: {key_file}\n  trustedKeys:\n    - {old.public.text}\n")
    yield ResealWorld(raw, config, old, new, attacker, audience, before)


def test_reseal_resigns_the_old_keys_records_and_lists_the_forged_one(
    reseal_world: ResealWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records by the old (trusted) key are re-signed with the new key, payloads unchanged; the one already signed
    with the new key is counted; the forged command is listed on stderr, left as it is (never signed) and makes the
    exit 1; the unsigned deployment is counted and left unsigned."""
    world = reseal_world
    assert world.run() == 1
    captured = capsys.readouterr()
    assert f"resealed 2 records with {world.new.public.key_id}; 1 already signed with it" in captured.out
    assert "1 unsigned record left as is" in captured.out
    assert "1 record whose signature does not hold, left as is" in captured.err
    assert f"  commands/host-2.json: signed by a key this side does not trust ({world.attacker.public.key_id};" \
        in captured.err

    new_id = world.new.public.key_id
    assert world.signed_by(group_state_key("hello", "web")) == new_id
    assert world.signed_by(command_key("host-1")) == new_id
    assert world.signed_by(command_key("host-3")) == new_id
    host_2 = world.raw.get(command_key("host-2"))
    assert host_2 is not None and host_2.data == world.before[command_key("host-2")]
    assert world.signed_by("deployments/d-000000007.json") is None
    status = world.raw.get(status_key("host-1"))
    assert status is not None and status.data == b"{}"


def test_reseal_adopt_unsigned_signs_the_unsigned_records_but_never_the_forged_one(
    reseal_world: ResealWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """--adopt-unsigned signs records written before signing (their bytes become the payload as they are); the
    forged command still stays as it is and still makes the exit 1. A second run has nothing left to reseal."""
    world = reseal_world
    assert world.run("--adopt-unsigned") == 1
    assert "resealed 3 records" in capsys.readouterr().out
    deployment = "deployments/d-000000007.json"
    assert world.signed_by(deployment) == world.new.public.key_id
    stored = world.raw.get(deployment)
    assert stored is not None
    payload, _ = open_envelope(stored.data, trust=Trust([world.new.public]), audience=world.audience, key=deployment)
    assert payload == world.before[deployment]
    host_2 = world.raw.get(command_key("host-2"))
    assert host_2 is not None and host_2.data == world.before[command_key("host-2")]

    assert world.run("--adopt-unsigned") == 1
    assert f"resealed 0 records with {world.new.public.key_id}; 4 already signed with it" in capsys.readouterr().out


def test_reseal_without_a_key_exits_1(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`reseal` without a configured key exits 1: it must never rewrite records unsigned."""
    assert reconcile(["--store", f"file://{cli_env / 'store'}", "keys", "reseal"]) == 1
    assert "nothing to reseal with" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Defects found while writing these tests, fixed since: each test pins its fix


def test_a_refusal_reason_is_bounded_whatever_the_envelope_holds(trust: Trust) -> None:
    """The reason goes to the agent's log and into its status (`CommandRefusal.reason`, five kept): a forged
    envelope whose key id or version string is 500 KB must not make a 500 KB reason (five of them would take the
    status past the 1 MiB read limit, and the reconciler would lose sight of the host). The model's docstring
    says nothing of a refused document's content is repeated."""
    huge_id = json.dumps({"fleetshiftSigned": "v1", "audience": AUDIENCE, "key": KEY, "payload": "",
                          "signatures": [{"keyId": "X" * 500_000, "sig": ""}]}).encode()
    huge_version = json.dumps({"fleetshiftSigned": "v" * 500_000}).encode()
    assert max(len(refusal(huge_id, trust)), len(refusal(huge_version, trust))) < 2_000


class _CountingKey:
    """Stands in for an Ed25519 public key and counts the signatures checked against it."""

    def __init__(self) -> None:
        self.checked = 0

    def verify(self, signature: bytes, message: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        self.checked += 1
        raise InvalidSignature


def test_a_forged_envelope_costs_at_most_one_check_per_trusted_key() -> None:
    """One envelope repeating the trusted key id with garbage signatures: each copy costs an Ed25519 check (about
    0.3 ms), so a 1 MiB forged command costs an agent about 2 s of CPU per version and a 32 MiB forged group record
    costs the reconciler about a minute per pass. Checking each trusted key once bounds it."""
    counting = _CountingKey()
    key_id = "SHA256:counting"
    trusted = Trust([PublicKey(counting, key_id, "ssh-ed25519 AAAA counting")])  # type: ignore[arg-type]
    signature = base64.b64encode(bytes(64)).decode()
    envelope = json.dumps({"fleetshiftSigned": "v1", "audience": AUDIENCE, "key": KEY, "payload": "",
                           "signatures": [{"keyId": key_id, "sig": signature}] * MAX_SIGNATURES}).encode()
    with pytest.raises(Refused, match="altered"):
        open_envelope(envelope, trust=trusted, audience=AUDIENCE, key=KEY)
    assert counting.checked <= 1
    # More entries than any genuine envelope has: refused before any check.
    longer = json.dumps({"fleetshiftSigned": "v1", "audience": AUDIENCE, "key": KEY, "payload": "",
                         "signatures": [{"keyId": key_id, "sig": signature}] * 1000}).encode()
    with pytest.raises(Refused, match=f"more than {MAX_SIGNATURES} signatures"):
        open_envelope(longer, trust=trusted, audience=AUDIENCE, key=KEY)
    assert counting.checked <= 1


def test_reseal_adopt_unsigned_on_a_store_from_before_markers_signs_for_the_stores_id(
    cli_env: Path, capsys: pytest.CaptureFixture[str], signer: Signer
) -> None:
    """A store written before `.fleetshift-store` markers existed, signing turned on, `reseal --adopt-unsigned`
    first: reseal opens the store with create=False, so it has no marker id and signs for `file:///path`; every
    writer (reconciler, agents) then adopts the store, marks it, and checks for `file-store:<id>`, so every record
    just adopted is refused ("signed for the store file:///..., not this one")."""
    folder = cli_env / "legacy"
    (folder / "commands").mkdir(parents=True)
    (folder / "commands" / "host-1.json").write_bytes(host_command("host-1").to_json())
    key_file = write_key(cli_env / "signing.pem", signer)
    config = cli_env / "deploy.yaml"
    config.write_text(f"store: file://{folder}\nsigning:\n  keyFile: {key_file}\n")
    assert reconcile(["--config", str(config), "keys", "reseal", "--adopt-unsigned"]) == 0
    capsys.readouterr()
    agent_view = seal_store(open_store(f"file://{folder}"), trust=Trust([signer.public]))
    stored = agent_view.get(command_key("host-1"))
    assert stored is not None
    assert stored.refused is None, stored.refused


def test_the_signer_checks_its_own_records_by_their_mac_and_nothing_else_does() -> None:
    """The reconciler reads back thousands of its own records per cold pass: it checks them by an HMAC under a key
    derived from its private key (no Ed25519 verification), while a reader without the private key, or a MAC
    that does not match, goes through the signature."""
    signer = Signer.generate()
    envelope = signer.sign(audience=AUDIENCE, key=KEY, payload=b'{"a": 1}')
    counting = _CountingKey()
    trusted = Trust([PublicKey(counting, signer.public.key_id, signer.public.text)])  # type: ignore[arg-type]
    payload, key_id = open_envelope(envelope, trust=trusted, audience=AUDIENCE, key=KEY, mac_key=signer.mac_key)
    assert (payload, key_id, counting.checked) == (b'{"a": 1}', signer.public.key_id, 0)
    # Another signer's MAC key: the signature is checked (and this counting key fails it).
    with pytest.raises(Refused, match="altered"):
        open_envelope(envelope, trust=trusted, audience=AUDIENCE, key=KEY, mac_key=Signer.generate().mac_key)
    assert counting.checked == 1
    # The MAC does not vouch for a moved document either: the binding checks still run.
    with pytest.raises(Refused, match="moved here"):
        open_envelope(envelope, trust=trusted, audience=AUDIENCE, key="commands/other.json", mac_key=signer.mac_key)


def test_a_comma_in_a_keys_comment_does_not_split_it(tmp_path: Path) -> None:
    """FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS separates keys by newlines, or by commas before the next
    `ssh-ed25519`: a comment such as `reconciler, prod` stays one key."""
    first, second = Signer.generate(), Signer.generate()
    value = f"{first.public.text.split(' fleetshift')[0]} reconciler, prod,{second.public.text}"
    settings = load_agent_settings(None, environ={"FLEETSHIFT_AGENT_COMMAND_SIGNING_TRUSTED_KEYS": value})
    assert len(settings.command_signing.trusted_keys) == 2


def test_a_batch_read_checks_every_sealed_key_as_one_read_does(sealed: Sealed, attacker: Signer) -> None:
    """The reconciler's snapshot reads the store in batches (contract/store/bulk.py): each sealed key is still
    checked, a forged or unsigned one comes back refused, and the keys agents write pass as they are."""
    good = sealed.writer.put(KEY, PAYLOAD)
    sealed.inner.put(traffic_key("web-1"), attacker.sign(audience=sealed.writer.audience, key=traffic_key("web-1"),
                                                         payload=PAYLOAD))
    sealed.inner.put(group_state_key("hello", "web"), PAYLOAD)  # not signed at all
    status = sealed.inner.put(status_key("web-1"), PAYLOAD)
    keys = [KEY, traffic_key("web-1"), group_state_key("hello", "web"), status_key("web-1"), "commands/nobody.json"]
    found = get_many(sealed.reader, keys)
    assert found == {key: sealed.reader.get(key) for key in keys}
    assert found[KEY] == StoredObject(KEY, PAYLOAD, good)
    forged, unsigned = found[traffic_key("web-1")], found[group_state_key("hello", "web")]
    assert forged is not None and forged.refused and forged.data == b""
    assert unsigned is not None and unsigned.refused and unsigned.data == b""
    assert found[status_key("web-1")] == StoredObject(status_key("web-1"), PAYLOAD, status)
    assert found["commands/nobody.json"] is None
    # And a folder-by-folder read at once: a group record (sealed, unsigned here) and a status (an agent's, as is).
    for prefix, name in (("groups/", "web.json"), ("hosts/", "status.json")):
        assert read_folders(sealed.reader, prefix, [name]) == [
            sealed.reader.get(item.key) for item in sealed.inner.list(prefix) if item.key.endswith(f"/{name}")
        ]
    [unsigned_again] = read_folders(sealed.reader, "groups/", ["web.json"])
    assert unsigned_again.refused and unsigned_again.data == b""
