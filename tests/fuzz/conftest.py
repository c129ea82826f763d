"""The property-based fault and fuzz suite (hypothesis): the `fuzz` marker, and isolation from the user's
config and caches. Every property runs a fixed number of examples from a fixed seed (see fuzzkit.FUZZ)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: property-based fault and fuzz tests (hypothesis, fixed seed); `-m 'not fuzz'` skips them")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module's own directory, config file and caches: nothing of the user's is read or written."""
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        config = root / "config.toml"
        config.write_text("")
        patch.setenv("HPCLLM_CONFIG", str(config))
        patch.delenv("HPCLLM_PROFILE", raising=False)
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        from jupyter_hpcllm.discovery import imageprobe, models

        patch.setattr(models, "_cache_file", lambda: root / "cache" / "model-facts.json")
        patch.setattr(models, "_memory", {})
        patch.setattr(imageprobe, "_cache_file", lambda: root / "cache" / "image-parsers.json")
        yield root
