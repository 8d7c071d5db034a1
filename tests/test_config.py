import dataclasses

import pytest

from rlhf_jax import config as config_lib
from rlhf_jax.models.transformer import ModelConfig


@dataclasses.dataclass(frozen=True)
class Inner:
  rate: float = 0.1
  name: str = "a"
  flag: bool = False
  sizes: tuple[int, ...] = (1, 2)
  maybe: int | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
  steps: int = 10
  inner: Inner = Inner()
  model: ModelConfig = ModelConfig()


def test_overrides_parse_types_and_nest():
  c = config_lib.apply_overrides(Outer(), ["steps=20", "inner.rate=1e-3", "inner.flag=true",
                                           "inner.sizes=3,4,5", "inner.maybe=7", "model.dtype=bfloat16"])
  assert c.steps == 20 and c.inner.rate == 1e-3 and c.inner.flag is True
  assert c.inner.sizes == (3, 4, 5) and c.inner.maybe == 7 and c.model.dtype == "bfloat16"
  assert config_lib.apply_overrides(c, ["inner.maybe=none"]).inner.maybe is None


def test_unknown_key_suggests_nearest():
  with pytest.raises(config_lib.ConfigError, match=r"inner\.rat.*did you mean 'inner\.rate'"):
    config_lib.apply_overrides(Outer(), ["inner.rat=1"])
  with pytest.raises(config_lib.ConfigError, match=r"did you mean 'model\.n_layers'"):
    config_lib.apply_overrides(Outer(), ["model.nlayers=2"])


def test_wrong_type_names_key():
  with pytest.raises(config_lib.ConfigError, match=r"steps: expected an int, got 'ten'"):
    config_lib.apply_overrides(Outer(), ["steps=ten"])
  with pytest.raises(config_lib.ConfigError, match=r"model\.dtype: expected one of"):
    config_lib.apply_overrides(Outer(), ["model.dtype=float16"])
  with pytest.raises(config_lib.ConfigError, match="not of the form key=value"):
    config_lib.apply_overrides(Outer(), ["steps"])


def test_validation_runs_on_override():
  with pytest.raises(ValueError, match="d_model=30 must be divisible by model.n_heads=4"):
    config_lib.apply_overrides(Outer(), ["model.d_model=30"])


def test_save_and_reload_round_trip(tmp_path):
  c = config_lib.apply_overrides(Outer(), ["inner.sizes=9", "model.n_layers=3"])
  config_lib.save(c, tmp_path / "config.json")
  import json
  assert config_lib.from_dict(Outer, json.loads((tmp_path / "config.json").read_text())) == c


def test_differences_name_changed_keys():
  a = config_lib.to_dict(Outer())
  b = config_lib.to_dict(config_lib.apply_overrides(Outer(), ["steps=11", "inner.sizes=5"]))
  assert config_lib.differences(a, a) == []
  assert config_lib.differences(a, b) == ["inner.sizes: (1, 2) -> (5,)", "steps: 10 -> 11"]


def test_nan_is_never_a_config_value_and_a_learning_rate_must_be_finite():
  for text in ("nan", "NaN"):
    with pytest.raises(config_lib.ConfigError, match=r"inner.rate: expected a number, got"):
      config_lib.apply_overrides(Outer(), [f"inner.rate={text}"])
  assert config_lib.apply_overrides(Outer(), ["inner.rate=inf"]).inner.rate == float("inf")  # e.g. a noiseless beta
  from rlhf_jax.steps import common
  for lr in (float("inf"), 0.0):
    with pytest.raises(ValueError, match="optim.learning_rate must be positive and finite"):
      common.OptimConfig(learning_rate=lr)


def test_overrides_between_two_configs_read_back_to_the_second():
  edited = dataclasses.replace(Outer(), steps=3, inner=Inner(rate=1 / 3, name="b c", flag=True, sizes=(4,), maybe=5))
  given = config_lib.overrides(Outer(), edited)
  assert given == ["inner.flag=true", "inner.maybe=5", "inner.name=b c", "inner.rate=0.3333333333333333",
                   "inner.sizes=4", "steps=3"]
  assert config_lib.apply_overrides(Outer(), given) == edited
  assert config_lib.overrides(edited, edited) == []
  assert config_lib.apply_overrides(edited, config_lib.overrides(edited, Outer())) == Outer()  # None back too
