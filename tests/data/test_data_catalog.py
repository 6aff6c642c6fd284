"""Dataset names, aliases, class counts and published file facts."""

import pytest

from synthpart.data.catalog import REGISTRY, canonical_name, get_spec, idx_filenames
from synthpart.errors import DataError


@pytest.mark.parametrize("name, classes", [
  ("emnist-balanced", 47), ("emnist-byclass", 62), ("emnist-bymerge", 47),
  ("emnist-letters", 26), ("emnist-digits", 10), ("emnist-mnist", 10), ("mnist", 10),
  ("fashion-mnist", 10), ("cifar10", 10), ("cifar100", 100), ("digits", 10),
])
def test_class_counts(name, classes):
  assert get_spec(name).num_classes == classes


@pytest.mark.parametrize("alias, name", [
  ("emnist/balanced", "emnist-balanced"), ("emnist/byclass", "emnist-byclass"),
  ("emnist/bymerge", "emnist-bymerge"), ("emnist/letters", "emnist-letters"),
  ("emnist/digits", "emnist-digits"), ("emnist/mnist", "emnist-mnist"), ("mnist", "mnist"),
  ("fashion_mnist", "fashion-mnist"), ("cifar10", "cifar10"), ("cifar100", "cifar100"),
  ("Fashion-MNIST", "fashion-mnist"), ("cifar-10", "cifar10"),
])
def test_tfds_names_are_aliases(alias, name):
  assert canonical_name(alias) == name


def test_unknown_name_lists_known_ones():
  with pytest.raises(DataError, match=r"unknown dataset 'emnist/foo'; known: digits, mnist"):
    get_spec("emnist/foo")


def test_emnist_facts():
  letters = get_spec("emnist-letters")
  assert letters.label_offset == 1 and letters.transposed
  assert letters.remotes[0].sha256 == (
      "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e")
  assert letters.remotes[0].size == 561753746
  assert idx_filenames(letters)["test_images"] == "emnist-letters-test-images-idx3-ubyte"
  assert idx_filenames(get_spec("mnist"))["test_labels"] == "t10k-labels-idx1-ubyte"
  assert not get_spec("mnist").transposed and not get_spec("fashion-mnist").label_offset


def test_every_published_file_has_size_and_sha256():
  for spec in REGISTRY.values():
    for remote in spec.remotes:
      assert remote.urls and remote.size and len(remote.sha256) == 64, remote
