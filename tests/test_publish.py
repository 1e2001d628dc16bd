"""A dataset is published as one unit: a re-extract that fails at any point (here: the disk fills up) leaves
the old dataset exactly as it was, says so in one line, and leaves no work folder; train refuses a manifest
whose counts disagree with its shards."""
import json
import os
import shutil
import subprocess
import uuid

import pytest

from jobs import extract, train
from pipelines import manifest as mf
from test_confinement import stills
from test_locks import command_line


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (skipped where this machine does not let the tests mount one)."""
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def _fill(disk, leave):
    """Fill ``disk`` so that about ``leave`` bytes stay free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
        except OSError:
            pass


def test_a_full_disk_leaves_the_old_dataset_as_it_was(tmp_path, small_disk, capsys):
    pictures = stills(tmp_path / "pictures", n=40)
    out = small_disk / "data"
    extract.run(["--input", str(pictures), "--output", str(out), "--size", "16x16"])
    before = _tree(out)
    outcomes = set()
    for leave in (0, 8 << 10, 24 << 10, 48 << 10, 96 << 10, 160 << 10):
        _fill(small_disk, leave)
        code, err = command_line(extract.run, ["--input", str(pictures), "--output", str(out), "--size", "32x32"],
                                 capsys)
        err = err.splitlines()
        os.remove(small_disk / "filler")
        if code == 0:  # it fitted: a complete new dataset
            outcomes.add("published")
            assert mf.read(out)["image"]["height"] == 32 and len(mf.read_records(out)) == 40
            break
        # Refused up front (the estimate says it cannot fit) or stopped by the full disk part-way.
        outcomes.add("up front" if "not enough space" in err[-1] else "part-way")
        assert code == 2 and err[-1].startswith("cadl: error: ") and (
            "no space left" in err[-1] or "not enough space" in err[-1]), err
        assert not [e for e in err if "Traceback" in e]
        assert _tree(out) == before, f"with {leave} bytes free the old dataset changed"
    assert {"up front", "part-way"} <= outcomes, outcomes
    assert not [n for n in os.listdir(out) if n.startswith(extract.TMP_PREFIX)]


def test_train_refuses_a_manifest_whose_counts_disagree_with_its_shards(tmp_path, capsys):
    data = tmp_path / "data"
    extract.run(["--input", str(stills(tmp_path / "pictures", n=12)), "--output", str(data), "--size", "16x16"])
    manifest = mf.read(data)
    shard = manifest["splits"]["train"]["files"][0]
    other = tmp_path / "other"
    extract.run(["--input", str(stills(tmp_path / "more", n=30, seed=3)), "--output", str(other), "--size", "16x16"])
    original = (data / shard).read_bytes()
    shutil.copy(other / mf.read(other)["splits"]["train"]["files"][0], data / shard)  # new shards, old manifest
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "2"]
    code, err = command_line(train.run, argv, capsys)
    assert code == 2 and "counts disagree with its shards" in err and shard in err and "\n" not in err
    (data / shard).write_bytes(original)
    manifest["splits"]["train"]["files"].append("train-missing.tfrecord")
    (data / "manifest.json").write_text(json.dumps(manifest))
    code, err = command_line(train.run, argv, capsys)
    assert code == 2 and "train-missing.tfrecord, which is not there" in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_on_a_full_disk_is_one_line(tmp_path, small_disk, capsys):
    data = tmp_path / "data"
    extract.run(["--input", str(stills(tmp_path / "pictures", n=12)), "--output", str(data), "--size", "16x16"])
    for leave in (0, 64 << 10):
        _fill(small_disk, leave)
        code, err = command_line(train.run, ["--data", str(data), "--out", str(small_disk / f"run{leave}"),
                                             "--preset", "tiny", "--max-steps", "4", "--no-progress"], capsys)
        os.remove(small_disk / "filler")
        line = err.splitlines()[-1]
        assert code == 2 and line.startswith("cadl: error: ") and "no space left" in line, err
        assert "Traceback" not in err, err
        assert not os.path.exists(small_disk / f"run{leave}" / ".cadl-lock")


def test_space_is_checked_up_front_where_it_can_be_estimated(tmp_path, small_disk, capsys):
    pictures = stills(tmp_path / "pictures", n=40)
    out = small_disk / "data"
    out.mkdir()
    _fill(small_disk, 100 << 10)
    code, err = command_line(extract.run, ["--input", str(pictures), "--output", str(out), "--size", "128x128"],
                             capsys)
    assert code == 2 and "not enough space: 40 records at 128x128" in err.splitlines()[-1], err
    assert os.listdir(out) == []
