"""What is read from the cluster before planning: model facts (cached) and the parsers an image knows."""
