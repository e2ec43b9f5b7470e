"""Chaos tests: kill -9 and store outages during a rollout with real processes."""
