"""Launch options: defined once, checked once, offered the same way by every face."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from jupyter_hpcllm.config.options import LaunchOptions, add_arguments, option_specs
from jupyter_hpcllm.errors import InvalidOption, http_status


def test_from_a_form_or_a_json_body():
    options = LaunchOptions.from_mapping({"model": "Qwen3-8B", "gpus": "2", "cpus": 8, "timeout": "90",
                                          "partition": "", "tool_call_parser": "", "reuse": "false",
                                          "engine_args": "--max-model-len 8192"})
    assert (options.gpus, options.cpus, options.timeout, options.reuse) == (2, 8, 90.0, False)
    assert options.partition is None  # empty text is "not set"...
    assert options.tool_call_parser == ""  # ...except where '' means "no parser"
    assert options.engine_args == ("--max-model-len", "8192")
    assert LaunchOptions.from_mapping(options.as_dict()) == options


@pytest.mark.parametrize(("values", "field", "text"), [
    ({"model": "x", "gpus": 0}, "gpus", "--gpus must be at least 1, not 0"),
    ({"model": "x", "gpus": "two"}, "gpus", "--gpus takes a whole number, not 'two'"),
    ({"model": "x", "gpus": True}, "gpus", "--gpus takes a whole number"),
    ({"model": "x", "time": "25:99"}, "time", "'25:99' is not a Slurm time limit"),
    ({"model": "x", "mem": "lots"}, "mem", "'lots' is not a Slurm memory size"),
    ({"model": "x", "engine": "tgi"}, "engine", "--engine must be one of vllm, sglang"),
    ({"model": "x", "partition": "gpu;rm"}, "partition", "characters Slurm does not allow"),
    ({"model": "x", "tool_call_parser": "a b"}, "tool_call_parser", "is not a parser name"),
    ({"model": "x; touch /tmp/p"}, "model", "is not a model name"),
    ({"model": ""}, "model", "No model given"),
    ({"model": "x", "gpu": 2}, "gpu", "Did you mean 'gpus'?"),
    ({"model": "x", "engine_args": [1, 2]}, "engine_args", "takes a list of words"),
])
def test_errors_name_the_field(values, field, text):
    with pytest.raises(InvalidOption) as caught:
        LaunchOptions.from_mapping(values)
    assert caught.value.field == field and text in str(caught.value)
    assert http_status(caught.value) == 422


def test_made_directly_it_checks_itself_too():
    with pytest.raises(InvalidOption, match="--cpus must be at least 1"):
        LaunchOptions("x", cpus=0)
    with pytest.raises(InvalidOption, match="--cpus"):
        LaunchOptions("x").replace(cpus=-3)


def test_argparse_is_built_from_the_definitions():
    parser = argparse.ArgumentParser()
    add_arguments(parser, groups=("job", "launch"))
    parsed = parser.parse_args(["Qwen3-8B", "--gpus", "2", "--gpu-type", "h200", "--no-reuse", "--replicas", "2",
                                "--speculative", "--reasoning-parser", ""])
    options = LaunchOptions.from_namespace(parsed)
    assert (options.model, options.gpus, options.gpu_type, options.reuse, options.replicas, options.speculative) == (
        "Qwen3-8B", 2, "h200", False, 2, "auto")
    named = LaunchOptions.from_namespace(parser.parse_args(["Qwen3-8B", "--speculative", "Qwen3-8B_eagle3"]))
    assert named.speculative == "Qwen3-8B_eagle3"
    assert options.reasoning_parser == "" and options.tool_call_parser is None


def test_every_option_reaches_every_face():
    """One field added to LaunchOptions appears in the CLI's and the magics' parsers and in JSON bodies."""
    from jupyter_hpcllm.cli import build_parser
    from jupyter_hpcllm.notebook.magics import _hpcllm_parser

    def flags(parser, command):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        return {s for action in sub._actions for s in action.option_strings} | {
            action.dest for action in sub._actions if not action.option_strings}

    cli, magic = flags(build_parser(), "up"), flags(_hpcllm_parser(), "up")
    for name, _, _default, spec in option_specs():
        if spec.after_dashes:
            continue  # engine arguments come after `--` on both
        flag = spec.negative_flag or spec.flag(name)
        assert flag in cli and flag in magic, name
    assert {f.name for f in fields(LaunchOptions)} == set(LaunchOptions("x").as_dict())


def test_text_is_trimmed_from_forms_and_refused_when_made_directly():
    options = LaunchOptions.from_mapping({"model": " Qwen3-8B ", "time": " 4:00:00 ", "mem": "32G\n"})
    assert (options.model, options.time, options.mem) == ("Qwen3-8B", "4:00:00", "32G")
    with pytest.raises(InvalidOption, match="spaces or line breaks") as caught:
        LaunchOptions("x", time="4:00:00\n")
    assert caught.value.field == "time"


@pytest.mark.parametrize("value", ["nan", "inf", float("nan")])
def test_a_timeout_is_a_finite_number(value):
    with pytest.raises(InvalidOption, match="finite") as caught:
        LaunchOptions.from_mapping({"model": "x", "timeout": value})
    assert caught.value.field == "timeout"


def test_options_given_as_an_object_and_keywords_are_converted_the_same_way():
    from jupyter_hpcllm.lifecycle.cluster import _options

    merged = _options(LaunchOptions("Qwen3-8B"), {"gpus": "2", "engine_args": ["--seed", "1"]})
    assert (merged.gpus, merged.engine_args) == (2, ("--seed", "1"))
    with pytest.raises(InvalidOption, match="Did you mean 'gpus'"):
        _options(LaunchOptions("Qwen3-8B"), {"gpu": 2})
