"""Properties of `{name}` interpolation in prompts (chat/interpolate.py, used by %%llm for the cell and -s):
any template with any braces and any namespace (values whose __str__, __format__ or __repr__ raise,
recursion, huge strings and numbers) gives text or a clean HpcllmError; and a template made of plain text,
`{name}` and `{{text}}` gives exactly the values and literals it names, in one pass."""

from __future__ import annotations

from typing import Any

import pytest
from fuzzkit import FUZZ, HUGE, assert_one_paragraph
from hypothesis import given
from hypothesis import strategies as st

from jupyter_hpcllm.chat.interpolate import interpolate
from jupyter_hpcllm.errors import HpcllmError

pytestmark = pytest.mark.fuzz


class RaisingStr:
    def __str__(self) -> str:
        raise ValueError("__str__ failed")


class RaisingRepr:  # str() falls back to __repr__
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ failed")


class RaisingFormat:
    def __format__(self, spec: str) -> str:
        raise TypeError("__format__ failed")

    def __str__(self) -> str:
        return "formatted-by-str"


class Recursing:
    def __str__(self) -> str:
        return str(self)


class NotText:
    def __str__(self) -> Any:
        return 42  # str() raises TypeError: __str__ returned non-string


class Braces:
    def __str__(self) -> str:
        return "{topic} {{x}} {"  # a value is inserted as it is: never interpolated again


def _loop() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


SAFE_VALUES: dict[str, Any] = {
    "topic": "Slurm", "empty": "", "huge": HUGE, "braces": Braces(), "number": 10**100, "nan": float("nan"),
    "none": None, "loop": _loop(), "nested": {"a": {"b": [1, {2}]}}, "bytes": b"\xff\x00", "surrogate": "\udcff",
    "newlines": "a\n\nb\r\n", "formatting": RaisingFormat(), "unicode": "日本語 🦙 \u202e",
}
# Values whose str() raises: the user's own bug, which must still end as a clear error, not a traceback.
BAD_VALUES: dict[str, Any] = {
    "bad_str": RaisingStr(), "bad_repr": RaisingRepr(), "recursing": Recursing(), "not_text": NotText(),
    "too_many_digits": 10**5000,  # int → str beyond sys.get_int_max_str_digits() raises ValueError
}
NAMES = [*SAFE_VALUES, *BAD_VALUES, "unknown", "_", "x1", "é"]

FRAGMENTS = ["{", "}", "{{", "}}", "{}", "{ topic }", "{topic!r}", "{topic:>10}", "{0}", "{topic.x}", "{topic[0]}",
             '{"a": 1}', "{{{topic}}}", "{{topic}", "{topic}}", "def f(): return {}", "{" * 50, "}" * 50, "$topic",
             "%(topic)s", "\\{topic}", "{\ntopic}", "{topic\n}", "{{\n}}", "{日本}"]


def _segment(safe_only: bool) -> st.SearchStrategy[tuple[str, str | None]]:
    """(template text, the text it must become; None when only robustness is checked)."""
    plain = st.text(st.characters(blacklist_characters="{}"), max_size=15)
    safe_names = [n for n in SAFE_VALUES if n != "formatting"] + ["formatting"]
    known = st.sampled_from(safe_names).map(lambda n: ("{" + n + "}", str(SAFE_VALUES[n])))
    literal = plain.map(lambda t: ("{{" + t + "}}", "{" + t + "}"))
    unknown = st.sampled_from(["unknown", "x1", "_"]).map(lambda n: ("{" + n + "}", "{" + n + "}"))
    if safe_only:
        return st.one_of(plain.map(lambda t: (t, t)), known, literal, unknown)
    anything = st.one_of(st.sampled_from(NAMES).map(lambda n: "{" + n + "}"), st.sampled_from(FRAGMENTS),
                         st.text(max_size=10), st.just(HUGE))
    return st.one_of(anything.map(lambda t: (t, None)), plain.map(lambda t: (t, t)), known, literal)


@FUZZ
@given(safe_only=st.booleans(), data=st.data())
def test_interpolation_gives_text_or_a_clean_error_and_means_what_it_says(safe_only: bool, data: st.DataObject) -> None:
    segments = data.draw(st.lists(_segment(safe_only), max_size=8))
    template = "".join(text for text, _ in segments)
    namespace = {**SAFE_VALUES, **BAD_VALUES}
    try:
        result = interpolate(template, namespace)
    except HpcllmError as error:
        assert_one_paragraph(str(error), template[:200])
        assert any("{" + name + "}" in template for name in BAD_VALUES), f"a clean error, but for what? {error}"
        return
    assert isinstance(result, str)
    if all(expected is not None for _, expected in segments):
        assert result == "".join(expected for _, expected in segments if expected is not None)
    if "{" not in template:
        assert result == template


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_value_whose_str_raises_is_a_clean_error_naming_it(name: str) -> None:
    """Was the exception of the value's __str__ (a traceback through %%llm)."""
    with pytest.raises(HpcllmError, match=name):
        interpolate("Explain {topic} and {" + name + "}.", {**SAFE_VALUES, **BAD_VALUES})
