"""Bad inputs: each kind is skipped with one line naming the file and the reason, listed in the manifest, and
the good inputs still give all their records; a truncated film gives the frames it has."""
import os

import cv2
import numpy as np
import pytest

import jobs
from jobs import extract
from pipelines import manifest as mf
from pipelines import media
from pipelines.errors import CadlError
from pipelines.synthetic import make_film


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(1)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "junk.mkv").write_bytes(rng.bytes(20000))
    (folder / "notes.txt").write_text("a text file given as an input\n" * 50)
    whole = make_film(folder / "whole.mp4", "testsrc2", seconds=2, size=(64, 36), rate="25", audio=False)
    data = open(whole, "rb").read()
    # An mp4 cut in half loses its index (the moov atom is at the end): nothing can be read from it.
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    os.remove(whole)
    picture = cv2.imencode(".jpg", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))[1].tobytes()
    (folder / "cut.jpg").write_bytes(picture[: len(picture) // 2])
    (folder / "junk.png").write_bytes(rng.bytes(3000))
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def truncated_film(tmp_path_factory):
    """4 s (100 frames) of Matroska cut to 60% of its bytes: a stream that ends early, frames before intact."""
    folder = tmp_path_factory.mktemp("truncated")
    whole = make_film(folder / "whole.mkv", "testsrc2", seconds=4, size=(64, 36), rate="25", audio=False)
    data = open(whole, "rb").read()
    path = folder / "truncated.mkv"
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


EXPECTED_REASONS = {
    "empty.mp4": "empty file",
    "junk.mkv": "not a readable film",
    "notes.txt": "not media (a text file)",
    "cut.mp4": "not a readable film",
    "cut.jpg": "not a readable image",
    "junk.png": "not a readable image",
    "empty.png": "empty file",
    "missing.mp4": "no such file or folder",
}


def test_each_bad_input_is_skipped_with_its_reason(bad_files, short_film, tmp_path, caplog):
    out = tmp_path / "data"
    inputs = [bad_files / name for name in sorted(EXPECTED_REASONS)]
    argv = ["--output", str(out), "--size", "18x32", "--validation-fraction", "0"]
    for path in [short_film] + inputs:
        argv += ["--input", str(path)]
    with caplog.at_level("WARNING", logger="cadl.extract"):
        summary = extract.run(argv)
    assert summary["records_new"] == 75 and summary["inputs_extracted"] == 1
    skipped = {os.path.basename(s["input"]): s["reason"] for s in summary["skipped"]}
    assert set(skipped) == set(EXPECTED_REASONS)
    for name, reason in EXPECTED_REASONS.items():
        assert reason in skipped[name], (name, skipped[name])
        # One warning line that names the file and says why.
        lines = [l for l in caplog.text.splitlines() if str(bad_files / name) in l]
        assert lines and all(len(l.splitlines()) == 1 for l in lines)
    assert summary["inputs_bad"] == len(EXPECTED_REASONS) - 1  # the missing path is not an input
    manifest = mf.read(out)
    assert {os.path.basename(s["input"]) for s in manifest["skipped"]} == set(EXPECTED_REASONS)
    assert list(manifest["sources"]) == [os.path.abspath(short_film)]
    assert len(mf.read_records(out)) == 75


def test_truncated_film_contributes_the_frames_it_has(truncated_film, tmp_path):
    out = tmp_path / "data"
    summary = extract.run(["--input", str(truncated_film), "--output", str(out), "--size", "18x32",
                           "--segment-seconds", "1", "--validation-fraction", "0"])
    available = media.probe(truncated_film).num_frames
    assert 10 < available < 100
    records = sorted(mf.read_records(out), key=lambda r: r["frame_index"])
    indices = [r["frame_index"] for r in records]
    # Every frame the damaged file still holds (a last, partly written one may be lost), in order, once.
    assert available - 2 <= len(indices) <= available
    assert indices == list(range(len(indices)))
    assert all(r["timestamp"] == pytest.approx(r["frame_index"] / 25, abs=1e-3) for r in records)
    assert summary["inputs_extracted"] == 1 and summary["inputs_bad"] == 0
    assert mf.read(out)["sources"][str(truncated_film)]["count"] == len(indices)


def test_only_bad_inputs_is_an_error(bad_files, tmp_path):
    argv = ["--output", str(tmp_path / "data"), "--size", "18x32"]
    for name in ("empty.mp4", "junk.mkv", "junk.png"):
        argv += ["--input", str(bad_files / name)]
    with pytest.raises(CadlError, match="no records"):
        extract.run(argv)
    assert not (tmp_path / "data" / "manifest.json").exists()
    with pytest.raises(CadlError, match="no films, images or CelebA found"):
        extract.run(["--input", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "data")])


def test_command_line_exit_codes(bad_files, short_film, tmp_path, capsys):
    assert jobs.main(extract.run, ["--input", str(bad_files / "junk.mkv"), "--output", str(tmp_path / "a"),
                                   "--size", "18x32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cadl: error: ") and "no records" in err[-1]
    assert jobs.main(extract.run, ["--input", str(short_film), "--input", str(bad_files / "junk.mkv"),
                                   "--output", str(tmp_path / "b"), "--size", "18x32"]) == 0


def test_bad_option_values_are_one_line_errors(short_film, tmp_path):
    for argv, message in [(["--size", "big"], "--size"), (["--every", "0"], "--every"),
                          (["--start", "2", "--end", "1"], "--end"), (["--crop-factor", "1.5"], "--crop-factor")]:
        with pytest.raises(CadlError, match=message):
            extract.run(["--input", str(short_film), "--output", str(tmp_path / "x")] + argv)


def test_a_url_without_a_beam_filesystem_is_a_clear_error(short_film, tmp_path):
    with pytest.raises(CadlError, match="nosuchfs://bucket/films: Apache Beam has no filesystem for nosuchfs://"):
        extract.run(["--input", "nosuchfs://bucket/films", "--output", str(tmp_path / "x")])
    with pytest.raises(CadlError, match="nosuchfs://bucket/data: Apache Beam has no filesystem"):
        extract.run(["--input", str(short_film), "--output", "nosuchfs://bucket/data"])
    assert not (tmp_path / "x").exists()


def test_a_bad_option_creates_no_output_folder(short_film, tmp_path):
    with pytest.raises(CadlError, match="--size"):
        extract.run(["--input", str(short_film), "--output", str(tmp_path / "x"), "--size", "big"])
    assert not (tmp_path / "x").exists()


def _celeba_zip(path, damaged=None):
    """A CelebA zip of five stored (uncompressed) JPEGs; ``damaged``: the member whose bytes get overwritten."""
    import zipfile

    pictures = {f"{i:06d}.jpg": cv2.imencode(".jpg", np.full((44, 36, 3), 40 * i, np.uint8))[1].tobytes()
                for i in range(1, 6)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in pictures.items():
            z.writestr(f"img_align_celeba/{name}", data)
    if damaged:
        data = bytearray(path.read_bytes())
        at = data.index(pictures[damaged]) + 100
        data[at:at + 16] = bytes(16)
        path.write_bytes(bytes(data))
    return pictures


def test_a_damaged_member_of_celeba_zip_skips_that_picture_only(tmp_path):
    _celeba_zip(tmp_path / "celeba" / "img_align_celeba.zip", damaged="000003.jpg")
    out = tmp_path / "data"
    summary = extract.run(["--input", str(tmp_path / "celeba"), "--output", str(out), "--size", "16x16"])
    assert summary["records_new"] == 4 and summary["inputs_extracted"] == 1
    [entry] = summary["skipped"]
    assert entry["input"] == f"{tmp_path / 'celeba'}/000003.jpg" and "Bad CRC-32" in entry["reason"]
    assert sorted(r["source"] for r in mf.read_records(out)) == ["000001.jpg", "000002.jpg", "000004.jpg",
                                                                 "000005.jpg"]


def test_celeba_text_file_that_is_not_text_is_skipped_like_bad_input(short_film, tmp_path):
    _celeba_zip(tmp_path / "celeba" / "img_align_celeba.zip")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_bytes(b"\xff\xfe\x00junk 7\n" * 10)
    summary = extract.run(["--input", str(tmp_path / "celeba"), "--input", str(short_film),
                           "--output", str(tmp_path / "data"), "--size", "16x16"])
    assert summary["records_new"] == 75
    [entry] = summary["skipped"]
    assert entry["input"] == str(tmp_path / "celeba") and "list_eval_partition.txt: line 1" in entry["reason"]


def test_the_output_folder_is_never_an_input(short_film, tmp_path):
    out = tmp_path / "data"
    extract.run(["--input", str(short_film), "--output", str(out), "--size", "16x16"])
    # Naming the dataset folder itself (or a file in it) as an input finds nothing there: not mean.png.
    summary = extract.run(["--input", str(short_film), "--input", str(out), "--input", str(out / "mean.png"),
                           "--output", str(out), "--size", "16x16"])
    assert summary["inputs_found"] == 1 and summary["records_new"] == 75
    assert {s["input"] for s in summary["skipped"]} == {str(out), str(out / "mean.png")}
    assert all("output folder" in s["reason"] for s in summary["skipped"])
