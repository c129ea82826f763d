"""What runs on the compute node inside the job, outside the package: ``relay.py`` (stdlib only, Python ≥ 3.6),
whose source the job script embeds."""
