"""The `reconcile` command line: argparse, the `--once`/`watch`/operator commands, `plan`, progress on a
terminal and summaries. Only this layer prints."""
