"""No tracebacks: whatever a config file, an option, a model's files, an ssh_config or an SSH server says,
the answer is an HpcllmError that says what to do (or, for one model's broken files, a row that says why),
and every number from the config or the options is bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import GpuType, Profile, load_profile, render_profile
from jupyter_hpcllm.discovery import models
from jupyter_hpcllm.discovery.models import list_models, model_facts, summarize
from jupyter_hpcllm.edge.files import LocalFiles
from jupyter_hpcllm.errors import ConfigError, ConnectError, ConnectionLost, InvalidOption, TransportError
from jupyter_hpcllm.planning.facts import ModelFacts
from jupyter_hpcllm.planning.plan import plan_launch
from jupyter_hpcllm.planning.sizing import choose_allocation, memory_need

SITE = Profile(name="site", gpu_types={"a100": GpuType("a100", max_count=4, memory_gb=80)},
               images={"vllm": "/img/vllm.sif"})


# --- the config file --------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("HPCLLM_CONFIG", str(path))
    monkeypatch.delenv("HPCLLM_PROFILE", raising=False)
    return path


@pytest.mark.parametrize(("text", "name", "says"), [
    ("profiles = 1\n", "ebi", "profiles in"),
    ("profiles = [1, 2]\n", "ebi", "must be a table of [profiles.NAME] sections"),
    ("[profiles]\nebi = 'x'\n", "ebi", "profiles.ebi in"),
    ("[[profiles.fz]]\nhost = 'x'\n", "fz", "profiles.fz in"),
    ("[profiles.fz]\npreset = 1\n", "fz", "preset must be the name of a built-in preset"),
    ("[profiles.fz]\npreset = ['ebi']\n", "fz", "preset must be"),
    ("default_profile = 3\n", None, "default_profile"),
    ("[profiles.ebi]\ncpus = 0\n", "ebi", "cpus must be a whole number from 1 to 1024"),
    ("[profiles.ebi]\ncpus = 100000\n", "ebi", "cpus must be a whole number from 1 to 1024"),
    ("[profiles.ebi]\ncpus = 1.5\n", "ebi", "cpus must be an integer"),
    ("[profiles.ebi]\nport = 70000\n", "ebi", "port must be a whole number from 1 to 65535"),
    ("[profiles.ebi]\ndefault_gpus = 65\n", "ebi", "default_gpus must be a whole number from 1 to 64"),
    ("[profiles.ebi]\nconnect_timeout = nan\n", "ebi", "connect_timeout must be a number"),
    ("[profiles.ebi]\ncommand_timeout = inf\n", "ebi", "command_timeout must be a number"),
    ("[profiles.ebi]\nkeepalive = -1\n", "ebi", "keepalive must be a number"),
    ("[profiles.ebi]\nkeepalive = true\n", "ebi", "keepalive must be a number of seconds"),
    ("[profiles.ebi]\nidle_timeout = -1\n", "ebi", "idle_timeout must be a number from 0 to 10080"),
    ("[profiles.ebi]\nidle_timeout = 10081\n", "ebi", "idle_timeout must be a number from 0 to 10080"),
    ("[profiles.ebi]\nidle_timeout = '60'\n", "ebi", "idle_timeout must be a number of minutes"),
    ("[profiles.ebi]\nwalltime_warning = 1441\n", "ebi", "walltime_warning must be a number from 0 to 1440"),
    ("[profiles.ebi]\ntime = '99999999:00:00'\n", "ebi", "not a Slurm time limit"),
    ("[profiles.ebi]\nmem = '99999999T'\n", "ebi", "not a Slurm memory size"),
    ("[profiles.ebi]\nmem = 32\n", "ebi", "mem must be a string"),
    ("[profiles.ebi]\nextra_sbatch = '--exclusive'\n", "ebi", "extra_sbatch must be a list of strings"),
    ("[profiles.ebi]\nimages = ['x']\n", "ebi", "images must be a table"),
    ("[profiles.ebi]\ngpu_types = 3\n", "ebi", "gpu_types must be a table"),
    ("[profiles.ebi.gpu_types]\na100 = 4\n", "ebi", "gpu_types.a100 must be a table with max_count and memory_gb"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = '4'\nmemory_gb = 80\n", "ebi", "max_count must be a whole number"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 4.5\nmemory_gb = 80\n", "ebi", "max_count must be a whole number"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = true\nmemory_gb = 80\n", "ebi", "max_count must be a whole number"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 4\nmemory_gb = 'lots'\n", "ebi", "memory_gb must be a number"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 4\nmemory_gb = 0\n", "ebi", "memory_gb must be a number from"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 4\nmemory_gb = 80\nmin_count = 5\n", "ebi", "min_count"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 4\nmemory_gb = 80\nname = 'x'\n", "ebi", "unknown key 'name'"),
    ("[profiles.ebi.gpu_types.a100]\nmax_count = 20000000\nmemory_gb = 80\n", "ebi",
     "max_count must be a whole number from 1 to 64 GPUs per job"),
])
def test_a_wrong_config_is_a_config_error_that_says_where(config: Path, text: str, name: str | None,
                                                          says: str) -> None:
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(name)
    assert says in str(caught.value)


def test_a_huge_gpu_count_fails_at_once_instead_of_planning_for_seconds(config: Path) -> None:
    """max_count = 20000000 used to make `plan` try every count: 12 s."""
    config.write_text("[profiles.ebi.gpu_types.a100]\nmax_count = 20000000\nmemory_gb = 80\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="at most|from 1 to 64"):
        load_profile("ebi")
    with pytest.raises(ConfigError):
        GpuType("a100", max_count=20_000_000, memory_gb=80)
    assert time.monotonic() - started < 1


def test_an_empty_optional_name_unsets_the_presets(config: Path) -> None:
    config.write_text("[profiles.work]\npreset = 'ebi'\npartition = ''\naccount = 'lab'\n")
    work = load_profile("work")
    assert work.partition is None and work.account == "lab"


def test_idle_timeout_and_walltime_warning_are_profile_keys(config: Path) -> None:
    config.write_text("[profiles.ebi]\nidle_timeout = 0\nwalltime_warning = 30\n")
    ebi = load_profile("ebi")
    assert (ebi.idle_timeout, ebi.walltime_warning) == (0.0, 30.0)
    assert "idle_timeout = 0.0\n" in render_profile(ebi) and "walltime_warning = 30.0\n" in render_profile(ebi)
    assert (Profile(name="x").idle_timeout, Profile(name="x").walltime_warning) == (60.0, 10.0)


# --- launch options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "field", "says"), [
    ({"gpus": 65}, "gpus", "at most 64 per node"),
    ({"gpus": 20_000_000}, "gpus", "at most 64 per node"),
    ({"cpus": 5000}, "cpus", "at most 1024"),
    ({"idle_timeout": -1}, "idle_timeout", "--idle-timeout must be at least 0"),
    ({"idle_timeout": 10081}, "idle_timeout", "--idle-timeout must be at most 10080"),
    ({"idle_timeout": "nan"}, "idle_timeout", "finite"),
    ({"idle_timeout": "soon"}, "idle_timeout", "takes a number"),
    ({"timeout": 1e12}, "timeout", "--timeout must be at most"),
])
def test_numeric_options_are_bounded(values: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        LaunchOptions.from_mapping({"model": "Qwen3-8B", **values})
    assert caught.value.field == field and says in str(caught.value)


def test_idle_timeout_is_an_option_of_every_face_and_reaches_the_job() -> None:
    import argparse

    from jupyter_hpcllm.config.options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = LaunchOptions.from_namespace(parser.parse_args(["Qwen3-8B", "--idle-timeout", "0"]))
    assert options.idle_timeout == 0.0
    assert LaunchOptions.from_mapping({"model": "x", "idle_timeout": "15"}).idle_timeout == 15.0
    assert LaunchOptions.from_mapping(options.as_dict()) == options
    assert plan_launch(SITE, options).spec.idle_timeout == 0.0
    assert plan_launch(replace(SITE, idle_timeout=30), LaunchOptions("Qwen3-8B")).spec.idle_timeout == 30.0


# --- one model's broken files ------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model root on the local disk, and a cache of our own."""
    monkeypatch.setattr(models, "_cache_file", lambda: tmp_path / "cache" / "model-facts.json")
    monkeypatch.setattr(models, "_memory", {})
    root = tmp_path / "models"
    root.mkdir()
    return root


def model(root: Path, name: str, config: str | None, weights: int = 16_000_000_000) -> None:
    directory = root / name
    directory.mkdir()
    if config is not None:
        (directory / "config.json").write_text(config)
    with (directory / "model-00001-of-00001.safetensors").open("wb") as handle:
        handle.truncate(weights)  # sparse: the size is all that is read


GOOD = json.dumps({"model_type": "qwen3", "num_attention_heads": 32, "num_key_value_heads": 8,
                   "num_hidden_layers": 36, "head_dim": 128, "max_position_embeddings": 40960})
BROKEN = {
    "not-json": "{ this is not json",
    "a-list": "[1, 2, 3]",
    "a-string": '"hello"',
    "heads-text": '{"num_attention_heads": "thirty-two", "num_hidden_layers": 36}',
    "heads-infinite": '{"num_attention_heads": Infinity, "num_hidden_layers": 36}',
    "heads-nan": '{"num_attention_heads": NaN}',
    "heads-huge": '{"num_attention_heads": 32, "num_hidden_layers": 1' + "0" * 400 + "}",
    "heads-negative": '{"num_attention_heads": -8}',
    "heads-list": '{"num_attention_heads": [32]}',
    "text-config-list": '{"text_config": [1], "num_attention_heads": 32}',
    "architectures-text": '{"architectures": "LlamaForCausalLM", "num_attention_heads": 32}',
    "model-type-number": '{"model_type": 7, "num_attention_heads": 32}',
    "mla-rank-text": '{"kv_lora_rank": "512", "num_attention_heads": 32, "num_hidden_layers": 4}',
    "deep": "[" * 200_000 + "]" * 200_000,
    "not-utf8": '{"model_type": "\xff\xfe"}',
    "kv-more-than-heads": '{"num_attention_heads": 8, "num_key_value_heads": 32}',
}


def test_one_broken_config_costs_only_its_own_row(root: Path) -> None:
    """One malformed config.json under a shared root used to break `hpcllm models` for every model."""
    model(root, "Qwen3-8B", GOOD)
    for name, text in BROKEN.items():
        model(root, name, text)
        if name == "not-utf8":
            (root / name / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')
    (root / "a-directory").mkdir()
    (root / "a-directory" / "config.json").mkdir()  # a directory where the file should be
    profile = replace(SITE, model_root=str(root))
    listed = {facts.name: facts for facts in list_models(profile, LocalFiles())}
    assert set(listed) == {"Qwen3-8B", "a-directory", *BROKEN}
    summaries = {name: summarize(profile, facts) for name, facts in listed.items()}
    good = summaries.pop("Qwen3-8B")
    assert good.problem == "" and good.suggestion == "1 × a100 (80 GB)" and good.family == "qwen3"
    for name, summary in summaries.items():
        assert summary.problem, name
        assert summary.suggestion == f"? ({summary.problem})"
    assert "not valid JSON" in summaries["not-json"].problem
    assert "not a JSON object" in summaries["a-list"].problem
    assert "num_attention_heads in config.json is 'thirty-two'" in summaries["heads-text"].problem
    assert "nested too deep" in summaries["deep"].problem
    assert "not UTF-8" in summaries["not-utf8"].problem
    assert "text_config" in summaries["text-config-list"].problem


def test_a_broken_config_is_read_again_once_fixed(root: Path) -> None:
    model(root, "Qwen3-8B", "{ broken")
    profile = replace(SITE, model_root=str(root))
    assert list_models(profile, LocalFiles())[0].problem
    (root / "Qwen3-8B" / "config.json").write_text(GOOD)
    assert not model_facts(profile, LocalFiles(), "Qwen3-8B").problems
    assert not list_models(profile, LocalFiles())[0].problems


def test_a_broken_config_plans_with_the_defaults_and_says_why(root: Path) -> None:
    model(root, "Qwen3-8B", '{"num_attention_heads": "many", "model_type": "qwen3"}')
    profile = replace(SITE, model_root=str(root))
    facts = model_facts(profile, LocalFiles(), "Qwen3-8B")
    plan = plan_launch(profile, LaunchOptions("Qwen3-8B"), facts=facts)
    assert plan.gpus == 1 and any("Cannot size Qwen3-8B from its files" in note for note in plan.notes)


@pytest.mark.parametrize("config", [
    {"num_attention_heads": 10**400, "num_hidden_layers": 10**400},
    {"num_attention_heads": 64, "num_hidden_layers": 2**31 - 1, "head_dim": 2**31 - 1,
     "num_key_value_heads": 64, "max_position_embeddings": 2**31 - 1},
    {"num_attention_heads": 7, "num_key_value_heads": 7, "num_hidden_layers": 4},
    {"num_attention_heads": 32, "kv_lora_rank": True},
    {"num_attention_heads": 32, "hidden_size": 8},
])
def test_sizing_never_overflows_or_fails_on_odd_numbers(config: dict[str, object]) -> None:
    facts = ModelFacts("odd", "/m/odd", config, weight_bytes=10**9, shards=1)
    memory_need(facts)
    try:
        choose_allocation(replace(SITE, gpu_types={"a100": GpuType("a100", max_count=4, memory_gb=80, min_count=2)}),
                          facts, gpus=2)
    except ConfigError as error:
        assert str(error)


def test_a_huge_context_argument_is_a_clear_error() -> None:
    facts = ModelFacts("m", "/m/m", json.loads(GOOD), weight_bytes=10**9, shards=1)
    with pytest.raises(ConfigError, match="not a context length"):
        plan_launch(SITE, LaunchOptions("m", engine_args=("--max-model-len", "9" * 500)), facts=facts)


def test_a_corrupt_facts_cache_is_read_again(root: Path, tmp_path: Path) -> None:
    model(root, "Qwen3-8B", GOOD)
    profile = replace(SITE, model_root=str(root))
    key = "|".join(models._cache_key(profile, str(root / "Qwen3-8B"), ""))
    cache = tmp_path / "cache" / "model-facts.json"
    cache.parent.mkdir()
    for stored in ([1], "x", {"name": "Qwen3-8B"}, {"name": 1, "path": "/x"},
                   {"name": "Qwen3-8B", "path": str(root / "Qwen3-8B"), "config": [], "weight_bytes": "big"}):
        cache.write_text(json.dumps({key: stored}))
        models._memory.clear()
        assert model_facts(profile, LocalFiles(), "Qwen3-8B").heads == 32


# --- ssh_config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("jump", ["gw:²", "gw:99999", "gw:0", "[::1", "gw:-1"])
def test_a_bad_proxy_jump_port_is_a_config_error_naming_the_file(tmp_path: Path, jump: str) -> None:
    from jupyter_hpcllm.edge.sshconfig import SSHTarget, jump_chain

    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host login\n  ProxyJump {jump}\n")
    profile = Profile(name="site", host="login", ssh_config=str(ssh_config))
    with pytest.raises(ConfigError) as caught:
        jump_chain(profile, SSHTarget.resolve(profile))
    assert str(ssh_config) in str(caught.value) and "ProxyJump" in str(caught.value)


@pytest.mark.parametrize("port", ["99999", "0", "²"])
def test_a_bad_port_line_is_a_config_error(tmp_path: Path, port: str) -> None:
    from jupyter_hpcllm.edge.sshconfig import SSHTarget

    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host login\n  Port {port}\n")
    with pytest.raises(ConfigError, match="Port .* is not a number from 1 to 65535"):
        SSHTarget.resolve(Profile(name="site", host="login", ssh_config=str(ssh_config)))


# --- an SSH server that refuses -------------------------------------------------------------------------

class Refusing(paramiko.ServerInterface):  # type: ignore[misc]
    """Logs anyone in, then refuses: exec requests (or drops the connection on one), and channels."""

    def __init__(self, on_exec: str) -> None:
        self.on_exec = on_exec
        self.transport: paramiko.Transport | None = None

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.on_exec == "drop" and self.transport is not None:
            self.transport.sock.close()  # the connection dies under the request
        return False

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        if destination[1] == 1:
            return int(paramiko.OPEN_FAILED_CONNECT_FAILED)  # nothing listens there
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@contextmanager
def refusing_sshd(tmp_path: Path, on_exec: str = "refuse") -> Iterator[Profile]:
    host_key = paramiko.RSAKey.generate(2048)
    user_key = paramiko.RSAKey.generate(2048)
    user_key.write_private_key_file(str(tmp_path / "user_key"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    server = Refusing(on_exec)

    def serve() -> None:
        with listener:
            connection, _ = listener.accept()
        transport = server.transport = paramiko.Transport(connection)
        transport.add_server_key(host_key)
        transport.start_server(server=server)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    (tmp_path / "ssh_config").write_text("")
    try:
        yield Profile(name="refusing", host="127.0.0.1", port=port, user="me", identity_file=str(tmp_path / "user_key"),
                      known_hosts=str(tmp_path / "known_hosts"), ssh_config=str(tmp_path / "ssh_config"),
                      connect_timeout=10)
    finally:
        if server.transport is not None:
            server.transport.close()
        thread.join(5)


def test_an_ssh_server_refusing_to_run_commands_is_a_transport_error_that_says_so(tmp_path: Path, home: Path) -> None:
    from jupyter_hpcllm.edge.ssh import SSHTransport

    with refusing_sshd(tmp_path) as profile:
        transport = SSHTransport(profile)
        try:
            with pytest.raises(TransportError) as caught:
                transport.run("squeue --me")
            assert not isinstance(caught.value, ConnectError)  # not "the connection broke": it lives on
            assert "refused to run `squeue`" in str(caught.value) and "ForceCommand" in str(caught.value)
            assert transport.alive
        finally:
            transport.close()


def test_a_connection_dying_under_a_command_is_still_connection_lost(tmp_path: Path, home: Path) -> None:
    from jupyter_hpcllm.edge.ssh import SSHTransport

    with refusing_sshd(tmp_path, on_exec="drop") as profile:
        transport = SSHTransport(profile)
        try:
            with pytest.raises(ConnectionLost):
                transport.run("squeue --me")
        finally:
            transport.close()


def test_a_refused_channel_is_a_transport_error_not_a_paramiko_exception(tmp_path: Path, home: Path) -> None:
    from jupyter_hpcllm.edge.ssh import SSHTransport

    with refusing_sshd(tmp_path) as profile:
        transport = SSHTransport(profile)
        try:
            with pytest.raises(TransportError, match="AllowTcpForwarding"):
                transport.open_channel("127.0.0.1", 8000)
            with pytest.raises(ConnectError, match="could not connect to 127.0.0.1:1"):
                transport.open_channel("127.0.0.1", 1)
        finally:
            transport.close()

