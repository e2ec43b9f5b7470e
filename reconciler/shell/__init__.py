"""The reconciler's side effects around the pure core: read the store (observe), apply actions (executor)
under the write lease, run passes (`--once`) and react to commits and reports (watch)."""
