from __future__ import annotations

import sys

import pytest

from jupyter_hpcllm.config.profiles import load_profile, render_profile, starter_config
from jupyter_hpcllm.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("HPCLLM_CONFIG", str(path))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    return path


def test_ebi_preset_reproduces_the_runbook(config):
    config.write_text("")
    ebi = load_profile("ebi")
    assert ebi.host == "ihpc.ebi.ac.uk"
    assert (ebi.time, ebi.cpus, ebi.mem) == ("4:00:00", 16, "32G")
    assert ebi.model_root == "/hps/nobackup/saezrodriguez/hf_models"
    assert ebi.images["sglang"] == "/hps/nobackup/saezrodriguez/singularity_images/sglang_latest.sif"
    assert ebi.images["vllm"] == "/hps/nobackup/saezrodriguez/singularity_images/vllm-openai_latest.sif"
    assert list(ebi.gpu_type("a100").counts) == [1, 2, 3, 4]
    assert list(ebi.gpu_type("h200").counts) == list(range(1, 9))
    assert ebi.gpu_type("h200").memory_gb == 141


def test_file_overrides_only_what_it_sets(config):
    config.write_text('default_profile = "ebi"\n[profiles.ebi]\nuser = "alice"\nmem = "64G"\n')
    ebi = load_profile()
    assert (ebi.user, ebi.mem, ebi.cpus) == ("alice", "64G", 16)


def test_own_profile_with_gpu_types(config):
    config.write_text(
        '[profiles.mine]\nhost = "login.example.org"\nmodel_root = "/m"\n'
        '[profiles.mine.images]\nvllm = "/i/vllm.sif"\n'
        '[profiles.mine.gpu_types.l40s]\nmax_count = 2\nmemory_gb = 48\n'
    )
    mine = load_profile("mine")
    assert mine.gpu_type(None).name == "l40s" and mine.gpu_type("l40s").max_count == 2
    with pytest.raises(ConfigError, match="no container image for sglang"):
        mine.image("sglang")


def test_profile_preset_key(config):
    config.write_text('[profiles.work]\npreset = "ebi"\nuser = "bob"\n')
    work = load_profile("work")
    assert work.name == "work" and work.user == "bob" and work.host == "ihpc.ebi.ac.uk"


def test_unknown_profile_suggests(config):
    config.write_text('[profiles.testcluster]\nhost = "x"\n')
    with pytest.raises(ConfigError, match=r"Unknown profile 'testclster'.*Did you mean 'testcluster'"):
        load_profile("testclster")


def test_unknown_key_suggests(config):
    config.write_text('[profiles.ebi]\nmemory = "3G"\n')
    with pytest.raises(ConfigError, match="Unknown key 'memory'.*Did you mean 'mem'"):
        load_profile("ebi")


def test_wrong_type(config):
    config.write_text('[profiles.ebi]\ncpus = "many"\n')
    with pytest.raises(ConfigError, match="cpus must be an integer"):
        load_profile("ebi")


def test_bad_toml(config):
    config.write_text("[profiles.ebi\n")
    with pytest.raises(ConfigError, match="Cannot read the config file"):
        load_profile("ebi")


def test_missing_config_named_by_env(config):
    with pytest.raises(ConfigError, match="HPCLLM_CONFIG points to"):
        load_profile("ebi")


def test_gpu_type_not_offered(config):
    config.write_text("")
    with pytest.raises(ConfigError, match=r"'v100' is not offered.*a100 \(1–4 × 80 GB\), h200"):
        load_profile("ebi").gpu_type("v100")


def test_starter_config_is_valid_and_resolves(config):
    config.write_text(starter_config())
    assert tomllib.loads(starter_config())["default_profile"] == "ebi"
    assert load_profile().name == "ebi"


def test_render_profile_round_trips(config):
    config.write_text("")
    ebi = load_profile("ebi")
    config.write_text(render_profile(ebi))
    again = load_profile("ebi")
    assert again == ebi
