"""Kept only for agent/cli/local.py, which imports `agent.fetch.bundle` and is another wing's to change:
import from `agent.fetch` instead, then delete this file. No code lives here."""

from agent.fetch import (
    BUNDLE_FILE_NAME,
    BUNDLE_TYPES,
    BundleType,
    ExtractLimits,
    FetchedBundle,
    detect_bundle_type,
    fetch_bundle,
    unpack_bundle,
)

__all__ = [
    "BUNDLE_FILE_NAME",
    "BUNDLE_TYPES",
    "BundleType",
    "ExtractLimits",
    "FetchedBundle",
    "detect_bundle_type",
    "fetch_bundle",
    "unpack_bundle",
]
