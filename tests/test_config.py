import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthpart import config as config_lib
from synthpart.errors import ConfigError


def test_defaults_mirror_the_paper():
  c = config_lib.load()
  assert c.model.num_layers == 6 and c.model.cuts == (3,)
  assert c.model.hidden == (512,) * 5 and c.model.activation == "relu"
  assert c.sil.kind == "uniform"


def test_toml_then_overrides(tmp_path):
  path = tmp_path / "run.toml"
  path.write_text('seed = 3\n[model]\ncuts = [2, 4]\n[train]\nepochs = 7\n'
                  '[[segments]]\nlearning_rate = 0.01\n')
  c = config_lib.load(path, {"segments.2.epochs": "4", "sil.scale": "2.5"})
  assert c.seed == 3 and c.model.cuts == (2, 4) and c.sil.scale == 2.5
  assert c.segment_train(0).learning_rate == 0.01 and c.segment_train(0).epochs == 7
  assert c.segment_train(1) == c.train
  assert c.segment_train(2).epochs == 4


def test_comma_lists_from_flags():
  c = config_lib.load(overrides={"model.hidden": "64,32", "model.cuts": "1"})
  assert c.model.hidden == (64, 32) and c.model.cuts == (1,)


@pytest.mark.parametrize("key,value,words", [
    ("model.cuts", [0], "out of range"),
    ("model.cuts", [6], "out of range"),
    ("model.cuts", [3, 2], "strictly increasing"),
    ("model.cuts", [2, 2], "strictly increasing"),
    ("sil.scale", 0, "kappa"),
    ("sil.scale", -1, "kappa"),
    ("sil.kind", "laplace", "sil.kind"),
    ("train.optimizer", "adagrad2", "train.optimizer"),
    ("train.batch_size", 0, "batch_size"),
    ("train.learning_rate", "fast", "number"),
    ("model.hidden", [0, 4], "positive"),
    ("schedule", "async", "schedule"),
    ("model.width", 3, "unknown setting model.width"),
    ("bogus", 1, "unknown setting bogus"),
    ("seed", -1, "seed must be an integer in 0"),
    ("seed", 2**63, "seed must be an integer in 0"),
    ("train.epochs", 1e23, "train.epochs must be an integer"),
    ("train.epochs", 10**6 + 1, "train.epochs must be an integer in 1..1000000"),
    ("recovery.epochs", -1, "recovery.epochs must be an integer in 0..1000000"),
    ("train.chance_epochs", -1, "train.chance_epochs must be an integer in 0..1000000"),
    ("sil.scale", 1e308, "kappa"),
    ("sil.scale", float("nan"), "kappa"),
    ("model.hidden", [2**40], "at most"),
    ("train.weight_decay", float("nan"), "weight_decay"),
    ("train.momentum", float("inf"), "momentum"),
    ("train.momentum", -5, "train.momentum must be in"),
    ("train.momentum", 1.5, "train.momentum must be in"),
    # zero in float32: the run would train nothing while recording the value
    ("train.learning_rate", 1e-300, "learning_rate must be a positive number float32 can hold"),
    ("recovery.learning_rate", 1e39, "float32 can hold"),
    ("train.clip_norm", 1e-300, "clip_norm must be 0"),
    ("train.loss_scale", 1e-300, "loss_scale must be a positive number float32 can hold"),
])
def test_bad_settings_name_the_culprit(key, value, words):
  with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
    config_lib.load(overrides={key: value})


def test_limits_are_inclusive():
  c = config_lib.load(overrides={"seed": 2**63 - 1, "train.epochs": 10**6, "sil.scale": 1e6,
                                 "train.chance_epochs": 0})
  assert c.seed == 2**63 - 1 and c.train.epochs == 10**6 and c.train.chance_epochs == 0


def test_a_byte_order_mark_is_accepted(tmp_path):
  path = tmp_path / "bom.toml"
  path.write_bytes("\ufeffseed = 4\n[train]\nepochs = 2\n".encode())
  c = config_lib.load(path)
  assert c.seed == 4 and c.train.epochs == 2


def test_batch_larger_than_data():
  c = config_lib.load(overrides={"train.batch_size": 500})
  with pytest.raises(ConfigError, match="larger than the 100 training examples"):
    config_lib.validate_for_data(c, 100)


def test_bad_toml_is_one_line(tmp_path):
  path = tmp_path / "bad.toml"
  path.write_text("[model\n")
  with pytest.raises(ConfigError, match="not valid TOML"):
    config_lib.load(path)
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load(tmp_path / "missing.toml")


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10)
_keys = st.sampled_from(["seed", "schedule", "data", "model", "sil", "train", "segments",
                         "recovery", "checkpoint", "model.cuts", "x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_any_document_is_a_config_or_a_config_error(document):
  try:
    config = config_lib.from_dict(document)
  except ConfigError as e:
    assert "\n" not in str(e)
  else:
    config_lib.validate(config)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_file_is_a_config_or_a_config_error(tmp_path_factory, raw):
  path = tmp_path_factory.mktemp("fuzz") / "c.toml"
  path.write_bytes(raw)
  try:
    config_lib.load(path)
  except ConfigError:
    pass


def test_the_pmap_backend_refuses_what_needs_chunks():
  group = {"placement.backend": "pmap", "placement.devices_per_segment": 2}
  for extra, culprit in [({"schedule": "pipelined"}, "pipelined"),
                         ({"eval.every_steps": 10}, "eval.every_steps"),
                         ({"train.steps": 10}, r"steps must be 0"),
                         ({"train.scan": False}, r"scan true")]:
    with pytest.raises(ConfigError, match=culprit):
      config_lib.load(overrides={**group, **extra})
  config_lib.load(overrides={"placement.backend": "pmap", "schedule": "pipelined"})  # no group


@pytest.mark.parametrize("argv, words", [
    (["--set", "segments.0=5"], "cannot set segments.0: segments is a list, not a table"),
    (["--set", "model.hidden.0=5"], "cannot set model.hidden.0: model.hidden is '32,32', not a "
     "table; set model.hidden itself"),
    (["CONFIG", "--set", "train.epochs.x=1"], "cannot set train.epochs.x: train.epochs is 1, "
     "not a table"),
    (["--set", "train.epochs.x.y=1"], "cannot set train.epochs.x.y: train.epochs is 1"),
    (["--set", "model.3.x=1"], "cannot set model.3.x: model is a table, not a list"),
])
def test_a_dotted_setting_through_a_list_or_a_number_is_one_line(tmp_path, capsys, argv, words):
  from synthpart.cli import main
  config = tmp_path / "c.toml"
  config.write_text("[train]\nepochs = 1\n")
  argv = [str(config) if a == "CONFIG" else a for a in argv]
  tiny = ["--dataset", "digits", "--hidden", "32,32", "--cuts", "1", "--epochs", "1",
          "--recovery-epochs", "0", "-q", "--out", str(tmp_path / "run")]
  assert main(["train", *argv, *tiny]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and words in err
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, words", [
    ({"model.hidden.0": 5}, "model.hidden is a list, not a table; give model.hidden whole"),
    ({"model.hidden": [8], "model.hidden.x": 1}, "model.hidden is a list, not a table"),
    ({"segments.0": 5}, "set a key of one segment's table (e.g. segments.0.epochs=3)"),
    ({"train.epochs": 1, "train.epochs.x": 1}, "train.epochs is 1, not a table"),
])
def test_overrides_into_a_list_or_a_number_name_the_part(overrides, words):
  with pytest.raises(ConfigError, match=r"^cannot set ") as info:
    config_lib.load(overrides=overrides)
  assert words in str(info.value) and "\n" not in str(info.value)


def test_a_config_file_that_is_a_directory_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match=rf"^config file {tmp_path} is a directory; give a file$"):
    config_lib.load(tmp_path)
