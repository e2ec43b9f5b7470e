"""Load balancer providers: the only code that talks to HAProxy, ELBv2 or a user's traffic command.

See reconciler/traffic/base.py for the interface and docs/traffic.md for the design.
"""
