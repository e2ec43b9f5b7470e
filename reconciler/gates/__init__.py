"""The shell's side of monitoring gates: a Prometheus query client and a CloudWatch alarm reader, each turning
what the outside world answered into the observed data the core decides on (docs/gates.md)."""
