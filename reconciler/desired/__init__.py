"""Desired state: the manifests (models, loading from a Git commit or a folder, validation, JSON Schemas)
and the mirror of a remote config repo. Everything the core is handed as `Desired` comes from here."""
