"""Configuration, the lowest layer above the errors: cluster profiles, launch options, value checks."""
