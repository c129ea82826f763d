"""sglang.srt: the runtime (in the double: only its registries)."""
