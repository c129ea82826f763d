from vllm._double import REGISTRY

__version__ = REGISTRY.version
__version_tuple__ = tuple(int(part) if part.isdigit() else part for part in __version__.split("."))
