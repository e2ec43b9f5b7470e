"""The reconciler: loads manifests from Git, reads what agents report, decides (purely) and applies."""

__version__ = "0.1.0"
