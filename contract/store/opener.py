"""`open_store(url)`: the one place that knows every backend and picks one from the URL scheme.

Importing it loads no boto3, nor the S3 backend: `open_store` imports that for an `s3://` URL.
"""

from __future__ import annotations

from contract.store.base import InvalidStoreURL, Store
from contract.store.file import FileStore


def open_store(url: str, *, create: bool = True) -> Store:
    """`file://DIR` (embedded) or `s3://bucket/prefix`.

    `create=False` is for commands that only read (`status`, `history`, `plan`, operator commands that must
    find records first): a file store's folder is then not created, so a mistyped `--store` leaves nothing
    behind. Writers (the agent, `reconcile --once`, `watch`) keep the default and get their folder, and any
    problem making it, at start-up. S3 stores never create buckets either way."""
    if url.startswith("file://"):
        return FileStore(url, create=create)
    if url.startswith("s3://"):
        from contract.store.s3 import S3Store  # botocore's signer and urllib3: not for a file store's run

        return S3Store(url)
    raise InvalidStoreURL(f"unsupported store URL {url!r}: use file:///path/to/dir or s3://bucket/prefix")
