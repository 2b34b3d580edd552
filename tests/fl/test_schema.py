"""The declarations of settings and options (fedbcs_fl/schema.py): the values each takes,
and every RunConfig field that is a setting declares its help."""

import dataclasses
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedbcs_fl.config import RUN_SETTINGS, RunConfig
from fedbcs_fl.schema import Option, Setting, setting, settings_of

# Fields that describe the file, not the run: no help, no flag, no Flower key.
FILE_FIELDS = {"method_options", "method_defaults_version", "version"}


def test_every_run_config_field_but_the_files_own_is_a_declared_setting():
    assert set(RUN_SETTINGS) == {f.name for f in dataclasses.fields(RunConfig)} - FILE_FIELDS
    for name, declared in RUN_SETTINGS.items():
        assert isinstance(declared, Setting) and declared.help.strip(), name
        assert getattr(RunConfig(), name) == declared.default, name


@example(low=0.0, width=1.0, value=math.nan, closed=(True, True))
@example(low=0.0, width=1.0, value=math.inf, closed=(True, True))
@example(low=0.0, width=1.0, value=1.0, closed=(True, True))  # a closed end is inside
@example(low=0.0, width=1.0, value=1.0, closed=(True, False))
@given(
    low=st.floats(-10, 10),
    width=st.floats(0.01, 10),
    value=st.floats(allow_nan=True, allow_infinity=True),
    closed=st.tuples(st.booleans(), st.booleans()),
)
def test_a_number_is_taken_exactly_when_it_is_finite_and_inside(low, width, value, closed):
    high = low + width
    interval = f"{'[' if closed[0] else '('}{low!r}, {high!r}{']' if closed[1] else ')'}"
    option = Option(low + width / 2, "x", interval=interval)
    above = value >= low if closed[0] else value > low
    below = value <= high if closed[1] else value < high
    if above and below and math.isfinite(value):
        assert option.check(value) == value
    else:
        with pytest.raises(ValueError, match=rf"must be in \{interval[0]}"):
            option.check(value)


@pytest.mark.parametrize(
    "declaration, message",
    [
        (lambda: Option(0.0, "a temperature", interval="(0, inf)"), r"must be in \(0, inf\)"),
        (lambda: Option("x", "a mode", choices=("a", "b")), "must be one of a, b"),
        (lambda: Option(None, "a size"), "defaults to None: give its type"),
        (lambda: Option(None, "a size", type=int), "none_means says"),
        (lambda: Option(1, " "), "needs its help text"),
        (lambda: Setting(1, "rounds", flower="toml"), "flower must be key, extra or node"),
    ],
)
def test_a_declaration_that_breaks_its_own_rules_fails_where_it_is_written(declaration, message):
    with pytest.raises((ValueError, TypeError), match=message):
        declaration()


def test_parse_and_check_by_type():
    sites = Option(None, "sites", none_means="all", type=list)
    assert sites.parse("a, b,,c") == ["a", "b", "c"]
    assert sites.check(None) is None
    with pytest.raises(ValueError, match="must be a list of names"):
        sites.check("a,b")
    count = Option(3, "count")
    with pytest.raises(ValueError, match=r"must be an integer; got '2\.5'"):
        count.parse("2.5")
    with pytest.raises(ValueError, match="must be an integer; got True"):
        count.check(True)
    with pytest.raises(ValueError, match="must be an integer; got None"):
        count.check(None)  # only a setting whose default is None may be None
    assert Option(0.5, "weight").check(2) == 2.0


def test_settings_of_reads_back_the_declarations_in_field_order():
    @dataclasses.dataclass
    class Example:
        size: int = setting(4, "a size")
        plain: int = 0
        name: str = setting("a", "a name", choices=("a", "b"), cli=False)
        names: list[str] | None = setting(None, "some names", none_means="all")

    declared = settings_of(Example)
    assert list(declared) == ["size", "name", "names"]
    assert (declared["size"].default, declared["name"].cli) == (4, False)
    # The type is the field's annotation.
    assert [d.type for d in declared.values()] == [int, str, list]
    assert declared["names"].parse("a,b") == ["a", "b"]
    assert Example().size == 4
