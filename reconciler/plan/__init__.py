"""`reconcile plan`: the semantic diff of two commits' manifests and the rollout the core would start,
rendered as text, Markdown or JSON, with saved plans and their fingerprints."""
