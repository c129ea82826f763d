"""The engine double in SGLang's shape (only on PYTHONPATH inside an sglang stand-in image)."""
