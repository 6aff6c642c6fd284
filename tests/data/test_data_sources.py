"""Finding and reading datasets in every supported layout, and rejecting bad input."""

import gzip
import os
import zipfile

import numpy as np
import pytest

from synthpart import config as config_lib
from synthpart import prepare
from synthpart.data import idx, load_dataset, sources
from synthpart.data.catalog import get_spec, idx_filenames
from synthpart.errors import DataError, ResourceError


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "emnist-balanced", "emnist-letters"])
def test_local_idx_dir(tmp_path, fakes, name, gz):
  fake = fakes.make(name)
  directory = fakes.write_idx_files(fake, tmp_path / "mine", gz=gz)
  ds = load_dataset(name, directory)
  fakes.assert_loaded(ds, fake)
  assert ds.source == str(directory)
  assert ds.image_shape == (28, 28, 1) and ds.num_features == 784


def test_data_dir_subdirectory_named_after_the_dataset(tmp_path, fakes):
  fake = fakes.make("fashion-mnist")
  fakes.write_idx_files(fake, tmp_path / "datasets" / "fashion-mnist")
  fakes.assert_loaded(load_dataset("fashion_mnist", tmp_path / "datasets"), fake)


def test_uncompressed_file_is_preferred_when_both_exist(tmp_path, fakes):
  fake = fakes.make("mnist")
  fakes.write_idx_files(fake, tmp_path / "d", gz=True)
  fakes.write_idx_files(fake, tmp_path / "d", gz=False)
  location = sources.search(fake.spec, tmp_path / "d").found
  assert all(not p.name.endswith(".gz") for p in location.files.values())


def test_emnist_orientation_marked_pixel_lands_upright(tmp_path):
  """NIST stores each image transposed: a pixel at (row 2, col 5) is stored at (5, 2)."""
  upright = np.zeros((1, 28, 28), np.uint8)
  upright[0, 2, 5] = 255
  stored = upright.transpose(0, 2, 1).copy()
  assert stored[0, 5, 2] == 255 and stored[0, 2, 5] == 0
  names = idx_filenames(get_spec("emnist-digits"))
  for split in ("train", "test"):
    idx.write_idx(tmp_path / (names[f"{split}_images"] + ".gz"), stored)
    idx.write_idx(tmp_path / (names[f"{split}_labels"] + ".gz"), np.array([3], np.uint8))
  ds = load_dataset("emnist-digits", tmp_path)
  assert ds.train_images.shape == (1, 28, 28, 1)
  assert ds.train_images[0, 2, 5, 0] == 255
  assert ds.train_images.sum() == 255


def test_mnist_is_not_transposed(tmp_path):
  upright = np.zeros((1, 28, 28), np.uint8)
  upright[0, 2, 5] = 255
  for stem in ("train", "t10k"):
    idx.write_idx(tmp_path / f"{stem}-images-idx3-ubyte", upright)
    idx.write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.array([3], np.uint8))
  assert load_dataset("mnist", tmp_path).train_images[0, 2, 5, 0] == 255


def test_emnist_letters_labels_map_from_1_to_26(tmp_path, fakes):
  fake = fakes.make("emnist-letters", n_train=26)
  fakes.write_idx_files(fake, tmp_path)
  assert fakes.stored_idx(fake)["train_labels"].min() == 1
  ds = load_dataset("emnist/letters", tmp_path)
  assert ds.train_labels.min() == 0 and ds.train_labels.max() == 25 and ds.num_classes == 26


def test_emnist_zip_read_in_place(tmp_path, fakes):
  letters, balanced = fakes.make("emnist-letters"), fakes.make("emnist-balanced")
  archive = fakes.write_emnist_zip([letters, balanced], tmp_path / "gzip.zip")
  before = sorted(os.listdir(tmp_path))
  fakes.assert_loaded(load_dataset("emnist-letters", tmp_path), letters)
  ds = load_dataset("emnist/balanced", tmp_path)
  fakes.assert_loaded(ds, balanced)
  assert ds.source == str(archive)
  assert sorted(os.listdir(tmp_path)) == before  # nothing extracted


def test_emnist_zip_extracted_gzip_dir(tmp_path, fakes):
  fake = fakes.make("emnist-mnist")
  fakes.write_idx_files(fake, tmp_path / "gzip")
  fakes.assert_loaded(load_dataset("emnist-mnist", tmp_path), fake)


def test_emnist_zip_shared_in_cache(isolated, fakes):
  fake = fakes.make("emnist-byclass")
  fakes.write_emnist_zip([fake], isolated / "cache" / "emnist" / "gzip.zip")
  fakes.assert_loaded(load_dataset("emnist-byclass"), fake)


def test_zip_without_expected_members(tmp_path, fakes):
  fake = fakes.make("emnist-letters")
  fakes.write_emnist_zip([fake], tmp_path / "gzip.zip",
                         skip="gzip/emnist-letters-test-labels-idx1-ubyte.gz")
  with pytest.raises(DataError, match=r"gzip\.zip: no member "
                     r"gzip/emnist-letters-test-labels-idx1-ubyte\.gz"):
    load_dataset("emnist-letters", tmp_path)
  with pytest.raises(DataError, match="no member gzip/emnist-digits-train-images"):
    load_dataset("emnist-digits", tmp_path)


def test_corrupt_zip(tmp_path, fakes):
  archive = fakes.write_emnist_zip([fakes.make("emnist-letters")], tmp_path / "gzip.zip")
  archive.write_bytes(archive.read_bytes()[:200])
  with pytest.raises(DataError, match=r"gzip\.zip: corrupt zip archive"):
    load_dataset("emnist-letters", tmp_path)


def test_corrupt_member_inside_zip(tmp_path, fakes):
  fake = fakes.make("emnist-letters")
  with zipfile.ZipFile(tmp_path / "gzip.zip", "w") as archive:
    for role, array in fakes.stored_idx(fake).items():
      data = gzip.compress(idx.idx_bytes(array))
      if role == "train_images":
        data = data[: len(data) // 2]
      archive.writestr(f"gzip/{idx_filenames(fake.spec)[role]}.gz", data)
  with pytest.raises(DataError, match=r"gzip/emnist-letters-train-images-idx3-ubyte\.gz: "
                     "truncated gzip"):
    load_dataset("emnist-letters", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_archive_read_in_place(tmp_path, fakes, name):
  fake = fakes.make(name, n_train=15)
  archive_name = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
  archive = fakes.write_tar_gz(fakes.cifar_files(fake), tmp_path / archive_name[name])
  ds = load_dataset(name, tmp_path)
  fakes.assert_loaded(ds, fake)
  assert ds.image_shape == (32, 32, 3) and ds.source == str(archive)
  assert sorted(os.listdir(tmp_path)) == [archive.name]


def test_cifar_channel_order(tmp_path, fakes):
  """A CHW record with only the green plane set loads as HWC with only channel 1 set."""
  fake = fakes.make("cifar10", n_train=5, n_test=1)
  images = np.zeros((5, 32, 32, 3), np.uint8)
  images[:, 3, 7, 1] = 200
  fake.train = (images, fake.train[1])
  fakes.write_tar_gz(fakes.cifar_files(fake), tmp_path / "cifar-10-binary.tar.gz")
  ds = load_dataset("cifar10", tmp_path)
  assert ds.train_images[:, 3, 7, 1].tolist() == [200] * 5 and ds.train_images.sum() == 1000


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_extracted_batches(tmp_path, fakes, name):
  fake = fakes.make(name, n_train=10)
  for member, data in fakes.cifar_files(fake).items():
    (tmp_path / member).parent.mkdir(exist_ok=True)
    (tmp_path / member).write_bytes(data)
  fakes.assert_loaded(load_dataset(name, tmp_path), fake)


def test_cifar_bad_record_size_and_missing_member(tmp_path, fakes):
  files = fakes.cifar_files(fakes.make("cifar10", n_train=10))
  files["cifar-10-batches-bin/test_batch.bin"] += b"\x00"
  fakes.write_tar_gz(files, tmp_path / "a" / "cifar-10-binary.tar.gz")
  with pytest.raises(DataError, match=r"test_batch\.bin: 21512 bytes is not a whole number of "
                     "3073-byte records"):
    load_dataset("cifar10", tmp_path / "a")
  del files["cifar-10-batches-bin/data_batch_3.bin"]
  fakes.write_tar_gz(files, tmp_path / "b" / "cifar-10-binary.tar.gz")
  with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: no member data_batch_3\.bin"):
    load_dataset("cifar10", tmp_path / "b")


def test_cifar_corrupt_archive(tmp_path, fakes):
  archive = fakes.write_tar_gz(fakes.cifar_files(fakes.make("cifar100")),
                               tmp_path / "cifar-100-binary.tar.gz")
  archive.write_bytes(archive.read_bytes()[:300])
  with pytest.raises(DataError, match=r"cifar-100-binary\.tar\.gz: corrupt tar archive"):
    load_dataset("cifar100", tmp_path)


def test_cifar100_fine_labels_out_of_range(tmp_path, fakes):
  files = fakes.cifar_files(fakes.make("cifar100"))
  data = bytearray(files["cifar-100-binary/train.bin"])
  data[1] = 100  # the first record's fine label
  files["cifar-100-binary/train.bin"] = bytes(data)
  fakes.write_tar_gz(files, tmp_path / "cifar-100-binary.tar.gz")
  with pytest.raises(DataError, match=r"train\.bin: labels span 1\.\.100, but cifar100 labels "
                     r"must lie in 0\.\.99"):
    load_dataset("cifar100", tmp_path)


def test_cache_dir(isolated, fakes):
  fake = fakes.make("mnist")
  fakes.write_idx_files(fake, isolated / "cache" / "mnist")
  ds = load_dataset("mnist")
  fakes.assert_loaded(ds, fake)
  assert ds.source == str(isolated / "cache" / "mnist")


def test_cache_dir_defaults_to_xdg(monkeypatch, tmp_path):
  monkeypatch.delenv("SYNTHPART_DATA")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert sources.cache_root() == tmp_path / "xdg" / "synthpart"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert sources.cache_root() == tmp_path / "home" / ".cache" / "synthpart"


def test_system_dir_and_order(isolated, fakes):
  system, cached = fakes.make("fashion-mnist", 5, 3), fakes.make("fashion-mnist", 6, 2)
  fakes.write_idx_files(system, isolated / "system" / "fashion-mnist")
  fakes.assert_loaded(load_dataset("fashion-mnist"), system)
  # The cache comes before the system directory.
  fakes.write_idx_files(cached, isolated / "cache" / "fashion-mnist")
  fakes.assert_loaded(load_dataset("fashion-mnist"), cached)
  # data_dir comes first of all, and is then the only place searched.
  given = fakes.make("fashion-mnist", 4, 4)
  fakes.assert_loaded(load_dataset("fashion-mnist", fakes.write_idx_files(
      given, isolated / "given")), given)
  (isolated / "empty").mkdir()
  with pytest.raises(DataError,
                     match=r"fashion-mnist: not found in .*/empty, .*/empty/fashion-mnist"):
    load_dataset("fashion-mnist", isolated / "empty")


def test_not_found_says_where_to_put_files(isolated):
  with pytest.raises(DataError) as info:
    load_dataset("mnist")
  message = str(info.value)
  assert "\n" not in message
  assert str(isolated / "cache" / "mnist") in message
  assert str(isolated / "system" / "mnist") in message
  assert "train-images-idx3-ubyte.gz" in message and "download" in message


def test_missing_data_dir(tmp_path):
  with pytest.raises(DataError, match=r"nowhere: no such directory"):
    load_dataset("mnist", tmp_path / "nowhere")


def test_data_dir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_bytes(b"")
  with pytest.raises(DataError, match=r"/f: no such directory"):
    load_dataset("mnist", tmp_path / "f")


def test_unreadable_directory(tmp_path, monkeypatch):
  real = os.listdir

  def listdir(path):
    if os.fspath(path) == os.fspath(tmp_path / "locked"):
      raise PermissionError(13, "Permission denied")
    return real(path)

  (tmp_path / "locked").mkdir()
  monkeypatch.setattr(os, "listdir", listdir)
  with pytest.raises(DataError, match=r"locked: cannot read directory \(Permission denied\)"):
    load_dataset("mnist", tmp_path / "locked")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory_for_real(tmp_path):
  (tmp_path / "locked").mkdir(mode=0)
  with pytest.raises(DataError, match="cannot read directory"):
    load_dataset("mnist", tmp_path / "locked")


def test_incomplete_copy_names_missing_files(isolated, fakes):
  directory = fakes.write_idx_files(fakes.make("mnist"), isolated / "cache" / "mnist")
  (directory / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError, match=r"cache/mnist: incomplete copy of mnist \(missing "
                     r"t10k-labels-idx1-ubyte\[\.gz\]\)"):
    load_dataset("mnist")


def test_counts_differ(tmp_path, fakes):
  fake = fakes.make("mnist")
  fakes.write_idx_files(fake, tmp_path)
  idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
  with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 11 labels but "
                     r".*train-images-idx3-ubyte\.gz holds 12 images"):
    load_dataset("mnist", tmp_path)


def test_labels_out_of_range(tmp_path, fakes):
  fake = fakes.make("emnist-letters")
  fakes.write_idx_files(fake, tmp_path)
  # Letters are stored 1..26: a 0 is out of range.
  idx.write_idx(tmp_path / "emnist-letters-test-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
  with pytest.raises(DataError, match=r"emnist-letters-test-labels-idx1-ubyte\.gz: labels span "
                     r"0\.\.0, but emnist-letters labels must lie in 1\.\.26"):
    load_dataset("emnist-letters", tmp_path)


def test_wrong_magic_and_wrong_image_size(tmp_path, fakes):
  fake = fakes.make("mnist")
  fakes.write_idx_files(fake, tmp_path)
  bad_magic = gzip.compress(b"\x00\x00\x07\x03" + bytes(12))
  (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bad_magic)
  with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: not an IDX file"):
    load_dataset("mnist", tmp_path)
  idx.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((7, 27, 28), np.uint8))
  with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: expected 28x28 images"):
    load_dataset("mnist", tmp_path)
  # Labels where images belong.
  idx.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(7, np.uint8))
  with pytest.raises(DataError, match=r"expected uint8 images \[N, 28, 28\]"):
    load_dataset("mnist", tmp_path)


def test_truncated_gzip_in_dir(tmp_path, fakes):
  fakes.write_idx_files(fakes.make("mnist"), tmp_path)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-30])
  with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated gzip data"):
    load_dataset("mnist", tmp_path)


def test_arrays_are_read_only(tmp_path, fakes):
  fakes.write_idx_files(fakes.make("mnist"), tmp_path)
  ds = load_dataset("mnist", tmp_path)
  for array in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
    assert not array.flags.writeable and array.flags.c_contiguous


def test_tfds_dir_without_array_record_is_reported(isolated):
  version = isolated / "tfds" / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text("{}")
  (version / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
  with pytest.raises(DataError, match="mnist:3.0.1 has no array_record files"):
    load_dataset("mnist")


def test_digits_default_is_offline():
  pytest.importorskip("sklearn")
  ds = load_dataset("digits")
  assert ds.train_images.shape == (1437, 8, 8, 1) and ds.test_images.shape == (360, 8, 8, 1)
  assert ds.train_images.dtype == np.uint8 and ds.train_images.max() == 255
  assert sorted(set(ds.train_labels.tolist())) == list(range(10))
  again = load_dataset("digits", "/ignored/for/digits")
  np.testing.assert_array_equal(again.test_labels, ds.test_labels)


def _failing_import(monkeypatch, prefix: str, error: BaseException) -> None:
  """Makes every import of `prefix` (and its submodules) raise `error`, as a failing import
  would."""
  import builtins
  real_import = builtins.__import__

  def fail(name, *args, **kwargs):
    if name == prefix or name.startswith(prefix + "."):
      raise error
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fail)


def test_digits_without_sklearn(monkeypatch):
  _failing_import(monkeypatch, "sklearn",
                  ModuleNotFoundError("No module named 'sklearn'", name="sklearn"))
  with pytest.raises(DataError, match=r"^digits needs scikit-learn, which bundles it: pip install"):
    load_dataset("digits")


@pytest.mark.parametrize("error, kind, pattern", [
  # Out of address space (ulimit -v) while the loader maps scipy's libraries.
  (ImportError("/x/scipy/sparse/_sparsetools.so: failed to map segment from shared object"),
   ResourceError, r"^digits: importing scikit-learn ran out of memory \(ImportError: /x/scipy/"
   r"sparse/_sparsetools\.so: failed to map segment from shared object\); raise this process's "
   r"memory limit \(ulimit -v\)"),
  (MemoryError(), ResourceError, r"^digits: importing scikit-learn ran out of memory "
   r"\(MemoryError\); raise"),
  # Installed, but a dependency is missing: not "pip install synthpart[demo]".
  (ModuleNotFoundError("No module named 'scipy'", name="scipy"), DataError,
   r"^digits: scikit-learn is installed but failed to import \(ModuleNotFoundError: No module "
   r"named 'scipy'\); repair it"),
  (OSError("libgomp.so.1: cannot open shared object file"), DataError,
   r"^digits: scikit-learn is installed but failed to import \(OSError: libgomp"),
])
def test_digits_import_failures_name_the_real_cause(monkeypatch, error, kind, pattern):
  _failing_import(monkeypatch, "sklearn", error)
  with pytest.raises(kind, match=pattern) as info:
    load_dataset("digits")
  assert "pip install 'synthpart" not in str(info.value) and "\n" not in str(info.value)


def test_running_out_of_memory_reading_data_blames_the_data(monkeypatch):
  """Not "out of memory: the network ... try smaller model.hidden", as the command said."""
  def no_memory(*args, **kwargs):
    raise MemoryError

  monkeypatch.setattr(prepare, "load_dataset", no_memory)
  with pytest.raises(ResourceError, match=r"^out of memory reading dataset npz:big\.npz: its "
                     r"arrays do not fit in this process's memory"):
    prepare.read_dataset(config_lib.DataConfig(name="npz:big.npz"))


def test_digits_out_of_memory_loading_is_a_resource_error(monkeypatch):
  sklearn_datasets = pytest.importorskip("sklearn.datasets")

  def no_memory(*args, **kwargs):
    raise MemoryError

  monkeypatch.setattr(sklearn_datasets, "load_digits", no_memory)
  with pytest.raises(ResourceError, match=r"^digits: out of memory loading scikit-learn's bundled "
                     "copy"):
    load_dataset("digits")


def test_real_fashion_mnist(monkeypatch):
  directory = "/usr/share/datasets/fashion-mnist"
  if not os.path.isdir(directory):
    pytest.skip(f"{directory} is absent (Debian package dataset-fashion-mnist)")
  monkeypatch.setattr(sources, "SYSTEM_ROOT", sources.Path("/usr/share/datasets"))
  ds = load_dataset("fashion-mnist")
  assert ds.source == directory
  assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert np.bincount(ds.train_labels).tolist() == [6000] * 10
  assert np.bincount(ds.test_labels).tolist() == [1000] * 10
  # Fashion-MNIST's first training image is an ankle boot (class 9), upright: its sole,
  # the darkest-to-brightest transition, is in the lower half.
  assert ds.train_labels[0] == 9
  rows = ds.train_images[0, :, :, 0].astype(int).sum(1)
  assert rows[14:].sum() > rows[:14].sum()
