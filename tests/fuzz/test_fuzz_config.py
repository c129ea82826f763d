"""Property: any config file (TOML text from a grammar of the profile keys, with values of every TOML type,
nested tables, wrong types, control characters, or no TOML at all) loads as a Profile or fails with a
ConfigError; a loaded profile is shown (`hpcllm config show`) and plans a job offline, or says why not."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from fuzzkit import FUZZ, HUGE, below, pick
from hypothesis import given
from hypothesis import strategies as st

from jupyter_hpcllm.config.options import LaunchOptions
from jupyter_hpcllm.config.profiles import Profile, load_profile, render_profile
from jupyter_hpcllm.errors import ConfigError
from jupyter_hpcllm.planning.plan import plan_launch

pytestmark = pytest.mark.fuzz

PROFILE_KEYS = [f.name for f in fields(Profile) if f.name != "name"] + ["name"]

# --- TOML text ---------------------------------------------------------------------------------------

_CONTROL = st.characters(min_codepoint=0, max_codepoint=31)
_WORDS = ["", "local", "ebi", "a100", "h200", "vllm", "sglang", "singularity", "apptainer", "none", "openssh",
          "paramiko", "gpu", "4:00:00", "32G", "~/models", "/abs/img.sif", "--constraint=ib", "#SBATCH --x=y", "a\nb",
          "a100\n", "gpu\t", "4:00:00\r", "$(touch /tmp/x)", "x" * 5000]
_TEXT = st.one_of(st.sampled_from(_WORDS), st.sampled_from(_WORDS), st.text(max_size=12),
                  st.text(_CONTROL, min_size=1, max_size=3))


def _basic(text: str) -> str:
    return json.dumps(text)  # JSON's escapes are TOML basic-string escapes (lone surrogates make it invalid)


STRINGS = st.one_of(_TEXT.map(_basic), _TEXT.map(_basic), _TEXT.map(lambda t: "'" + t + "'"),
                    _TEXT.map(lambda t: '"""' + t + '"""'))
INTEGERS = st.one_of(st.integers(-10, 10).map(str), st.sampled_from(
    ["10000000000000000000000", "-9223372036854775809", "9223372036854775807", "0x7fffffff", "0o17", "0b101",
     "1_000", "+5", "01", "1__0"]))
FLOATS = st.sampled_from(["inf", "-inf", "nan", "+nan", "1e400", "-1e400", "-0.0", "0.0", "80.0", "1e-400", "6.02e23",
                          "0.5", "-3.5", "1e18", "1."])
OTHERS = st.sampled_from(["true", "false", "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00", "[]", "{}",
                          "[1, \"a\", [true]]", "[\"--nv\", \"--x\"]", "{ max_count = 4, memory_gb = 80 }",
                          "{ vllm = \"/x.sif\" }", "{ a = { b = 1 } }", "[{ x = 1 }]"])
SCALARS = st.one_of(STRINGS, INTEGERS, FLOATS, OTHERS)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"))
NUMBERS = st.one_of(INTEGERS, FLOATS)
# Most keys get a value of their own type (extremes included), now and then any value at all.
TYPED = {
    **{key: STRINGS for key in PROFILE_KEYS},
    **{key: INTEGERS for key in ("port", "cpus", "default_gpus")},
    **{key: NUMBERS for key in ("connect_timeout", "command_timeout", "keepalive")},
    **{key: st.lists(STRINGS, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
       for key in ("extra_sbatch", "runtime_args", "binds")},
    "runtime": st.sampled_from(['"singularity"', '"apptainer"', '"none"', '"docker"', '""']),
    "default_engine": st.sampled_from(['"vllm"', '"sglang"', '"tgi"']),
    "ssh_backend": st.sampled_from(['"paramiko"', '"openssh"', '"putty"']),
    "preset": st.one_of(st.sampled_from(['"ebi"', '"nope"', '""']), STRINGS),
}
GPU_VALUES = {"max_count": NUMBERS, "memory_gb": NUMBERS, "min_count": NUMBERS}
PROFILE_NAMES = ["ebi", "fz", "mine", "a-b", "x_1", "a.b", "a b", "", "日本", "a\nb"]


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _basic(name)


PROFILE_KEY_LISTS = st.lists(pick((*PROFILE_KEYS, "preset", "nonsense", "Host")), max_size=5, unique=True)
GPU_NAME_LISTS = st.lists(pick(("a100", "h200", "a 100", "a100\n", "gpu:x", "b,c", "")), max_size=2, unique=True)
GPU_KEY_LISTS = st.lists(pick(("max_count", "memory_gb", "min_count", "name")), max_size=4, unique=True)
IMAGE_KEY_LISTS = st.lists(pick(("vllm", "sglang", "tgi")), max_size=2, unique=True)
DEFAULT_PROFILE = st.one_of(pick(tuple(PROFILE_NAMES)).map(_basic), VALUES)
NOT_TOML = st.one_of(st.text(max_size=20), st.just(HUGE), st.text(_CONTROL, min_size=1, max_size=3))


@st.composite
def toml_documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(TOML text, the profile names it defines)."""
    lines: list[str] = []
    names: list[str] = []
    if draw(st.booleans()):
        lines.append(f"default_profile = {draw(DEFAULT_PROFILE)}")
    for _ in range(draw(below(3))):
        name = draw(pick(tuple(PROFILE_NAMES)))
        names.append(name)
        lines.append(f"[profiles.{_key(name)}]" if draw(below(20)) else f"[[profiles.{_key(name)}]]")
        for key in draw(PROFILE_KEY_LISTS):
            if key in ("gpu_types", "images") and draw(st.booleans()):
                continue  # written as tables below
            value = draw(TYPED.get(key, VALUES)) if draw(below(4)) else draw(VALUES)
            lines.append(f"{key} = {value}")
        for gpu in draw(GPU_NAME_LISTS):
            lines.append(f"[profiles.{_key(name)}.gpu_types.{_key(gpu)}]")
            for key in draw(GPU_KEY_LISTS):
                value = draw(GPU_VALUES.get(key, VALUES)) if draw(below(5)) else draw(VALUES)
                lines.append(f"{key} = {value}")
        if not draw(below(4)):
            lines.append(f"[profiles.{_key(name)}.images]")
            lines += [f"{k} = {draw(STRINGS) if draw(below(4)) else draw(VALUES)}" for k in draw(IMAGE_KEY_LISTS)]
    if not draw(below(16)):  # the top level, or a section, as something else than a table
        lines.insert(0, f"{draw(pick(('profiles', 'junk')))} = {draw(VALUES)}")
    if not draw(below(11)):  # text that is not TOML at all
        lines.insert(draw(st.integers(0, len(lines))), draw(NOT_TOML))
    return "\n".join(lines) + "\n", names


@FUZZ
@given(document=toml_documents(), data=st.data())
def test_any_config_file_loads_as_a_profile_or_a_config_error(sandbox: Path, document: tuple[str, list[str]],
                                                               data: st.DataObject) -> None:
    text, defined = document
    name = data.draw(st.one_of(pick(tuple(defined)), pick(tuple(defined)), st.none(), pick(("ebi", "nope")))
                     if defined else pick((None, "ebi", "x")))
    path = sandbox / "fuzzed.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        profile = load_profile(name, path=path)
    except ConfigError as error:
        assert str(error).strip()
        return
    assert isinstance(profile, Profile)
    shown = render_profile(profile)  # `hpcllm config show`
    assert shown.startswith(f"[profiles.{profile.name}]")
    try:
        plan = plan_launch(profile, LaunchOptions("Qwen3-8B"))
    except ConfigError:
        return
    assert plan.script.startswith("#!/bin/bash\n")


@pytest.mark.parametrize("text", [
    "profiles = 1\n",
    "[profiles]\nebi = 'x'\n",
    "[profiles.fz]\npreset = 1\n",
    "[profiles.fz]\npreset = ['ebi']\n",
    "[profiles.fz]\npreset = 'ebi'\n[profiles.fz.gpu_types.a100]\nmax_count = inf\nmemory_gb = 80\n",
    "[profiles.fz]\npreset = 'ebi'\n[profiles.fz.gpu_types.a100]\nmax_count = 4\nmin_count = -inf\nmemory_gb = 80\n",
    "[profiles.fz]\npreset = 'ebi'\nmem = '32G\\n'\n",
])
def test_config_files_found_by_fuzzing_are_config_errors(sandbox: Path, text: str) -> None:
    """Non-table profile sections and non-string presets were a TypeError/AttributeError, an infinite GPU
    count an OverflowError from int(); a line break in a value reached the job script's #SBATCH lines."""
    path = sandbox / "found.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_profile("fz" if "fz" in text else "ebi", path=path)


def test_an_unknown_profile_name_with_line_breaks_stays_one_line(sandbox: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        load_profile("x\n\ntouch /tmp/x", path=sandbox / "config.toml")
    assert "\n" not in str(failed.value)
