"""SGLang as the engine double's stand-in image holds it (only on PYTHONPATH inside an sglang stand-in image):
its version, its registries at SGLang's module paths, and `python -m sglang.launch_server`."""

from sglang.version import __version__

__all__ = ["__version__"]
