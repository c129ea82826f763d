"""sglang.srt.models: the model implementations (in the double: only their registry)."""
