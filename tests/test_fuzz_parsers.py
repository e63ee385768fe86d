"""Property-based fuzzing of the user-facing parsers: sweep specs, ``--set`` overrides, seeds.

Whatever text a user types, the only exception may be a :class:`UsageError` with a one-line
message (the CLI prints it and exits with status 2); anything else is a bug that would show a
traceback. What is accepted must also be sane: every float in a config finite, ints within what
the field means, ranges that stay within their bounds.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from genbench.core.errors import UsageError
from genbench.experiments.plan import (
    build_specs,
    parse_overrides,
    parse_seeds,
    parse_sweep_spec,
    parse_sweep_specs,
    plan_sweep,
)
from genbench.models import get_model_class, model_names
from genbench.training.spec import TrainConfig

FUZZ = settings(max_examples=200, deadline=None)
MODELS = model_names()
TRAIN_KEYS = TrainConfig.field_names()
MODEL_KEYS = sorted({key for name in MODELS for key in get_model_class(name).config_class.field_names()})
KEYS = sorted(set(MODEL_KEYS) | set(TRAIN_KEYS))
INT64 = 2**63


def outcome(function, *args):
    """``function(*args)``, or None when it raises a UsageError with a one-line, non-empty message.
    Any other exception propagates: that is the bug these tests look for."""
    name = getattr(function, "__name__", "call")
    try:
        result = function(*args)
    except UsageError as error:
        assert_one_line(error)
        event(f"{name}: usage error")  # shown by --hypothesis-show-statistics
        return None
    event(f"{name}: accepted")
    return result


def assert_one_line(error: UsageError) -> None:
    message = str(error)
    assert message.strip(), "a UsageError without a message"
    assert len(message.splitlines()) == 1, f"a UsageError message over several lines: {message!r}"


# ---- strategies -------------------------------------------------------------------------------

# Keys: real config field names (so coercion and validation run), scoped ones and junk.
keys = st.one_of(
    st.sampled_from(KEYS),
    st.builds(lambda m, k: f"{m}.{k}", st.sampled_from(MODELS), st.sampled_from(KEYS)),
    st.sampled_from(["latnt_dim", "vae.", ".latent_dim", "nomodel.latent_dim", "a.b.c", "-x", "_"]),
    st.text(max_size=8),
)

# Numbers as a user might type them, from ordinary to absurd.
SPECIAL_NUMBERS = [
    "0", "-0", "+1", "1.", ".5", "1e400", "-1e400", "1e-400", "1e308", "1.8e308", "5e-324",
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "99999999999999999999", "9" * 400,
    "-99999999999999999999", "1_000", "0x10", "1e5", "2.5", "1E-3", "١٢", "٣.٥",
]
number_text = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:g}"),
    st.sampled_from(SPECIAL_NUMBERS),
)
range_text = st.builds(
    lambda a, b, kind, step: f"{a}:{b}:{kind}{step}",
    number_text, number_text, st.sampled_from(["x", "*", "+", "", "X", "-"]), number_text,
)
junk = st.text(max_size=8)
words = st.sampled_from(["true", "false", "maybe", "yes", "none", "null", "None", "bernoulli",
                         "gaussian", "random", "discriminator", "sum", "", " ", "1:2", "1:2:3:4"])
value_text = st.one_of(number_text, range_text, words, junk,
                       st.builds(lambda v, j: v + j, number_text, junk))
spec_text = st.builds(lambda k, vs, sep: f"{k}{sep}{','.join(vs)}",
                      keys, st.lists(value_text, min_size=1, max_size=4), st.sampled_from(["=", " = ", ""]))
# Values and specs that mostly parse, so that coercion, validation and the sanity checks run often.
small_number = st.one_of(st.integers(-2, 300).map(str), st.floats(-0.5, 2).map(lambda x: f"{x:.3g}"))
plausible_value = st.one_of(small_number, small_number, number_text, words)
small_range = st.builds(lambda a, n, kind, step: f"{a}:{a + n}:{kind}{step}", st.integers(-2, 64),
                        st.integers(0, 64), st.sampled_from(["x", "+", ""]), st.integers(1, 8))
plausible_spec = st.builds(lambda k, vs: f"{k}={','.join(vs)}", st.sampled_from(KEYS),
                           st.lists(st.one_of(plausible_value, small_range), min_size=1, max_size=3))
# Text from the alphabet of the grammar, to reach deeper than uniformly random characters do.
grammar_text = st.text(alphabet="0123456789.:,=x*+-eE_ ab\nnfi", max_size=30)


# ---- what accepted values must look like --------------------------------------------------------


def assert_sane_axis(axis, text: str) -> None:
    assert axis.key == text.partition("=")[0].strip()
    assert axis.values, "an axis without values"
    assert len(set(axis.values)) == len(axis.values), "a repeated value"
    assert all(v and v == v.strip() and "," not in v for v in axis.values)


def assert_sane_train(train: TrainConfig) -> None:
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "sample_every", "grid_size"):
        assert 1 <= getattr(train, name) < INT64, f"{name}={getattr(train, name)}"
    assert -INT64 <= train.grid_seed < INT64  # any int64 seeds a torch.Generator
    assert train.checkpoint_every % train.log_every == 0


# Values hypothesis once found accepted at planning that failed only once the run started; the
# shared field rules (ModelConfig.check) and gvae's feature_layer range now reject them.
ONCE_ACCEPTED = [
    *[(model, beta, value) for model in ("vae", "gvae", "gan", "deepsim")
      for beta, value in (("beta1", "1.5"), ("beta2", "-0.1"))],
    ("wgan", "base_width", "0"),
    ("deepsim", "base_width", "0"),
    ("deepsim", "comparator_width", "0"),
    ("gvae", "feature_layer", "100"),
]

# What each model field means (feature_layer depends on the discriminator's depth: not here).
FIELD_RANGES = {
    "latent_dim": lambda v: v >= 1,
    "base_width": lambda v: v >= 1,
    "critic_steps": lambda v: v >= 1,
    "dropout": lambda v: 0 <= v < 1,
    "comparator_width": lambda v: v >= 1,
    "learning_rate": lambda v: v is None or v > 0,
    "beta1": lambda v: 0 <= v < 1,
    "beta2": lambda v: 0 <= v < 1,
    "clip_value": lambda v: v > 0,
    "min_variance": lambda v: v > 0,
    "pause_ratio": lambda v: v >= 0,
    **{w: (lambda v: v >= 0) for w in ("kl_weight", "feature_weight", "generator_feature_weight",
                                         "adversarial_weight", "image_weight", "penalty_weight")},
}


def assert_sane_config(model: str, config: dict) -> None:
    for key, value in config.items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{model}: {key}={value} accepted"
        if isinstance(value, int) and not isinstance(value, bool):
            assert -INT64 <= value < INT64, f"{model}: {key}={value} accepted"
        if key in FIELD_RANGES:
            assert FIELD_RANGES[key](value), f"{model}: {key}={value} accepted"


def assert_sane_specs(specs) -> None:
    for spec in specs:
        assert_sane_config(spec.model, spec.model_config)
        assert_sane_train(spec.train)
        assert spec.run_id  # the content hash needs a JSON-able spec


# ---- 1. sweep specs ------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(), grammar_text, spec_text))
@example("latent_dim\n=1")  # a newline in the error message
def test_parse_sweep_spec_raises_only_usage_errors(text):
    axis = outcome(parse_sweep_spec, text)
    if axis is not None:
        assert_sane_axis(axis, text)


@FUZZ
@given(st.lists(st.one_of(spec_text, grammar_text, st.text(max_size=20)), max_size=4))
def test_parse_sweep_specs_raises_only_usage_errors(texts):
    axes = outcome(parse_sweep_specs, texts)
    if axes is not None:
        assert len({a.key for a in axes}) == len(axes) == len(texts)


@FUZZ
@given(st.sampled_from(KEYS), st.lists(st.integers(), min_size=1, max_size=8, unique=True))
def test_a_list_of_distinct_ints_round_trips_in_order(key, values):
    axis = parse_sweep_spec(f"{key}={','.join(map(str, values))}")
    assert axis.key == key
    assert axis.values == tuple(str(v) for v in values)


@FUZZ
@given(st.integers(1, 10**6), st.integers(2, 1000), st.integers(0, 10**30), st.sampled_from("x*"))
@example(3, 7, 10**20, "x")  # beyond 2**53 floats no longer hold a * F**k exactly
def test_an_integer_geometric_range_is_a_times_powers_of_f(start, factor, extra, kind):
    stop = start + extra
    values = [int(v) for v in parse_sweep_spec(f"latent_dim={start}:{stop}:{kind}{factor}").values]
    expected = [start * factor**k for k in range(200) if start * factor**k <= stop]
    assert values == expected
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] * factor > stop


@FUZZ
@given(st.integers(-(10**15), 10**15), st.integers(1, 10**15), st.integers(0, 999), st.integers(0, 10**15),
       st.sampled_from(["+", ""]))
@example(10**12, 1000, 0, 999, "+")  # the float tolerance once let a value overshoot the stop
def test_an_integer_arithmetic_range_is_exact_and_ends_at_or_below_stop(start, step, count, slack, plus):
    stop = start + count * step + slack % step
    values = [int(v) for v in parse_sweep_spec(f"steps={start}:{stop}:{plus}{step}").values]
    assert values == list(range(start, stop + 1, step))
    assert values[-1] <= stop < values[-1] + step


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-6)


@FUZZ
@given(finite, st.floats(min_value=0, max_value=1e6), st.floats(min_value=1e-4, max_value=1e6))
@example(0.0, 1.0, 0.3333333335)  # the last value, 1.0000000005, is within the tolerance of stop
def test_a_float_arithmetic_range_increases_and_ends_at_or_below_stop(start, length, step):
    stop = start + length
    axis = outcome(parse_sweep_spec, f"dropout={start!r}:{stop!r}:+{step!r}")
    if axis is None:  # more than 1000 values, or two that print alike at 12 digits
        return
    values = [float(v) for v in axis.values]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] <= stop
    assert math.isclose(values[0], start, rel_tol=1e-11, abs_tol=1e-300)
    assert values[-1] + step > stop - 1e-9 * max(abs(start), abs(stop), 1.0)


# ---- 2. --set overrides, through typed coercion and config validation -----------------------------

MODEL_SETS = [["vae"], ["gvae", "wgan"], ["gan", "deepsim", "ppca"]]


def keys_of(models: list[str]) -> list[str]:
    """The keys that ``--set`` and a sweep accept for ``models``: harness settings, each model's
    fields, bare and scoped."""
    fields = {(m, k) for m in models for k in get_model_class(m).config_class.field_names()}
    return sorted(set(TRAIN_KEYS) | {k for _, k in fields} | {f"{m}.{k}" for m, k in fields})


def plausible_overrides(models: list[str]):
    """``--set`` pairs on real keys of ``models`` with mostly well-formed values."""
    pairs = st.lists(st.tuples(st.sampled_from(keys_of(models)), plausible_value), max_size=3,
                     unique_by=lambda kv: kv[0])
    return pairs.map(lambda kvs: [f"{k}={v}" for k, v in kvs])


@FUZZ
@pytest.mark.parametrize("models", MODEL_SETS)
@given(pairs=st.lists(st.builds(lambda k, v: f"{k}={v}", keys, value_text) | st.text(max_size=12),
                      max_size=4))
@example(pairs=["lat\nent_dim=1"])
@example(pairs=["\x1e"])
def test_set_overrides_raise_only_usage_errors_and_accept_only_sane_values(models, pairs):
    check_set_path(models, pairs)


@FUZZ
@pytest.mark.parametrize("models", MODEL_SETS)
@given(data=st.data())
def test_set_overrides_on_real_keys_accept_only_sane_values(models, data):
    check_set_path(models, data.draw(plausible_overrides(models), label="pairs"))


def check_set_path(models: list[str], pairs: list[str]) -> None:
    """``--set`` from the command line to run specs: parsing, typing, validation."""
    overrides = outcome(parse_overrides, pairs)
    if overrides is None:
        return
    specs = outcome(build_specs, models, "mnist", "smoke", [0], overrides)
    if specs is not None:
        assert len(specs) == len(models)
        assert_sane_specs(specs)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)


@FUZZ
@given(st.sampled_from(MODELS),
       st.dictionaries(st.sampled_from(KEYS), json_values | plausible_value, max_size=3))
def test_a_config_from_json_raises_only_usage_errors(model, values):
    """``config.json`` is user-editable: ``from_dict`` sees any JSON value, not only strings."""
    config = outcome(get_model_class(model).config_class.from_dict, values)
    if config is not None and outcome(validated, config, (1, 28, 28)) is not None:
        assert_sane_config(model, config.to_dict())


def validated(config, image_shape):
    config.check(image_shape)
    return config


@pytest.mark.parametrize("models, pairs, message", [
    (["vae"], ["learning_rate=nan"], "learning_rate='nan' is not a finite number"),
    (["vae"], ["learning_rate=1e400"], "is not a finite number"),
    (["vae"], ["beta1=nan"], "is not a finite number"),
    (["gvae"], ["dropout=-inf"], "is not a finite number"),
    (["wgan"], ["clip_value=inf"], "is not a finite number"),  # inf > 0 passed WGAN's validate
    (["vae"], ["latent_dim=99999999999999999999"], "out of range"),
    (["vae"], ["steps=99999999999999999999"], "out of range"),
    (["vae"], ["latent_dim=1e400"], "not a valid int"),
    (["wgan"], ["gradient_penalty=maybe"], "not a valid bool"),
    (["vae"], ["grid_size=0"], "grid_size must be >= 1"),
])
def test_values_that_were_accepted_are_usage_errors(models, pairs, message):
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        build_specs(models, "mnist", "smoke", [0], parse_overrides(pairs))
    assert_one_line(error.value)


@pytest.mark.parametrize("function, text, message", [
    (parse_sweep_spec, "latent_dim=1e-300:1:x1e10", None),  # OverflowError in 1e10 ** 31
    (parse_sweep_spec, "latent_dim=1:1e400:x10", "1e400 is not a finite number"),
    (parse_sweep_spec, "latent_dim=1:\n2:3", "latent_dim=1:\\n2:3: a range is"),
    (parse_seeds, "0:99999999999999", "more than 1000 seeds"),  # a list of 10**14 seeds
    (parse_seeds, "99999999999999999999", "below 2**32"),  # beyond torch.manual_seed
])
def test_texts_that_crashed_or_hung(function, text, message):
    if message is None:
        assert function(text)
        return
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        function(text)
    assert_one_line(error.value)


@pytest.mark.parametrize("model, key, value", ONCE_ACCEPTED)
def test_values_once_accepted_are_rejected_at_planning(model, key, value):
    with pytest.raises(UsageError, match=f"{key} must be"):
        build_specs([model], "mnist", "smoke", [0], {key: value})


# ---- 3. a whole sweep plan -------------------------------------------------------------------------

models_lists = st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True)


@FUZZ
@given(models_lists, st.data())
def test_plan_sweep_raises_only_usage_errors(models, data):
    real_spec = st.builds(lambda k, vs: f"{k}={','.join(vs)}", st.sampled_from(keys_of(models)),
                          st.lists(st.one_of(plausible_value, small_range), min_size=1, max_size=3))
    any_spec = st.one_of(real_spec, real_spec, real_spec, plausible_spec, spec_text, grammar_text)
    specs = data.draw(st.lists(any_spec, min_size=1, max_size=3), label="specs")
    pairs = data.draw(plausible_overrides(models), label="pairs")
    axes = outcome(parse_sweep_specs, specs)
    if axes is None:
        return
    assume(math.prod(len(a.values) for a in axes) <= 64)  # each cell is validated: keep it quick
    overrides = parse_overrides(pairs)
    cells = outcome(plan_sweep, axes, models, "mnist", "smoke", [0], overrides)
    if cells is None:
        return
    assert_sane_specs([cell.spec for cell in cells])
    assert len({cell.spec.run_id for cell in cells}) == len(cells)
    for cell in cells:
        assert set(cell.values) == {axis.bare_key for axis in axes}


# ---- 4. seeds --------------------------------------------------------------------------------------

seed_text = st.one_of(
    st.text(), grammar_text,
    st.builds(lambda a, b: f"{a}:{b}", number_text, number_text),
    st.lists(number_text, min_size=1, max_size=5).map(",".join),
)


@FUZZ
@given(seed_text)
@example("1:\n2")
def test_parse_seeds_raises_only_usage_errors(text):
    seeds = outcome(parse_seeds, text)
    if seeds is not None:
        assert seeds and len(set(seeds)) == len(seeds)
        assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)


@FUZZ
@given(st.integers(0, 2**32 - 1001), st.integers(1, 1000), st.lists(st.integers(0, 2**32 - 1), min_size=1,
                                                                 max_size=6, unique=True))
def test_seed_ranges_and_lists_parse_to_their_integers(start, count, listed):
    assert parse_seeds(f"{start}:{start + count}") == list(range(start, start + count))
    assert parse_seeds(", ".join(map(str, listed))) == listed
