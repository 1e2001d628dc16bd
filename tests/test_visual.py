import imageio.v2 as imageio
import numpy as np
from PIL import Image

from pipelines import visual


def test_montage_shapes():
    images = np.random.default_rng(0).random((10, 8, 6, 3))
    m = visual.montage(images)  # 4 x 3 grid, 1-pixel borders
    assert m.shape == (3 * 9 + 1, 4 * 7 + 1, 3) and m.dtype == np.uint8
    grey = visual.montage(np.zeros((4, 5, 5, 1)), pad=0)
    assert grey.shape == (10, 10)
    assert (grey == 0).all()


def test_montage_filters_tiles_every_input_output_pair():
    kernels = np.random.default_rng(1).normal(size=(5, 5, 2, 8))
    m = visual.montage_filters(kernels)
    assert m.shape == (4 * 6 + 1, 4 * 6 + 1)


def test_diverging_colours():
    rgb = visual.diverging(np.array([[-1.0, 0.0, 1.0]]))
    assert rgb.shape == (1, 3, 3)
    assert tuple(rgb[0, 1]) == (255, 255, 255)
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 2, 0] > rgb[0, 2, 2]


def test_png_and_gif_files(tmp_path):
    frames = [np.full((8, 8, 3), v, np.uint8) for v in (0, 128, 255)]
    visual.write_png(tmp_path / "a.png", frames[1])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), frames[1])
    visual.write_gif(tmp_path / "a.gif", frames, fps=5)
    assert len(imageio.mimread(tmp_path / "a.gif")) == 3
