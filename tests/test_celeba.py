"""CelebA: the reader (folder and zip layouts, partition and attribute files) and its extraction."""
import os
import zipfile

import cv2
import numpy as np
import pytest

from jobs import extract
from pipelines import manifest as mf
from pipelines import sources
from pipelines.celeba import CelebA, is_celeba_root
from pipelines.errors import CadlError

ATTRIBUTES = ["Smiling", "Young", "Male"]
# name -> partition: 6 train, 3 validation, 3 test (CelebA's 0 / 1 / 2)
PARTITION = {f"{i:06d}.jpg": ("0" if i <= 6 else "1" if i <= 9 else "2") for i in range(1, 13)}


def _attributes(i):
    return [1 if (i >> bit) & 1 else -1 for bit in range(len(ATTRIBUTES))]


def _write_texts(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in PARTITION.items()))
    lines = [str(len(PARTITION)), " ".join(ATTRIBUTES)]
    # The real file pads values with two spaces: parse on any whitespace.
    lines += [f"{n}  " + "  ".join(f"{v:2d}" for v in _attributes(i)) for i, n in enumerate(PARTITION, 1)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


def _jpegs():
    """Tiny 'aligned faces' (218x178 in the real set; 44x36 here): a bright disc on a gradient."""
    yy, xx = np.mgrid[0:44, 0:36]
    out = {}
    for i, name in enumerate(PARTITION, 1):
        img = np.stack([xx * 7, yy * 5, np.full_like(xx, 20 * i)], -1).astype(np.uint8)
        img[(yy - 22) ** 2 + (xx - 18) ** 2 < 100] = 250
        out[name] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return out


@pytest.fixture(scope="module")
def celeba_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba_folder")
    images = root / "img_align_celeba"
    images.mkdir()
    for name, data in _jpegs().items():
        (images / name).write_bytes(data)
    _write_texts(root)
    return root


@pytest.fixture(scope="module")
def celeba_zip(tmp_path_factory):
    """The official download's layout: Img/img_align_celeba.zip, Eval/ and Anno/ text files."""
    root = tmp_path_factory.mktemp("celeba_zip")
    (root / "Img").mkdir()
    with zipfile.ZipFile(root / "Img" / "img_align_celeba.zip", "w") as z:
        z.writestr("img_align_celeba/", "")
        for name, data in _jpegs().items():
            z.writestr(f"img_align_celeba/{name}", data)
    texts = root / "texts"
    _write_texts(texts)
    (root / "Eval").mkdir()
    (root / "Anno").mkdir()
    os.replace(texts / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt")
    os.replace(texts / "list_attr_celeba.txt", root / "Anno" / "list_attr_celeba.txt")
    os.rmdir(texts)
    return root


@pytest.mark.parametrize("layout", ["folder", "zip"])
def test_reader(layout, celeba_folder, celeba_zip):
    root = celeba_folder if layout == "folder" else celeba_zip
    dataset = CelebA(root)
    jpegs = _jpegs()
    assert dataset.names == sorted(jpegs)
    assert dataset.partition == {n: {"0": "train", "1": "validation", "2": "test"}[p] for n, p in PARTITION.items()}
    assert dataset.attribute_names == ATTRIBUTES
    assert dataset.attributes["000005.jpg"] == _attributes(5)
    assert all(dataset.read(n) == jpegs[n] for n in dataset.names)
    with pytest.raises(CadlError, match="000099.jpg"):
        dataset.read("000099.jpg")
    assert is_celeba_root(root)


def test_zip_is_read_in_place(celeba_zip):
    before = sorted(os.listdir(celeba_zip))
    dataset = CelebA(celeba_zip / "Img" / "img_align_celeba.zip")  # the zip itself works as the root too
    assert len(dataset.names) == 12 and dataset.partition is not None
    dataset.read(dataset.names[0])
    assert sorted(os.listdir(celeba_zip)) == before


def test_without_text_files(tmp_path):
    images = tmp_path / "img_align_celeba"
    images.mkdir()
    (images / "000001.jpg").write_bytes(_jpegs()["000001.jpg"])
    dataset = CelebA(images)  # the image folder itself
    assert dataset.names == ["000001.jpg"]
    assert dataset.partition is None and dataset.attribute_names == [] and dataset.attributes == {}


def test_wrong_root_names_the_expected_files(tmp_path):
    with pytest.raises(CadlError) as error:
        CelebA(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "img_align_celeba/" in message and "img_align_celeba.zip" in message
    assert "list_eval_partition.txt" in message and "list_attr_celeba.txt" in message
    assert "\n" not in message


def test_bad_attribute_file_is_a_clear_error(tmp_path, celeba_folder):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(celeba_folder / "img_align_celeba", root / "img_align_celeba", target_is_directory=True)
    (root / "list_attr_celeba.txt").write_text("1\nSmiling Young\n000001.jpg 1\n")
    with pytest.raises(CadlError, match="list_attr_celeba.txt: line 3"):
        CelebA(root).attributes


def test_sources_find_celeba_inside_a_folder(celeba_folder, tmp_path):
    inputs, problems = sources.discover([celeba_folder])
    assert [(i.kind, i.path) for i in inputs] == [("celeba", str(celeba_folder))] and problems == []
    parent = celeba_folder.parent
    found, _ = sources.discover([parent])
    assert ("celeba", str(celeba_folder)) in [(i.kind, i.path) for i in found]
    assert not any(i.path.startswith(str(celeba_folder / "img_align_celeba")) for i in found)


def test_zip_members_outside_the_image_folder_are_not_images(tmp_path, caplog):
    pictures = _jpegs()
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as z:
        for name, data in pictures.items():
            z.writestr(f"img_align_celeba/{name}", data)
        for evil in ("../../evil.jpg", "/abs/evil2.jpg", "other/evil3.jpg", "img_align_celeba/deep/evil4.jpg"):
            z.writestr(evil, next(iter(pictures.values())))
    _write_texts(tmp_path)
    with caplog.at_level("WARNING", logger="cadl.celeba"):
        names = CelebA(tmp_path).names
    assert sorted(names) == sorted(pictures) and not any("evil" in n for n in names)
    assert "ignored 4 pictures that are not directly in img_align_celeba/" in caplog.text


@pytest.mark.parametrize("layout", ["folder", "zip"])
def test_extract_keeps_the_official_partition_and_attributes(layout, celeba_folder, celeba_zip, tmp_path):
    root = celeba_folder if layout == "folder" else celeba_zip
    out = tmp_path / "data"
    summary = extract.run(["--input", str(root), "--output", str(out), "--size", "16x16"])
    assert summary["splits"] == {"train": 6, "validation": 3, "test": 3}
    manifest = mf.read(out)
    assert manifest["attribute_names"] == ATTRIBUTES
    assert manifest["sources"][str(root)]["kind"] == "celeba" and manifest["sources"][str(root)]["count"] == 12
    records = mf.read_records(out)
    assert len(records) == 12
    for r in records:
        i = int(r["source"][:6])
        assert r["split"] == {"0": "train", "1": "validation", "2": "test"}[PARTITION[r["source"]]]
        assert r["attributes"] == _attributes(i)
        assert (r["height"], r["width"], r["frame_index"]) == (16, 16, 0)
    assert len(manifest["splits"]["test"]["files"]) >= 1


def test_crop_factor_keeps_the_centre(celeba_folder, tmp_path):
    # The course's 0.8 crop (the default for CelebA) removes the gradient's edges: the mean differs from 1.0's.
    default = extract.run(["--input", str(celeba_folder), "--output", str(tmp_path / "a"), "--size", "16x16"])
    whole = extract.run(["--input", str(celeba_folder), "--output", str(tmp_path / "b"), "--size", "16x16",
                         "--crop-factor", "1"])
    assert default["records_new"] == whole["records_new"] == 12
    a = cv2.imread(str(tmp_path / "a" / "mean.png"))
    b = cv2.imread(str(tmp_path / "b" / "mean.png"))
    assert a.shape == b.shape == (16, 16, 3) and np.abs(a.astype(int) - b.astype(int)).max() > 5
    assert mf.read(tmp_path / "a")["options"]["crop_factor"] is None  # None: the per-kind default was used


def test_bad_jpeg_inside_celeba_is_skipped(tmp_path):
    root = tmp_path / "celeba"
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    jpegs = _jpegs()
    for name in list(jpegs)[:3]:
        (images / name).write_bytes(jpegs[name])
    (images / "000004.jpg").write_bytes(b"not a jpeg at all")
    summary = extract.run(["--input", str(root), "--output", str(tmp_path / "data"), "--size", "16x16"])
    assert summary["records_new"] == 3
    assert [s["input"] for s in summary["skipped"]] == [f"{root}/000004.jpg"]


def test_broken_celeba_root_is_skipped_like_a_bad_input(celeba_folder, short_film, tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    os.symlink(celeba_folder / "img_align_celeba", root / "img_align_celeba", target_is_directory=True)
    (root / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    summary = extract.run(["--input", str(root), "--input", str(short_film), "--output", str(tmp_path / "data"),
                           "--size", "16x16"])
    assert summary["records_new"] == 75 and summary["inputs_bad"] == 1
    [entry] = summary["skipped"]
    assert entry["input"] == str(root) and "list_eval_partition.txt: line 1" in entry["reason"]
    assert [s["input"] for s in mf.read(tmp_path / "data")["skipped"]] == [str(root)]
