from sglang._double import REGISTRY

__version__ = REGISTRY.version
