import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from gankit.grids import grid, save_grid


@pytest.mark.parametrize("n, nrow, channels", [(7, 3, 1), (9, 3, 3), (2, 5, 1), (16, 4, 3)])
def test_the_grid_is_torchvisions_layout(n, nrow, channels):
    images = torch.randint(0, 256, (n, channels, 5, 6), dtype=torch.uint8)
    want = make_grid(images, nrow=nrow, padding=2).permute(1, 2, 0).numpy()
    want = want[..., 0] if channels == 1 else want  # make_grid repeats one channel thrice
    assert np.array_equal(grid(images, nrow), want)


def test_a_saved_grid_reads_back_pixel_for_pixel(tmp_path):
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    save_grid(tmp_path / "g.png", images, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid(images, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
