"""Fixtures of the in-memory lifecycle tests: a profile with no user config, a FakeTransport, a fake
clock and a Cluster over them (these override the real cluster's `profile` and `cluster` here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import Clock

from jupyter_hpcllm.config.profiles import load_profile
from jupyter_hpcllm.discovery import imageprobe, models
from jupyter_hpcllm.edge.fake import FakeTransport
from jupyter_hpcllm.lifecycle import Cluster


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config, no cache from another test (model facts and image parsers are cached on disk)."""
    monkeypatch.delenv("HPCLLM_CONFIG", raising=False)
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    monkeypatch.setattr(models, "_cache_file", lambda: tmp_path / "model-facts.json")
    monkeypatch.setattr(models, "_memory", {})
    monkeypatch.setattr(imageprobe, "_cache_file", lambda: tmp_path / "image-parsers.json")


@pytest.fixture
def profile(tmp_path: Path) -> Any:
    return load_profile("ebi", path=tmp_path / "no-config.toml")


@pytest.fixture
def fake() -> Iterator[FakeTransport]:
    transport = FakeTransport()
    yield transport
    transport.close()
    assert all(forward.closed for forward in transport.forwards)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cluster(profile: Any, fake: FakeTransport, clock: Clock) -> Cluster:
    return Cluster(profile, transport=fake, clock=clock, sleep=clock.sleep)
