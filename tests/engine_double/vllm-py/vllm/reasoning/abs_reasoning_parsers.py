from __future__ import annotations

from typing import ClassVar

from vllm._double import REGISTRY, parser_class


class ReasoningParser:
    """Base of the reasoning parsers (in the double they parse nothing: the double answers by itself)."""

    def __init__(self, tokenizer: object = None) -> None:
        self.model_tokenizer = tokenizer


if REGISTRY.layout == "old":

    class ReasoningParserManager:
        """vLLM <= 0.11.0: only a dict of eagerly registered parser classes."""

        reasoning_parsers: ClassVar[dict[str, type]] = {}

        @classmethod
        def get_reasoning_parser(cls, name: str | None) -> type:
            if name in cls.reasoning_parsers:
                return cls.reasoning_parsers[name]
            raise KeyError(f"reasoning helper: '{name}' not found in reasoning_parsers")

        @classmethod
        def register_module(cls, name: str, module: type) -> type:
            cls.reasoning_parsers[name] = module
            return module

else:

    class ReasoningParserManager:  # type: ignore[no-redef]
        """vLLM's registry of reasoning parsers: eagerly registered classes, and lazily registered module paths."""

        reasoning_parsers: ClassVar[dict[str, type]] = {}
        lazy_parsers: ClassVar[dict[str, tuple[str, str]]] = {}

        @classmethod
        def register_lazy_module(cls, name: str, module_path: str, class_name: str) -> None:
            cls.lazy_parsers[name] = (module_path, class_name)

        @classmethod
        def register_module(cls, name: str, module: type) -> type:
            cls.reasoning_parsers[name] = module
            return module

        @classmethod
        def get_reasoning_parser(cls, name: str) -> type:
            if name in cls.reasoning_parsers:
                return cls.reasoning_parsers[name]
            if name in cls.lazy_parsers:
                module_path, class_name = cls.lazy_parsers[name]
                cls.reasoning_parsers[name] = parser_class(class_name, ReasoningParser, module_path, name)
                return cls.reasoning_parsers[name]
            registered = ", ".join(cls.list_registered())
            raise KeyError(f"Reasoning parser '{name}' not found. Available parsers: {registered}")

        @classmethod
        def list_registered(cls) -> list[str]:
            """Names of all eagerly and lazily registered reasoning parsers."""
            return sorted(set(cls.reasoning_parsers) | set(cls.lazy_parsers))
