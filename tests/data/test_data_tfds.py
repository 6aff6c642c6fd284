"""Reading a TFDS-prepared array_record directory through `tfds.data_source`, without TensorFlow.

The directory is prepared here by a tiny builder whose images are PIL images, which TFDS encodes
without TensorFlow. Skipped where tensorflow-datasets is not installed (it is an optional extra).
"""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed "
                           "(optional extra: pip install 'synthpart[tfds]')")
pytest.importorskip("array_record", reason="array_record is not installed")
PIL_Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

from synthpart.data import load_dataset  # noqa: E402
from synthpart.errors import DataError  # noqa: E402


def _prepare(root, builder_name, config, num_classes, train, test):
  """Writes splits {name: (images uint8 [N, 28, 28], labels)} as TFDS array_record files."""

  class FakeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = builder_name
    VERSION = tfds.core.Version("3.0.1")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=num_classes)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(*train), "test": self._generate_examples(*test)}

    def _generate_examples(self, images, labels):
      for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        yield i, {"image": PIL_Image.fromarray(image), "label": int(label)}

  kwargs = {"config": config} if config else {}
  FakeBuilder(data_dir=str(root), file_format="array_record", **kwargs).download_and_prepare()


def _sorted_by_label(ds_images, ds_labels):
  order = np.argsort(ds_labels, kind="stable")
  return ds_images[order], ds_labels[order]


def test_tfds_mnist_from_tfds_data_dir(isolated):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
  labels = np.arange(10)
  _prepare(isolated / "tfds", "mnist", None, 10, (images, labels), (images[:4], labels[:4]))
  ds = load_dataset("mnist", progress=False)
  assert "TFDS, version 3.0.1" in ds.source
  # TFDS shuffles records when preparing; compare per label.
  got, got_labels = _sorted_by_label(ds.train_images[..., 0], ds.train_labels)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(got_labels, labels)
  assert ds.test_images.shape == (4, 28, 28, 1) and ds.train_labels.dtype == np.int32


def test_tfds_emnist_letters_is_transposed_and_shifted(tmp_path):
  """TFDS keeps EMNIST as NIST stores it: transposed, letters labelled 1..26."""
  upright = np.zeros((26, 28, 28), np.uint8)
  upright[:, 2, 5] = 255
  stored = upright.transpose(0, 2, 1).copy()
  labels = np.arange(1, 27)
  _prepare(tmp_path, "emnist", "letters", 37, (stored, labels), (stored[:3], labels[:3]))
  ds = load_dataset("emnist/letters", tmp_path)
  assert ds.train_images[:, 2, 5, 0].tolist() == [255] * 26
  assert ds.train_images.sum() == 26 * 255
  assert sorted(ds.train_labels.tolist()) == list(range(26))


def test_tfds_labels_out_of_range(tmp_path):
  images = np.zeros((3, 28, 28), np.uint8)
  _prepare(tmp_path, "emnist", "letters", 37, (images, np.array([0, 1, 2])), (images, [1, 1, 1]))
  with pytest.raises(DataError, match=r"emnist/letters:3\.0\.1\[train\]: labels span 0\.\.2"):
    load_dataset("emnist-letters", tmp_path)
