"""forge.toml fuzzed: random text, and random documents of the real sections and keys with
values of every TOML type and `${VAR}` references to a random environment. Loading either
gives a Config whose numbers are usable, or a ConfigError whose every line names the file and
the key (or says the TOML is broken): never another exception, never a traceback."""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_node import config
from forge_node.errors import ConfigError

SECTION_NAMES = [*config.SECTIONS, "gateway.subscriptions", "worker.pools.gpu"]
NAMES_A_KEY = re.compile(r"\b(" + "|".join(config.SECTIONS) + r")\b|unknown section \[")
VARIABLES = ["PORT", "DATABASE_URL", "JWT_SECRET", "ROLES", "X"]

env_values = st.one_of(st.text(max_size=30), st.sampled_from(
    ["8080", "-1", "0", "1e999", "nan", "inf", "-inf", "9" * 5000, "true", "off", "", " ",
     "postgresql://u:p@h/db", "gateway,function", "${PORT}"]))
references = st.builds(lambda name, default: f"${{{name}{default}}}",
                       st.sampled_from(VARIABLES),
                       st.one_of(st.just(""), env_values.map(lambda v: ":-" + v)))
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), st.booleans(),
    st.text(max_size=20), references, st.datetimes(), st.dates())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner,
                                                 max_size=3)), max_leaves=6)


def fields_of(section: str) -> dict[str, Any]:
    """The keys of a section and their types."""
    cls = {"gateway.subscriptions": config.SubscriptionsConfig,
           "worker.pools.gpu": config.PoolConfig}.get(section) or config.SECTIONS[section]
    return typing.get_type_hints(cls)


TYPED = {int: st.integers(min_value=-1, max_value=100_000),
         float: st.one_of(st.sampled_from([math.inf, -math.inf, math.nan, 1e308, 0.5]),
                          st.floats(), st.integers(min_value=-1, max_value=100_000)),
         bool: st.booleans(),
         str: st.text(max_size=20), tuple[str, ...]: st.lists(st.text(max_size=10), max_size=3)}


def value_for(kind: Any) -> st.SearchStrategy:
    """Mostly values of the key's own type (so that whole documents load often enough to
    test what they load to), or a reference to the environment, or anything."""
    typed = TYPED.get(kind, values)
    return st.one_of(typed, typed, typed, references, values)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SECTION_NAMES, "gatway"]), max_size=5)):
        if section not in config.SECTIONS and "." not in section:
            document[section] = draw(values)
            continue
        fields = {**fields_of(section), "unknown_key": Any}
        chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
        table = {key: draw(value_for(fields[key])) for key in chosen}
        node = document
        for part in section.split(".")[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[section.split(".")[-1]] = table
    return document


def load(text: str, environ: dict[str, str]) -> config.Config | None:
    """Load the text as forge.toml: the Config, or None after checking the ConfigError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "forge.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return config.load(path, environ)
        except ConfigError as exc:
            for problem in exc.problems:
                assert problem.startswith(f"{path.resolve()}: "), problem
                assert NAMES_A_KEY.search(problem) or "not valid TOML" in problem \
                    or "cannot be read" in problem, problem
            return None


def non_finite_numbers(value: Any, where: str = "") -> list[str]:
    """The keys of a loaded Config that hold NaN or an infinity (no timeout can be one)."""
    if dataclasses.is_dataclass(value):
        return [found for f in dataclasses.fields(value)
                for found in non_finite_numbers(getattr(value, f.name), f"{where}.{f.name}")]
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in non_finite_numbers(item, f"{where}.{key}")]
    return [where] if isinstance(value, float) and not math.isfinite(value) else []


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
environments = st.dictionaries(st.sampled_from(VARIABLES), env_values, max_size=5)


@FUZZ
@given(documents(), environments)
def test_random_documents_load_or_name_the_key(document, environ):
    document.setdefault("project", {"name": "fuzz"})
    loaded = load(tomlkit.dumps(document), environ)
    if loaded is not None:
        assert non_finite_numbers(loaded) == []


@st.composite
def one_key(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document but for one key of one section, set to anything."""
    section = draw(st.sampled_from(SECTION_NAMES))
    fields = fields_of(section)
    key = draw(st.sampled_from(sorted(fields)))
    table: Any = {key: draw(value_for(fields[key]))}
    for part in reversed(section.split(".")):
        table = {part: table}
    return {"project": {"name": "fuzz"}, **table} if section != "project" else table


@FUZZ
@given(one_key(), environments)
def test_each_key_loads_or_is_named(document, environ):
    loaded = load(tomlkit.dumps(document), environ)
    if loaded is not None:
        assert non_finite_numbers(loaded) == []


@FUZZ
@given(st.text(max_size=200), environments)
def test_random_text_loads_or_says_why(text, environ):
    load(text, environ)


@FUZZ
@given(st.lists(st.sampled_from(["[gateway]", "[project]", 'name = "x"', "port = ",
                                 "[", "]", "{", "}", "a = [", "b = {", "=", '"', "'''",
                                 "\n", "inf", "nan", "${PORT}", "[[node]]", "x.y.z = 1"]),
                max_size=60).map("".join), environments)
def test_toml_shaped_fragments_load_or_say_why(text, environ):
    load(text, environ)


def test_deeply_nested_toml_is_a_config_error():
    for text in ("a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000):
        assert load(f'[project]\nname = "x"\n{text}\n', {}) is None
