"""Deletes and overwrites stay inside what cadl owns: a received manifest cannot delete files outside its
dataset folder, and ``cadl render --overwrite`` never replaces the input, a model run or a folder it did
not write."""
import json
import os

import cv2
import numpy as np
import pytest

from jobs import extract
from pipelines import manifest as mf
from pipelines import owned


def stills(folder, n=6, seed=0):
    """``n`` random 24x32 PNG stills in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return folder


def test_a_manifest_cannot_delete_files_outside_its_folder(tmp_path):
    pictures = stills(tmp_path / "pictures")
    out = tmp_path / "data"
    extract.run(["--input", str(pictures), "--output", str(out), "--size", "16x16", "--num-shards", "1"])
    victim, absolute = tmp_path / "victim.txt", tmp_path / "elsewhere" / "absolute.txt"
    absolute.parent.mkdir()
    for f in (victim, absolute):
        f.write_text("not cadl's\n")
    (out / "link").symlink_to(tmp_path / "elsewhere")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["files"] += ["../victim.txt", str(absolute), "link/absolute.txt"]
    (out / "manifest.json").write_text(json.dumps(manifest))

    summary = extract.run(["--input", str(pictures), "--output", str(out), "--size", "16x16", "--num-shards", "1"])

    assert victim.read_text() == "not cadl's\n" and absolute.read_text() == "not cadl's\n"
    assert summary["records_total"] == 6
    assert set(mf.listed_files(mf.read(out))) == set(summary["shards_new"])


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "gs://b/x", "link/x", None, 3])
def test_member_refuses_names_that_leave_the_folder(tmp_path, name):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to(tmp_path)
    assert owned.member(str(tmp_path / "in"), name) is None


def test_member_keeps_plain_names(tmp_path):
    assert owned.member(str(tmp_path), "train-00000-of-00001.tfrecord") == str(tmp_path / "train-00000-of-00001.tfrecord")
    assert owned.member(str(tmp_path), "sub/a.tfrecord") == str(tmp_path / "sub" / "a.tfrecord")
