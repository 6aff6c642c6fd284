"""Bringing your own data: dtypes, from_arrays, npz: files and registered datasets."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from synthpart.data import (
  Dataset,
  canonical_name,
  catalog,
  dataset_names,
  from_arrays,
  get_spec,
  load_dataset,
  register_dataset,
  split_validation,
)
from synthpart.errors import DataError

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]


@pytest.fixture(autouse=True)
def no_registered(monkeypatch):
  """Every test starts and ends with no registered datasets."""
  monkeypatch.setattr(catalog, "_REGISTERED", {})


@contextlib.contextmanager
def one_line_error(pattern: str):
  """Expects a `DataError` whose message is one line and matches `pattern`."""
  with pytest.raises(DataError) as info:
    yield
  message = str(info.value)
  assert "\n" not in message, message
  assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def arrays(n=12, m=5, classes=3, shape=(4, 3, 1), dtype=np.uint8, seed=0):
  """x_train, y_train, x_test, y_test with every class present in both splits."""
  rng = np.random.default_rng(seed)
  if dtype == np.uint8:
    x_train = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, (m, *shape), dtype=np.uint8)
  else:
    x_train = rng.normal(size=(n, *shape)).astype(dtype)
    x_test = rng.normal(size=(m, *shape)).astype(dtype)
  return x_train, np.arange(n) % classes, x_test, np.arange(m) % classes


def toy(**change) -> Dataset:
  x_train, y_train, x_test, y_test = arrays()
  fields = dict(name="toy", num_classes=3, train_images=x_train,
                train_labels=y_train.astype(np.int32), test_images=x_test,
                test_labels=y_test.astype(np.int32), source="memory")
  return Dataset(**{**fields, **change})


# --- accepted inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 1), (2, 2, 3), (7,)], ids=["hwc1", "hwc3", "features"])
@pytest.mark.parametrize("dtype", [np.uint8, *FLOAT_DTYPES], ids=lambda d: np.dtype(d).name)
def test_every_image_dtype_loads(dtype, shape):
  x_train, y_train, x_test, y_test = arrays(shape=shape, dtype=dtype)
  ds = from_arrays("mine", x_train, y_train, x_test, y_test)
  stored = np.uint8 if dtype == np.uint8 else np.float32
  assert ds.train_images.dtype == stored and ds.test_images.dtype == stored
  assert ds.image_shape == shape and ds.num_features == int(np.prod(shape))
  np.testing.assert_array_equal(ds.train_images, x_train.astype(stored))
  np.testing.assert_array_equal(ds.test_images, x_test.astype(stored))
  assert ds.input_scale == (255.0 if dtype == np.uint8 else 1.0)


def test_bfloat16_images_from_jax_load_as_float32():
  x_train, y_train, x_test, y_test = arrays(dtype=np.float32)
  ds = from_arrays("mine", jnp.asarray(x_train, jnp.bfloat16), y_train,
                   jnp.asarray(x_test, jnp.bfloat16), y_test)
  assert ds.train_images.dtype == np.float32 and ds.input_scale == 1.0
  np.testing.assert_allclose(ds.train_images, x_train, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_label_dtype_loads(dtype):
  x_train, y_train, x_test, y_test = arrays()
  ds = from_arrays("mine", x_train, y_train.astype(dtype), x_test, y_test.astype(dtype))
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_labels, y_train)
  np.testing.assert_array_equal(ds.test_labels, y_test)
  # Dataset itself accepts them too.
  direct = toy(train_labels=y_train.astype(dtype), test_labels=y_test.astype(dtype))
  assert direct.train_labels.dtype == np.int32
  np.testing.assert_array_equal(direct.train_labels, y_train)


@settings(max_examples=60, deadline=None)
@given(data=st.data(),
       dtype=st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes()),
       num_classes=st.integers(1, 127))
def test_integer_labels_round_trip_to_int32(data, dtype, num_classes):
  labels = [data.draw(hnp.arrays(dtype, st.integers(1, 20),
                                 elements=st.integers(0, num_classes - 1))) for _ in range(2)]
  images = [np.zeros((len(y), 2), np.uint8) for y in labels]
  ds = from_arrays("mine", images[0], labels[0], images[1], labels[1], num_classes=num_classes)
  for got, want in ((ds.train_labels, labels[0]), (ds.test_labels, labels[1])):
    assert got.dtype == np.int32
    assert got.tolist() == [int(v) for v in want]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(FLOAT_DTYPES))
def test_finite_float_images_round_trip_to_float32(data, dtype):
  finite = st.floats(-1e4, 1e4, width=np.dtype(dtype).itemsize * 8)
  shape = st.tuples(st.integers(1, 6), st.integers(1, 5))
  x = data.draw(hnp.arrays(dtype, shape, elements=finite))
  y = np.zeros(len(x), np.int64)
  ds = from_arrays("mine", x, y, x, y, num_classes=2)
  assert ds.train_images.dtype == np.float32 and ds.input_scale == 1.0
  np.testing.assert_array_equal(ds.train_images, x.astype(np.float32))


def test_jax_arrays_and_lists_are_converted():
  x_train, y_train, x_test, y_test = arrays(dtype=np.float32, shape=(3,))
  ds = from_arrays("mine", jnp.asarray(x_train), jnp.asarray(y_train), x_test.tolist(),
                   y_test.tolist())
  assert isinstance(ds.train_images, np.ndarray) and isinstance(ds.test_labels, np.ndarray)
  np.testing.assert_array_equal(ds.test_images, x_test)
  np.testing.assert_array_equal(ds.test_labels, y_test)
  direct = toy(train_images=jnp.asarray(toy().train_images))
  assert isinstance(direct.train_images, np.ndarray) and direct.train_images.dtype == np.uint8


def test_from_arrays_infers_classes_and_adds_a_channel():
  x_train, y_train, x_test, y_test = arrays(shape=(4, 3, 1))
  y_test = np.full_like(y_test, 6)  # a class only the test split has
  ds = from_arrays("mine", x_train[..., 0], y_train, x_test[..., 0], y_test, source="here")
  assert ds.num_classes == 7 and ds.image_shape == (4, 3, 1)
  assert ds.name == "mine" and ds.source == "here"
  np.testing.assert_array_equal(ds.train_images, x_train)
  assert from_arrays("mine", x_train, y_train, x_test, y_test, num_classes=10).num_classes == 10


def test_from_arrays_leaves_the_callers_arrays_alone():
  x_train, y_train, x_test, y_test = arrays()
  ds = from_arrays("mine", x_train, y_train.astype(np.int32), x_test, y_test)
  assert np.shares_memory(ds.train_images, x_train)  # uint8 needs no copy
  assert np.shares_memory(ds.train_labels, y_train) or ds.train_labels.dtype == np.int32
  assert x_train.flags.writeable and y_train.flags.writeable
  for array in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
    assert not array.flags.writeable


@pytest.mark.parametrize("dtype", [np.uint8, np.float64], ids=["uint8", "float64"])
def test_flat_and_validation_split_keep_the_kind(dtype):
  ds = from_arrays("mine", *arrays(n=30, dtype=dtype))
  flat = ds.flat()
  assert flat.train_images.shape == (30, 12) and flat.train_images.dtype == ds.train_images.dtype
  assert flat.input_scale == ds.input_scale
  assert np.shares_memory(flat.train_images, ds.train_images)
  fit, val = split_validation(ds, 6, seed=0)
  assert fit.train_images.dtype == val.test_images.dtype == ds.train_images.dtype
  assert len(fit.train_labels) == 24 and len(val.test_labels) == 6


def test_built_in_datasets_are_uint8_with_scale_255(tmp_path, fakes):
  fake = fakes.make("mnist")
  fakes.write_idx_files(fake, tmp_path)
  ds = load_dataset("mnist", tmp_path)
  fakes.assert_loaded(ds, fake)
  assert ds.input_scale == 255.0


def test_dataset_keeps_arrays_that_need_no_conversion():
  ds = toy()
  again = dataclasses.replace(ds, name="again")
  assert again.train_images is ds.train_images and again.test_labels is ds.test_labels


# --- refused inputs ----------------------------------------------------------------------------


class Duck:
  """Looks like an array to code that only reads .dtype and .shape."""
  dtype = np.dtype(np.uint8)
  shape = (12, 4, 3, 1)

  def __len__(self):
    return 12


_X, _Y, _XT, _YT = arrays()


@pytest.mark.parametrize("change, pattern", [
  (dict(x_train=Duck()), r"^mine: x_train is a Duck, which has \.dtype/\.shape but no __array__"),
  (dict(y_test=Duck()), r"^mine: y_test is a Duck, which has \.dtype/\.shape"),
  (dict(x_train="pixels"), r"^mine: x_train must be an array \(numpy, jax or a list\), got str"),
  (dict(x_train=[[1, 2], [3]]), r"^mine: x_train is a list that is not an array"),
  (dict(x_train=_X.astype(np.int64)), r"^mine: x_train must be uint8 or float .* got int64"),
  (dict(x_train=_X.astype(bool)), r"^mine: x_train must be uint8 or float .* got bool"),
  (dict(x_test=_XT.astype(np.complex64)), r"^mine: x_test must be uint8 or float .* complex64"),
  (dict(x_train=_X.astype(object)), r"^mine: x_train must be uint8 or float .* got object"),
  (dict(x_train=_X[:, 0, 0, 0]), r"^mine: x_train must be \[N, H, W, C\] images or \[N, F\]"),
  (dict(x_train=_X[None]), r"^mine: x_train must be \[N, H, W, C\] .* got uint8 1x12x4x3x1"),
  (dict(x_train=_X[:0], y_train=_Y[:0]), r"^mine: x_train has 0 examples"),
  (dict(x_test=_XT[:0], y_test=_YT[:0]), r"^mine: x_test has 0 examples"),
  (dict(x_train=np.zeros((12, 0), np.uint8)), r"^mine: x_train has 0 features"),
  (dict(x_train=np.where(_X > 9, np.nan, 0.5)), r"^mine: x_train has \d+ non-finite values"),
  (dict(x_test=np.full(_XT.shape, np.inf, np.float16)), r"^mine: x_test has 60 non-finite"),
  (dict(x_test=np.full(_XT.shape, 1e300)), r"^mine: x_test has 60 non-finite .*float32's range"),
  (dict(x_test=_XT.astype(np.float32)),
   r"^mine: train images are uint8 but test images are float32"),
  (dict(x_test=_XT[:, :2]), r"^mine: train images are 4x3x1 but test images are 2x3x1"),
  (dict(y_train=_Y.astype(bool)),
   r"^mine: y_train must be integers \(int8\.\.int64, uint8\.\.uint64\) \[N\], got bool 12"),
  (dict(y_train=_Y.astype(np.float64)), r"^mine: y_train must be integers .* got float64 12"),
  (dict(y_test=_YT.astype(object)), r"^mine: y_test must be integers .* got object 5"),
  (dict(y_train=_Y[:, None]), r"^mine: y_train must be integers .* got int64 12x1"),
  (dict(y_train=_Y[:7]), r"^mine: x_train has 12 examples but y_train has 7"),
  (dict(y_train=_Y - 1), r"^mine: y_train span -1\.\.1, outside 0\.\.2147483646 \(int32\)"),
  (dict(y_train=_Y.astype(np.uint64) + 2**40), r"^mine: y_train span \d+\.\.\d+, outside "),
  (dict(y_test=_YT + 3, num_classes=3),
   r"^mine: y_test span 3\.\.5, outside 0\.\.2 \(num_classes=3\)"),
  (dict(num_classes=0), r"^mine: num_classes must be in 1\.\.2147483647, got 0: it must be at "
   r"least 1$"),
  (dict(num_classes=2**40), r"^mine: num_classes must be in 1\.\.2147483647, got 1099511627776: "
   r"it must be at most 2147483647 \(labels are int32\)$"),
  (dict(num_classes=np.int64(2**31)), r"^mine: num_classes must be in 1\.\.2147483647, got "
   r"2147483648: it must be at most"),
  (dict(num_classes=True), r"^mine: num_classes must be an integer in 1\.\.2147483647, got bool "
   r"True$"),
  (dict(num_classes=3.0), r"^mine: num_classes must be an integer .* got float 3\.0$"),
  (dict(name=""), r"^dataset name must be a non-empty string"),
])
def test_bad_arrays_give_one_line_errors(change, pattern):
  args = dict(name="mine", x_train=_X, y_train=_Y, x_test=_XT, y_test=_YT)
  args.update(change)
  with one_line_error(pattern):
    from_arrays(**args)


@pytest.mark.parametrize("change, pattern", [
  (dict(train_images=Duck()), r"^toy: train images is a Duck, which has \.dtype/\.shape"),
  (dict(train_images=_X[:0], train_labels=np.zeros(0, np.int32)),
   r"^toy: train images has 0 examples"),
  (dict(test_labels=np.zeros(0, np.int32)), r"^toy: test labels has 0 examples"),
  (dict(train_images=_X[..., 0]),
   r"^toy: train images must be \[N, H, W, C\] images or \[N, F\] .* got uint8 12x4x3"),
  (dict(test_labels=_YT.astype(np.float32)), r"^toy: test labels must be integers"),
  (dict(test_labels=_YT + 1), r"^toy: test labels span 1\.\.3, outside 0\.\.2 \(num_classes=3\)"),
  (dict(train_images=np.full(_X.shape, np.nan, np.float32)),
   r"^toy: train images has 144 non-finite values"),
])
def test_dataset_itself_refuses_bad_splits(change, pattern):
  with one_line_error(pattern):
    toy(**change)


# --- npz: files --------------------------------------------------------------------------------


def save(path, **arrays):
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize("image_dtype", [np.uint8, np.float64], ids=["uint8", "float64"])
@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8], ids=["int64", "uint8"])
def test_npz_round_trip(tmp_path, image_dtype, label_dtype):
  x_train, y_train, x_test, y_test = arrays(dtype=image_dtype)
  path = save(tmp_path / "mine.npz", x_train=x_train, y_train=y_train.astype(label_dtype),
              x_test=x_test, y_test=y_test.astype(label_dtype), notes=np.arange(3))
  ds = load_dataset(f"npz:{path}")
  assert ds.name == f"npz:{path}" and ds.source == str(path) and ds.num_classes == 3
  assert ds.input_scale == (255.0 if image_dtype == np.uint8 else 1.0)
  np.testing.assert_array_equal(ds.train_images, x_train.astype(ds.train_images.dtype))
  np.testing.assert_array_equal(ds.test_labels, y_test)
  assert ds.train_labels.dtype == np.int32
  for array in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
    assert not array.flags.writeable


def test_npz_num_classes_relative_path_and_compression(tmp_path, monkeypatch):
  x_train, y_train, x_test, y_test = arrays()
  np.savez_compressed(tmp_path / "c.npz", x_train=x_train, y_train=y_train, x_test=x_test,
                      y_test=y_test, num_classes=np.int64(10))
  monkeypatch.chdir(tmp_path)
  ds = load_dataset(" NPZ:c.npz ", data_dir=tmp_path / "ignored", download=True)
  assert ds.name == "npz:c.npz" and ds.num_classes == 10
  assert ds.source == str(tmp_path / "c.npz")
  np.testing.assert_array_equal(ds.train_images, x_train)


def test_npz_with_object_array_is_never_unpickled(tmp_path):
  x_train, y_train, x_test, y_test = arrays()
  path = save(tmp_path / "p.npz", x_train=x_train, y_train=np.array(list(y_train), object),
              x_test=x_test, y_test=y_test)
  with one_line_error(rf"^{re.escape(str(path))}: y_train holds pickled Python objects "
                      r"\(dtype object\), which are never loaded"):
    load_dataset(f"npz:{path}")


@pytest.mark.parametrize("keys, pattern", [
  (dict(y_test=None),
   r"bad\.npz: no y_test; a dataset needs the arrays x_train, y_train, x_test, y_test"),
  (dict(x_train=None, y_train=None), r"bad\.npz: no x_train, y_train; a dataset needs"),
  (dict(num_classes=np.array([3, 4])), r"bad\.npz: num_classes must be one integer, got int64 2"),
  (dict(num_classes=np.float32(3)),
   r"bad\.npz: num_classes must be one integer, got float32 scalar"),
  (dict(num_classes=np.int64(2)),
   r"^npz:.*: y_train span 0\.\.2, outside 0\.\.1 \(num_classes=2\)"),
  (dict(y_train=np.zeros(12, np.float32)), r"^npz:.*/bad\.npz: y_train must be integers"),
  (dict(x_test=np.zeros((5, 2), np.int32)), r"^npz:.*/bad\.npz: x_test must be uint8 or float"),
  (dict(num_classes=np.int64(2**40)), r"^npz:.*/bad\.npz: num_classes must be in 1\.\.2147483647, "
   r"got 1099511627776: it must be at most 2147483647 \(labels are int32\)$"),
])
def test_npz_bad_contents_name_the_file_and_key(tmp_path, keys, pattern):
  x_train, y_train, x_test, y_test = arrays()
  contents = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  contents.update(keys)
  path = save(tmp_path / "bad.npz", **{k: v for k, v in contents.items() if v is not None})
  with one_line_error(pattern):
    load_dataset(f"npz:{path}")


def test_npz_unreadable_files(tmp_path):
  missing = tmp_path / "missing.npz"
  with one_line_error(rf"^{re.escape(str(missing))}: no such file \(given as npz:"):
    load_dataset(f"npz:{missing}")
  with one_line_error(rf"^{re.escape(str(tmp_path))}: a directory, not an \.npz file"):
    load_dataset(f"npz:{tmp_path}")
  text = tmp_path / "text.npz"
  text.write_text("x_train,y_train\n")
  with one_line_error(r"text\.npz: not an \.npz archive \(no zip header\); write it with np"):
    load_dataset(f"npz:{text}")
  single = tmp_path / "single.npy"
  np.save(single, np.zeros(3))
  with one_line_error(r"single\.npy: not an \.npz archive"):
    load_dataset(f"npz:{single}")
  truncated = tmp_path / "truncated.npz"
  whole = save(tmp_path / "whole.npz", **dict(zip(("x_train", "y_train", "x_test", "y_test"),
                                                  arrays(), strict=True))).read_bytes()
  truncated.write_bytes(whole[:len(whole) // 2])
  with one_line_error(r"truncated\.npz: cannot read"):
    load_dataset(f"npz:{truncated}")
  with one_line_error(r"^dataset 'npz: ' names no file; write npz:PATH"):
    load_dataset("npz: ")


def test_npz_names_resolve_without_a_spec(tmp_path):
  assert canonical_name("npz:Data/Mine.npz") == "npz:Data/Mine.npz"  # the path keeps its case
  assert canonical_name("Npz: x.npz") == "npz:x.npz"
  assert not any(name.startswith("npz:") for name in dataset_names())
  with one_line_error(r"^npz:x\.npz: not a built-in dataset, so it has no published files"):
    get_spec("npz:x.npz")


def test_unknown_names_mention_npz():
  with one_line_error(r"^unknown dataset 'nope'; known: digits, .*; or npz:PATH"):
    load_dataset("nope")
  with one_line_error(r"^a dataset name must be a string, got int"):
    canonical_name(3)


# --- registered datasets -----------------------------------------------------------------------


def test_registered_arrays_round_trip():
  x_train, y_train, x_test, y_test = arrays(dtype=np.float32, shape=(6,))
  calls = []

  def load_mine():
    calls.append(1)
    return x_train, y_train, x_test, y_test

  assert register_dataset("My-Data", load_mine) == "my-data"
  assert dataset_names()[-1] == "my-data" and "mnist" in dataset_names()
  assert canonical_name(" MY-DATA ") == "my-data"
  ds = load_dataset("My-Data", data_dir="/nonexistent", download=True)
  assert ds.name == "my-data" and ds.num_classes == 3 and ds.input_scale == 1.0
  assert ds.source.startswith("registered loader ") and "load_mine" in ds.source
  np.testing.assert_array_equal(ds.train_images, x_train)
  load_dataset("my-data")
  assert len(calls) == 2  # called on every load
  with one_line_error(r"^my-data: not a built-in dataset"):
    get_spec("my-data")


def test_registered_dict_and_dataset_results():
  x_train, y_train, x_test, y_test = arrays()
  register_dataset("as-dict", lambda: dict(x_train=x_train, y_train=y_train, x_test=x_test,
                                           y_test=y_test, num_classes=5))
  assert load_dataset("as-dict").num_classes == 5
  register_dataset("as-dataset", lambda: from_arrays("other", x_train, y_train, x_test, y_test))
  ds = load_dataset("as-dataset")
  assert ds.name == "as-dataset" and ds.source == "arrays"
  register_dataset("as-dataset", lambda: from_arrays("as-dataset", x_train[:3], y_train[:3],
                                                     x_test, y_test))
  assert len(load_dataset("as-dataset").train_labels) == 3  # registering again replaces


@pytest.mark.parametrize("name, loader, pattern", [
  ("mnist", lambda: None, r"^cannot register dataset 'mnist': mnist is built in"),
  ("Fashion_MNIST", lambda: None,
   r"^cannot register dataset 'Fashion_MNIST': fashion-mnist is built in"),
  ("emnist/letters", lambda: None,
   r"^cannot register dataset 'emnist/letters': a name is letters, digits"),
  ("npz:x.npz", lambda: None, r"^cannot register dataset 'npz:x\.npz': a name is"),
  ("", lambda: None, r"^cannot register dataset '': a name is"),
  (None, lambda: None, r"^cannot register dataset None: a name is"),
  ("mine", "not callable",
   r"^cannot register dataset 'mine': the loader must be a function of no arguments, got str"),
])
def test_bad_registrations_are_refused(name, loader, pattern):
  with one_line_error(pattern):
    register_dataset(name, loader)
  assert dataset_names() == list(catalog.REGISTRY)


@pytest.mark.parametrize("result, pattern", [
  (42, r"^mine \(registered loader .*\) returned a value of type int; it must return a Dataset"),
  ((1, 2, 3), r"^mine \(registered loader .*\) returned a value of type tuple"),
  (dict(x_train=_X), r"^mine \(registered loader .*\): no y_train, x_test, y_test"),
  ((_X, _Y.astype(float), _XT, _YT), r"^mine: y_train must be integers"),
])
def test_bad_loader_results_give_one_line_errors(result, pattern):
  register_dataset("mine", lambda: result)
  with one_line_error(pattern):
    load_dataset("mine")
