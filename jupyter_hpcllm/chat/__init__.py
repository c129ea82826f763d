"""Talking to a server: prompts, interpolation of variables, Python functions as tools. No UI."""
