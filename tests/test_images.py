"""Clean image sets: folders of real files, and the built-in generated set."""
import numpy as np
import pytest
from PIL import Image

from stimuli.images import ImageFolderError, builtin_images, load_folder


def test_builtin_is_deterministic_and_varied():
    a, b = builtin_images(6, 48, seed=3), builtin_images(6, 48, seed=3)
    assert a.dtype == np.uint8 and a.shape == (6, 48, 48, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, builtin_images(6, 48, seed=4))
    assert len({x.tobytes() for x in a}) == 6 and a.std() > 20


def test_folder_resize_crop_rgb(tmp_path):
    # a 200x100 RGBA image with a red left half and a blue right half, plus a grey PNG
    im = np.zeros((100, 200, 4), np.uint8)
    im[:, :100, 0] = 255
    im[:, 100:, 2] = 255
    im[..., 3] = 255
    Image.fromarray(im).save(tmp_path / "a.png")
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    px, names = load_folder(tmp_path, 50)
    assert names == ["a.png", "b.jpg"] and px.shape == (2, 50, 50, 3) and px.dtype == np.uint8
    # centre crop of the 100x50-resized image keeps the middle: red on the left, blue on the right
    assert px[0, 25, 5, 0] > 200 and px[0, 25, 45, 2] > 200
    assert abs(int(px[1].mean()) - 128) <= 2


def test_folder_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="holds no images"):
        load_folder(tmp_path, 32)
    with pytest.raises(ImageFolderError, match="does not exist"):
        load_folder(tmp_path / "missing", 32)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageFolderError, match="broken.png"):
        load_folder(tmp_path, 32)
