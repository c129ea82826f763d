"""Closed shell text: every value that reaches the job script is one word of it, the home directory is
expanded where a path means it, and nothing a profile, an option or an engine argument says can add a
line to the script, end the #SBATCH block early, or take the engine's address or key away from the relay."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_hpcllm.config.checks import check_extra_sbatch, check_model_name, check_name, check_time
from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import GpuType, Profile
from jupyter_hpcllm.errors import ConfigError, InvalidOption
from jupyter_hpcllm.planning.engines import EngineSpec, HomePath, build_command
from jupyter_hpcllm.planning.plan import plan_launch
from jupyter_hpcllm.planning.script import JobSpec, _word, render_script, shell_path

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="needs bash")

SITE = Profile(
    name="site",
    gpu_types={"a100": GpuType("a100", max_count=4, memory_gb=80)},
    images={"vllm": "/img/vllm.sif", "sglang": "/img/sglang.sif"},
)


def as_bash_reads_it(word: str, home: Path) -> str:
    """What one word of shell text is after bash's expansions, with HOME set to `home`."""
    done = subprocess.run([BASH or "bash", "--norc", "-c", f"printf '%s' {word}"], capture_output=True, text=True,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True)
    return done.stdout


# --- the home directory -------------------------------------------------------------------------------


@needs_bash
@pytest.mark.parametrize(("path", "expanded"), [
    ("~/models/Qwen3-8B", "{home}/models/Qwen3-8B"),
    ("$HOME/models/Qwen3-8B", "{home}/models/Qwen3-8B"),
    ("${HOME}/models/Qwen3-8B", "{home}/models/Qwen3-8B"),
    ("~", "{home}"),
    ("/data/$USER/models", "/data/$USER/models"),  # any other $ stays literal
    ("/data/~/x", "/data/~/x"),
    ("~/$(touch {canary})", "{home}/$(touch {canary})"),
    ("$HOME/`touch {canary}`", "{home}/`touch {canary}`"),
    ("~user/x", "~user/x"),
])
def test_a_path_means_the_home_directory_only_where_it_starts_with_it(tmp_path: Path, path: str,
                                                                      expanded: str) -> None:
    canary = tmp_path / "CANARY"
    path = path.replace("{canary}", str(canary))
    want = expanded.replace("{home}", str(tmp_path)).replace("{canary}", str(canary))
    assert as_bash_reads_it(shell_path(path), tmp_path) == want
    assert as_bash_reads_it(_word(HomePath(path) if path.startswith(("~", "$")) else path), tmp_path) == want
    assert not canary.exists()


@needs_bash
def test_the_default_model_root_reaches_the_engine_as_the_home_directory(tmp_path: Path) -> None:
    """The default model_root is ~/models: the engine used to get the literal '~/models/...'."""
    for engine in ("vllm", "sglang"):
        plan = plan_launch(SITE, LaunchOptions("Qwen3-8B", engine=engine))
        path = next(a for a in plan.spec.command.argv if str(a).endswith("/Qwen3-8B"))
        assert isinstance(path, HomePath) and path == "~/models/Qwen3-8B"
        assert as_bash_reads_it(_word(path), tmp_path) == f"{tmp_path}/models/Qwen3-8B"
        assert "~/models" not in plan.script and ' "$HOME"/models/Qwen3-8B ' in plan.script


@pytest.mark.parametrize("root", ["$HOME/models", "${HOME}/models"])
def test_a_model_root_under_home_written_with_the_variable(root: str) -> None:
    plan = plan_launch(replace(SITE, model_root=root), LaunchOptions("Qwen3-8B"))
    assert ' "$HOME"/models/Qwen3-8B ' in plan.script


def test_a_home_relative_model_path_is_accepted_and_spelled_with_a_tilde() -> None:
    assert check_model_name("$HOME/m/Qwen3-8B") == "~/m/Qwen3-8B"
    assert check_model_name("${HOME}/m/Qwen3-8B/") == "~/m/Qwen3-8B"
    for bad in ("~", "~/", "$HOME", "$USER/m", "~/m/$(id)", "/m/../etc"):
        with pytest.raises(ConfigError):
            check_model_name(bad)


def test_binds_under_home_are_expanded_too() -> None:
    plan = plan_launch(replace(SITE, binds=("~/models", "/scratch")), LaunchOptions("Qwen3-8B"))
    assert "--bind \"$HOME\"/models" in plan.script.replace("'", "")


# --- no control characters, strict names ------------------------------------------------------------


@pytest.mark.parametrize("value", ["4:00:00\n", "\n4:00:00", "4:00:00\r", "1-12:00:00\x00", "4:00:00\u2028"])
def test_a_time_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="not a Slurm time limit"):
        check_time(value)  # it used to strip the value, and the caller wrote the unstripped one
    with pytest.raises(InvalidOption) as caught:
        LaunchOptions("Qwen3-8B", time=value)
    assert caught.value.field == "time"


@pytest.mark.parametrize("value", ["gpu\n", "gpu\ntouch /tmp/x", "gpu\r", "gpu\t", "-gpu", "gpu;x", "gp u", "ǵpu",
                                   "gpu\x85", "x" * 201])
def test_slurm_names_match_whole_and_ascii(value: str) -> None:
    """The old check ended in `$`, which a trailing newline passes."""
    with pytest.raises(ConfigError, match="Slurm does not allow"):
        check_name("Partition", value)
    for key in ("partition", "account", "qos"):
        with pytest.raises(ConfigError):
            replace(SITE, **{key: value})  # type: ignore[arg-type]
        with pytest.raises(InvalidOption):
            LaunchOptions("Qwen3-8B", **{key: value})  # type: ignore[arg-type]


def test_good_slurm_names_pass() -> None:
    for value in ("gpu", "gpu-a100,gpu-h200", "lab_01", "_x", "normal+"):
        assert check_name("Partition", value) == value


@pytest.mark.parametrize("name", ["a100\n", "a100\nrm -rf ~", "a100:2", "a 100", "", "-a100", "a100,h200", "ä100"])
def test_a_gpu_type_name_is_one_gres_word(name: str) -> None:
    with pytest.raises(ConfigError):
        GpuType(name, max_count=4, memory_gb=80)
    with pytest.raises(InvalidOption):
        LaunchOptions("Qwen3-8B", gpu_type=name)
    with pytest.raises(ConfigError):
        replace(SITE, default_gpu_type=name)


@pytest.mark.parametrize("entry", [
    "--constraint=ib\ntouch /tmp/x",  # a second line runs as a command at job start
    "--constraint=ib\n#SBATCH --wrap=x",
    "--constraint=ib --exclusive",  # two options in one entry
    "--constraint ib",
    "constraint=ib",
    "--Constraint=ib",
    "--constraint=a b",
    "#SBATCH\t--constraint=ib\r",
    "--time=1:00:00",  # options the launcher sets itself
    "--output=/tmp/elsewhere",
    "#SBATCH --gres=gpu:8",
    "--job-name=x",
    "--comment=x",
    "--wrap=touch /tmp/x",
    "",
])
def test_extra_sbatch_entries_are_single_options_the_launcher_does_not_set(entry: str) -> None:
    with pytest.raises(ConfigError, match="extra_sbatch"):
        check_extra_sbatch(entry)
    with pytest.raises(ConfigError):
        replace(SITE, extra_sbatch=(entry,))


def test_extra_sbatch_entries_that_are_fine() -> None:
    for entry, directive in (("--constraint=ib", "--constraint=ib"), ("#SBATCH --exclusive", "--exclusive"),
                             ("--mail-type=END,FAIL", "--mail-type=END,FAIL"), ("--constraint=a100&ib", None)):
        assert check_extra_sbatch(entry) == (directive or entry)
    script = plan_launch(replace(SITE, extra_sbatch=("--constraint=ib", "#SBATCH --exclusive")),
                         LaunchOptions("Qwen3-8B")).script
    assert "#SBATCH --constraint=ib\n" in script and "#SBATCH --exclusive\n" in script


def test_the_sbatch_block_cannot_be_ended_early() -> None:
    """A directive's value with a line break used to end the #SBATCH block: the rest was ignored."""
    for changes in ({"time": "\n4:00:00"}, {"mem": "32G\n"}, {"partition": "gpu\n"}):
        with pytest.raises(InvalidOption):
            LaunchOptions("Qwen3-8B", **changes)  # type: ignore[arg-type]
    for key, value in (("time", "4:00:00\n"), ("mem", "32G\n"), ("qos", "normal\n")):
        with pytest.raises(ConfigError):
            replace(SITE, **{key: value})  # type: ignore[arg-type]


def test_the_prologue_may_have_lines_and_tabs_but_no_other_control_characters() -> None:
    ok = replace(SITE, prologue="module load cuda/12.4\n\tsource ~/env.sh\n")
    assert "module load cuda/12.4\n\tsource ~/env.sh" in plan_launch(ok, LaunchOptions("Qwen3-8B")).script
    for text in ("module load x\rtouch /tmp/y", "a\x1b[2Kb", "a\x00b", "a\u2028b"):
        with pytest.raises(ConfigError, match="prologue"):
            replace(SITE, prologue=text)


@pytest.mark.parametrize("key", ["model_root", "runtime_path", "vllm_examples_dir", "sglang_examples_dir"])
def test_paths_of_the_profile_have_no_control_characters(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        replace(SITE, **{key: "/x\n/y"})  # type: ignore[arg-type]


def test_lists_and_images_of_the_profile_have_no_control_characters() -> None:
    for changes in ({"binds": ("/hps\n",)}, {"runtime_args": ("--nv\n",)}, {"images": {"vllm": "/i.sif\ntouch x"}}):
        with pytest.raises(ConfigError):
            replace(SITE, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("arg", ["--max-model-len\n8192", "8192\r", "--x=\x00", "a\x1b"])
def test_engine_arguments_have_no_control_characters(arg: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        LaunchOptions("Qwen3-8B", engine_args=(arg,))
    assert caught.value.field == "engine_args"
    with pytest.raises(ConfigError, match="control character"):
        build_command(EngineSpec("vllm", "/m/x", "x", 1, extra_args=(arg,)))


def test_a_model_name_with_a_line_break_is_refused() -> None:
    for model in ("Qwen3-8B\n", "/m/Qwen3-8B\ntouch x", "~/m/a\rb"):
        with pytest.raises(ConfigError, match="model name"):
            check_model_name(model)


def test_the_job_spec_is_the_last_gate() -> None:
    """Made directly (the Python API), a spec still refuses what would change the script's lines."""
    spec = plan_launch(SITE, LaunchOptions("Qwen3-8B")).spec
    bad_command = replace(spec.command, argv=(*spec.command.argv, "--x\ntouch /tmp/y"))
    for changes in ({"gres": "gpu:a100\n:1"}, {"gres": "gpu:a100:65"}, {"image": "/i.sif\nid"},
                    {"runtime_command": "singularity\nid"}, {"binds": ("/a\nid",)}, {"model": "x\ny"},
                    {"command": bad_command}, {"extra_sbatch": ("--x=1\nid",)}, {"comment": "a\nb"},
                    {"cpus": 0}, {"cpus": 100_000}, {"idle_timeout": -1.0}, {"idle_timeout": float("nan")}):
        with pytest.raises(ConfigError):
            replace(spec, **changes)  # type: ignore[arg-type]
    assert render_script(replace(spec, gres="gpu:4")).count("#SBATCH --gres=gpu:4\n") == 1


def test_a_spec_is_still_made_from_a_plain_profile() -> None:
    spec = plan_launch(SITE, LaunchOptions("Qwen3-8B")).spec
    assert isinstance(spec, JobSpec) and spec.gres == "gpu:a100:1"


# --- engine options the launcher owns, abbreviated or not ------------------------------------------


@pytest.mark.parametrize(("engine", "arg", "option"), [
    ("vllm", "--hos", "--host"),
    ("vllm", "--ho=0.0.0.0", "--host"),
    ("vllm", "--por", "--port"),
    ("vllm", "--po=80", "--port"),
    ("vllm", "--api-ke", "--api-key"),
    ("vllm", "--api=K", "--api-key"),
    ("vllm", "--api_key=K", "--api-key"),  # vLLM reads _ as -
    ("vllm", "--served-model=x", "--served-model-name"),
    ("vllm", "--uds", "--uds"),
    ("vllm", "--ud=/tmp/s", "--uds"),
    ("vllm", "--ssl-keyfile", "--ssl-keyfile"),
    ("vllm", "--ssl-cert=c.pem", "--ssl-certfile"),
    ("vllm", "--config", "--config"),
    ("vllm", "--config=c.yaml", "--config"),
    ("vllm", "--conf", "--config"),
    ("vllm", "--headless", "--headless"),
    ("sglang", "--hos", "--host"),
    ("sglang", "--model-p=/x", "--model-path"),
    ("sglang", "--mode", "--model"),
    ("sglang", "--api-key=K", "--api-key"),
    ("sglang", "--config", "--config"),
])
def test_abbreviations_of_managed_options_are_refused(engine: str, arg: str, option: str) -> None:
    with pytest.raises(ConfigError, match=f"{option} is set by jupyter-hpcllm") as caught:
        build_command(EngineSpec(engine, "/m/x", "x", 1, extra_args=(arg, "1")))
    assert "Remove it" in str(caught.value)


@pytest.mark.parametrize("arg", ["--max-model-len", "--max-model-len=8192", "--config-format", "--seed",
                                 "--ssl-ca-certs", "--h", "--p", "--enable-prefix-caching", "8192", "--",
                                 "---port", "--hosts-file-that-does-not-exist"])
def test_other_engine_options_pass(arg: str) -> None:
    command = build_command(EngineSpec("vllm", "/m/x", "x", 1, extra_args=(arg,)))
    assert command.argv[-1] == arg


def test_a_model_root_written_with_home_is_found_and_launched_from_home(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The file readers know `~/` (SFTP starts at home): `$HOME/models` is read as `~/models`."""
    import json

    from jupyter_hpcllm.discovery import models
    from jupyter_hpcllm.discovery.models import list_models, model_facts
    from jupyter_hpcllm.edge.files import LocalFiles

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(models, "_cache_file", lambda: tmp_path / "cache.json")
    monkeypatch.setattr(models, "_memory", {})
    (tmp_path / "models" / "Qwen3-8B").mkdir(parents=True)
    (tmp_path / "models" / "Qwen3-8B" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    profile = replace(SITE, model_root="$HOME/models")
    assert [facts.name for facts in list_models(profile, LocalFiles())] == ["Qwen3-8B"]
    facts = model_facts(profile, LocalFiles(), "Qwen3-8B")
    assert facts.path == "~/models/Qwen3-8B"
    assert ' "$HOME"/models/Qwen3-8B ' in plan_launch(profile, LaunchOptions("Qwen3-8B"), facts=facts).script


@pytest.mark.parametrize(("entry", "means"), [("--arr=0-3", "array"), ("--outp=x", "output"), ("--chd=/", "chdir"),
                                             ("--expo=ALL", "export"), ("--ti=5", "time"), ("--gre=gpu:8", "gres")])
def test_extra_sbatch_abbreviations_of_the_launchers_options_are_refused(entry, means):
    from jupyter_hpcllm.config.checks import check_extra_sbatch

    with pytest.raises(ConfigError, match=f"sets --{means}, .* abbreviations"):
        check_extra_sbatch(entry)
    assert check_extra_sbatch("--gres-flags=enforce-binding") == "--gres-flags=enforce-binding"
