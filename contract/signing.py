"""Ed25519 signatures on the documents agents act on, so that writing the store is not enough to run programs
on hosts (docs/trust.md).

Why this shape:

- **The signature covers the stored bytes, not a re-encoding.** A signed document is an envelope (like DSSE's)
  whose `payload` is the document's JSON exactly as written, base64-encoded. Verifying never re-serialises a
  parsed model, so an agent one schema version behind, or a field with a default, cannot break a signature.
- **The signature binds the document to where it was written**: the store key (`commands/web-1.json`) and the
  store's identity (its *audience*, `store_audience`). Moving another host's command onto this host's key, or
  copying a command from a staging store into production, breaks the signature without any field of the
  document having to be trusted first. Replays of an older command *for this host in this store* are refused by
  the agent from the command's `generation`, once the signature has proved the generation genuine.
- **Keys are Ed25519** (small, fast, deterministic signatures, no parameters to get wrong), written in the
  OpenSSH formats people already handle: a public key is one `ssh-ed25519 AAAA... comment` line that fits in
  agent.yaml, and its id is the `SHA256:...` fingerprint `ssh-keygen -lf` prints for it. A private key is PEM
  (PKCS#8, from `reconcile keys generate`) or OpenSSH (from `ssh-keygen -t ed25519 -N ''`).

The bytes signed are a pre-authentication encoding (DSSE's idea) so that no two different (audience, key,
payload) triples can produce the same message:

    fleetshift-signed/v1 SP len(audience) SP audience SP len(key) SP key SP len(payload) SP payload

with lengths in decimal ASCII. `sign` and `open_envelope` are the only two functions that know it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# cryptography is imported where keys are used, not here: an agent without trusted keys only unwraps envelopes
# (`unwrap`), and loading OpenSSL's bindings for that cost it 7 MiB of its idle memory (issue 18).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ENVELOPE_VERSION = "v1"
_DOMAIN = b"fleetshift-signed/" + ENVELOPE_VERSION.encode()
#: Every envelope starts with these bytes (json.dumps keeps insertion order), so telling a signed document
#: from a plain one never needs a JSON parse.
_ENVELOPE_START = b'{"fleetshiftSigned":'
_KEY_TYPE = "ssh-ed25519"
#: At most this many signatures are looked at, and each trusted key is checked once: a forged envelope must not
#: cost more than a few Ed25519 checks however many entries it lists.
MAX_SIGNATURES = 8
_MAC_LABEL = b"fleetshift-record-mac/v1"


def _shown(value: object, limit: int = 60) -> str:
    """An attacker-written value quoted in a refusal, cut short: reasons go into logs and statuses."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


class SigningError(Exception):
    """A key that cannot be used: unreadable, not Ed25519, protected by a passphrase. A user mistake in the
    settings, reported with the setting and file it came from."""


class Refused(Exception):
    """A signed document that must not be acted on; the message says why, in the operator's terms."""


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    #: `SHA256:...`, the fingerprint `ssh-keygen -lf` prints for the same key.
    key_id: str
    #: The `ssh-ed25519 AAAA... comment` line.
    text: str


def _public(key: Ed25519PublicKey, comment: str = "") -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(line.split()[1])
    key_id = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return PublicKey(key, key_id, f"{line} {comment}".strip())


def load_public_key(text: str) -> PublicKey:
    """One `ssh-ed25519 AAAA... [comment]` line."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != _KEY_TYPE:
        shown = text.strip()[:40]
        raise SigningError(f"{shown!r} is not an Ed25519 public key: write the `ssh-ed25519 AAAA...` line that "
                           "`reconcile keys show` prints")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"{parts[1][:20]}...: not a valid Ed25519 public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - the type prefix was checked above
        raise SigningError("not an Ed25519 public key")
    return _public(key, parts[2] if len(parts) > 2 else "")


class Signer:
    """A private key, ready to sign envelopes."""

    def __init__(self, key: Ed25519PrivateKey, comment: str = "fleetshift") -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        self.public = _public(key.public_key(), comment)
        # A MAC key only the private key's holder can derive: the reconciler checks its own records with it
        # (an HMAC, ~2 us) instead of an Ed25519 verification (~130 us), which made a cold read of 10,000
        # commands 5x slower. Agents, which hold only the public key, check the signature.
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        self.mac_key = hmac.new(raw, _MAC_LABEL, hashlib.sha256).digest()

    @classmethod
    def generate(cls, comment: str = "fleetshift") -> Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate(), comment)

    @classmethod
    def load(cls, data: bytes, source: str) -> Signer:
        """A PEM (PKCS#8) or OpenSSH private key without a passphrase; `source` names where it came from for
        errors (a file, an environment variable)."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        loaders = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
                   else serialization.load_pem_private_key)
        try:
            key = loaders(data, password=None)
        except TypeError as exc:  # encrypted
            raise SigningError(f"{source}: the key is protected by a passphrase; the reconciler runs unattended, "
                               f"so use a key without one and protect the file instead ({exc})") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError(f"{source}: not a PEM or OpenSSH private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{source}: a {type(key).__name__.removesuffix('PrivateKey').removeprefix('_')} key; "
                               "fleetshift signs with Ed25519 (`reconcile keys generate`, or ssh-keygen -t ed25519)")
        return cls(key)

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, *, audience: str, key: str, payload: bytes) -> bytes:
        """The envelope for `payload` written at `key` in the store `audience`."""
        message = _message(audience, key, payload)
        signature = self._key.sign(message)
        envelope: dict[str, Any] = {
            "fleetshiftSigned": ENVELOPE_VERSION,
            "audience": audience,
            "key": key,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyId": self.public.key_id, "sig": base64.b64encode(signature).decode()}],
            "mac": base64.b64encode(hmac.new(self.mac_key, message, hashlib.sha256).digest()).decode(),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()


class Trust:
    """The public keys whose signatures count (several during a rotation)."""

    def __init__(self, keys: list[PublicKey]) -> None:
        self.keys = {k.key_id: k for k in keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def describe(self) -> str:
        return ", ".join(self.keys) or "none"


def _message(audience: str, key: str, payload: bytes) -> bytes:
    parts = [_DOMAIN]
    for field in (audience.encode(), key.encode(), payload):
        parts += [str(len(field)).encode(), field]
    return b" ".join(parts)


def is_envelope(data: bytes) -> bool:
    return data.startswith(_ENVELOPE_START)


def _envelope(data: bytes) -> dict[str, Any]:
    if not is_envelope(data):
        raise Refused("not signed")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise Refused("a broken signature envelope (not JSON)") from None
    if not isinstance(raw, dict):
        raise Refused("a broken signature envelope")
    if raw.get("fleetshiftSigned") != ENVELOPE_VERSION:
        version = _shown(repr(raw.get("fleetshiftSigned")))
        raise Refused(f"a signature envelope of another version ({version}): upgrade this side")
    return raw


def unwrap(data: bytes) -> bytes:
    """The payload of an envelope without checking its signature, for readers that have no keys (`reconcile
    status` on a machine without the reconciler's settings); plain documents come back as they are."""
    if not is_envelope(data):
        return data
    try:
        return base64.b64decode(_envelope(data)["payload"], validate=True)
    except (Refused, KeyError, TypeError, binascii.Error):
        return data


def open_envelope(
    data: bytes, *, trust: Trust, audience: str, key: str, mac_key: bytes | None = None
) -> tuple[bytes, str]:
    """The payload and the id of the key that signed it; `Refused` with the reason when the document is not
    signed, was signed by a key not trusted, was altered after signing, or was signed for another key or store.

    `mac_key` (the signer's own, `Signer.mac_key`): a record this signer wrote is accepted on its MAC, without an
    Ed25519 check; anything else, including a MAC that does not match, goes through the signatures."""
    raw = _envelope(data)
    try:
        payload = base64.b64decode(raw["payload"], validate=True)
        signed_audience, signed_key = str(raw["audience"]), str(raw["key"])
        listed = raw["signatures"]
        if not isinstance(listed, list):
            raise TypeError(listed)
        if len(listed) > MAX_SIGNATURES:
            raise Refused(f"a broken signature envelope (more than {MAX_SIGNATURES} signatures)")
        signatures = [(str(s["keyId"]), base64.b64decode(s["sig"], validate=True)) for s in listed]
        mac = base64.b64decode(raw["mac"], validate=True) if isinstance(raw.get("mac"), str) else None
    except (KeyError, TypeError, binascii.Error):
        raise Refused("a broken signature envelope (fields missing or not base64)") from None
    # Each trusted key once, whatever the envelope repeats.
    known = list({key_id: sig for key_id, sig in reversed(signatures) if key_id in trust.keys}.items())
    if not known:
        ids = ", ".join(_shown(key_id) for key_id, _ in signatures[:3]) or "no signature"
        raise Refused(f"signed by a key this side does not trust ({ids}; trusted: {trust.describe()})")
    message = _message(signed_audience, signed_key, payload)
    from cryptography.exceptions import InvalidSignature

    own = mac is not None and mac_key is not None and hmac.compare_digest(
        mac, hmac.new(mac_key, message, hashlib.sha256).digest())
    for key_id, signature in known:
        if not own:
            try:
                trust.keys[key_id].key.verify(signature, message)
            except InvalidSignature:
                continue
        # Checked after the signature, so the values named in these messages are ones the key holder wrote.
        if signed_key != key:
            raise Refused(f"signed for {_shown(signed_key)}, not {key}: another host's document moved here")
        if signed_audience != audience:
            raise Refused(f"signed for the store {_shown(signed_audience)}, not this one ({audience}): a document "
                          "copied from another store")
        return payload, key_id
    raise Refused("the signature does not match the document: it was altered after signing")
