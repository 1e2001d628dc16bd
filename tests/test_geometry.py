import numpy as np
import pytest

from pipelines import geometry


def test_parse_size():
    assert geometry.parse_size("72x128") == (72, 128)
    assert geometry.parse_size("64") == (64, 64)
    for bad in ("x", "0x5", "1x2x3", "big"):
        with pytest.raises(ValueError, match="HxW"):
            geometry.parse_size(bad)


@pytest.mark.parametrize("fit", geometry.FITS)
@pytest.mark.parametrize("size", [(64, 64), (72, 128), (144, 256), (30, 10)])
def test_fit_image_gives_the_requested_size(fit, size):
    image = np.random.default_rng(0).integers(0, 255, (90, 160, 3), np.uint8)
    out = geometry.fit_image(image, size, fit)
    assert out.shape == size + (3,) and out.dtype == np.uint8


def test_pad_keeps_the_whole_picture_and_crop_the_centre():
    image = np.full((50, 100, 3), 200, np.uint8)
    padded = geometry.fit_image(image, (100, 100), "pad")
    assert (padded[:25] == 0).all() and (padded[25:75] == 200).all() and (padded[75:] == 0).all()
    marked = np.zeros((50, 100), np.uint8)
    marked[:, 25:75] = 255
    cropped = geometry.fit_image(marked, (50, 50), "crop")
    assert (cropped == 255).all()


def test_center_crop_factor_and_even_size():
    image = np.zeros((218, 178, 3), np.uint8)
    assert geometry.center_crop_factor(image, 0.8).shape == (174, 142, 3)
    assert geometry.even_size((73, 129)) == (72, 128)


@pytest.mark.parametrize("fit", geometry.FITS)
@pytest.mark.parametrize("size", [(32, 32), (72, 128), (30, 10)])
def test_fit_box_is_where_fit_image_puts_the_picture(fit, size):
    """fit_image and the render's inverse (make_layout) share fit_box: check it against the pixels."""
    image = np.full((90, 160), 200, np.uint8)
    (sh, sw), (y, x) = geometry.fit_box(image.shape, size, fit)
    out = geometry.fit_image(image, size, fit)
    if fit == "pad":
        assert sh <= size[0] and sw <= size[1] and max(sh, sw) in size and abs(sh / sw - 90 / 160) < 0.05
        assert (out[y:y + sh, x:x + sw] == 200).all() and (out == 200).sum() == sh * sw
    elif fit == "crop":
        assert sh >= size[0] and sw >= size[1] and (sh == size[0] or sw == size[1])  # covers, no more
        assert abs(sh - size[0] - 2 * y) <= 1 and abs(sw - size[1] - 2 * x) <= 1          # centred
        assert (out == 200).all()
    else:
        assert ((sh, sw), (y, x)) == (size, (0, 0))
    assert geometry.fit_box((90, 160), (32, 32), "crop") == ((32, 57), (0, 12))
    assert geometry.fit_box((90, 160), (32, 32), "pad") == ((18, 32), (7, 0))
    with pytest.raises(ValueError, match="fit must be one of"):
        geometry.fit_box((90, 160), (32, 32), "squash")
