"""The host agent: fetches revision bundles, runs CodeDeploy-compatible lifecycle hooks, installs files and
reports every event through the store. Imports nothing from the reconciler's Git or watch code."""

__version__ = "0.1.0"
