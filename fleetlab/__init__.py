"""Tools for the demo, the tests and the benchmarks, not for production hosts: a local HAProxy in front of a
local fleet (fleetlab/haproxy.py), a local Prometheus scraping its hosts' metrics for the analysis gates
(fleetlab/prometheus.py) and a steady HTTP load generator that counts every failed request
(fleetlab/loadgen.py). Kept out of `reconciler` and `agent` so nothing a user deploys depends on them."""
