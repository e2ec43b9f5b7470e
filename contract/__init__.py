"""What the reconciler and the agents agree on: the store, the documents in it, and small shared helpers.

Both sides import this package; it must stay free of GitPython and watchfiles so an agent host needs
neither (tests/test_import_boundaries.py checks it).
"""
