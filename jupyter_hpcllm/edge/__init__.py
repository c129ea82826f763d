"""The cluster's edge: transports (SSH, local, fake), file access, the port forward, and the Slurm
commands with the parsers of their output. The only place that reaches the cluster."""
