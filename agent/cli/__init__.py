"""The `deploy-agent` command line: `run`, `local` and `validate`."""
