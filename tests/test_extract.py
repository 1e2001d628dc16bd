"""``cadl extract`` end to end on generated films and image folders: counts, indices, timestamps, splits,
sampling, shards, incremental additions, determinism and the portable runner."""
import json
import math
import os

import cv2
import numpy as np
import pytest

from jobs import extract
from pipelines import manifest as mf
from pipelines import media, schema
from pipelines.errors import CadlError
from pipelines.extract_decode import validation_blocks
from pipelines.synthetic import make_film


def run(*argv):
    return extract.run([str(a) for a in argv])


def by_key(records):
    return sorted(records, key=lambda r: (r["source"], r["frame_index"]))


@pytest.fixture(scope="module")
def gop_films(tmp_path_factory):
    """Films with a keyframe every 10 (resp. 7) frames, so that segments can start all over them."""
    folder = tmp_path_factory.mktemp("gop")
    return {"pal": make_film(folder / "pal.mp4", "testsrc2", seconds=3, size=(160, 90), rate="25",
                             extra_video_args=("-g", "10")),
            "ntsc": make_film(folder / "ntsc.mkv", "mandelbrot", seconds=2, size=(128, 72), rate="24000/1001",
                              extra_video_args=("-g", "7"))}


def test_film_gives_every_frame_once_across_segments(gop_films, tmp_path):
    film = gop_films["pal"]
    out = tmp_path / "data"
    # 0.3 s segments: the 3 s film is eight work items; frames at every boundary must appear exactly once.
    summary = run("--input", film, "--output", out, "--size", "18x32", "--segment-seconds", "0.3",
                  "--validation-fraction", "0")
    assert mf.read(out)["sources"][os.path.abspath(film)]["segments"] == 8
    records = by_key(mf.read_records(out))
    assert [r["frame_index"] for r in records] == list(range(75))
    assert all(abs(r["timestamp"] - r["frame_index"] / 25) < 1e-5 for r in records)
    assert {r["source"] for r in records} == {os.path.abspath(film)}
    assert {(r["height"], r["width"], r["channels"], r["format"], r["split"]) for r in records} == \
        {(18, 32, 3, "png", "train")}
    image = cv2.imdecode(np.frombuffer(records[10]["image"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (18, 32, 3)
    assert summary["records_new"] == 75 and summary["splits"] == {"train": 75}
    assert summary["inputs_new"] == 1 and summary["inputs_extracted"] == 1 and summary["inputs_bad"] == 0
    manifest = mf.read(out)
    assert manifest["image"] == {"height": 18, "width": 32, "channels": 3, "format": "png", "fit": "crop"}
    source = manifest["sources"][os.path.abspath(film)]
    assert source["kind"] == "film" and source["count"] == 75 and source["num_frames"] == 75
    assert source["size"] == os.path.getsize(film)
    assert manifest["splits"]["train"]["count"] == 75
    assert manifest["bytes"] == sum(os.path.getsize(out / f) for f in manifest["splits"]["train"]["files"])
    assert json.loads((out / "summary.json").read_text())["records_new"] == 75


@pytest.mark.parametrize("which", ["fixture", "gop"])
def test_ntsc_film_timestamps_are_the_true_ones(which, ntsc_film, gop_films, tmp_path):
    film = ntsc_film if which == "fixture" else gop_films["ntsc"]
    out = tmp_path / "data"
    run("--input", film, "--output", out, "--size", "18x32", "--segment-seconds", "0.3",
        "--validation-fraction", "0")
    info = media.probe(film)
    records = by_key(mf.read_records(out))
    assert [r["frame_index"] for r in records] == list(range(info.num_frames))
    for r in records:
        assert r["timestamp"] == pytest.approx(info.timestamp(r["frame_index"]), abs=1e-5)
        assert r["timestamp"] == pytest.approx(r["frame_index"] * 1001 / 24000, abs=1.5e-3)


def test_sampling_every_fps_start_end(short_film, tmp_path):
    run("--input", short_film, "--output", tmp_path / "every", "--size", "18x32", "--every", "4",
        "--segment-seconds", "0.5", "--validation-fraction", "0")
    assert [r["frame_index"] for r in by_key(mf.read_records(tmp_path / "every"))] == list(range(0, 75, 4))
    run("--input", short_film, "--output", tmp_path / "fps", "--size", "18x32", "--fps", "5",
        "--segment-seconds", "0.5", "--validation-fraction", "0")
    assert [r["frame_index"] for r in by_key(mf.read_records(tmp_path / "fps"))] == list(range(0, 75, 5))
    run("--input", short_film, "--output", tmp_path / "window", "--size", "18x32", "--start", "1", "--end", "2",
        "--segment-seconds", "0.5", "--validation-fraction", "0")
    assert [r["frame_index"] for r in by_key(mf.read_records(tmp_path / "window"))] == list(range(25, 50))


def test_film_validation_comes_in_whole_blocks(tmp_path):
    film = make_film(tmp_path / "eight.mp4", "testsrc2", seconds=8, size=(64, 36), rate="25", audio=False)
    out = tmp_path / "data"
    summary = run("--input", film, "--output", out, "--size", "18x32", "--validation-fraction", "0.3",
                  "--validation-block", "1", "--segment-seconds", "3")
    records = mf.read_records(out)
    chosen = validation_blocks(os.path.basename(film), 8.0, 1.0, 0.3)
    assert chosen, "a film of several blocks always gives validation frames"
    for r in records:
        assert r["split"] == ("validation" if int(r["timestamp"] // 1) in chosen else "train")
    assert summary["splits"]["validation"] == 25 * len(chosen)
    assert summary["splits"]["train"] == 200 - 25 * len(chosen)
    assert len(mf.read(out)["splits"]["validation"]["files"]) >= 1


def _write_images(folder):
    """Six stills of different sizes and formats, in nested folders, plus files the search must ignore."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (rel, shape) in enumerate([("a.png", (40, 60)), ("b.jpg", (50, 50)), ("sub/c.webp", (30, 80)),
                                      ("sub/d.bmp", (64, 48)), ("sub/deeper/e.jpeg", (20, 20)),
                                      ("f.PNG", (33, 77))]):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        assert cv2.imwrite(str(path), image)
        paths.append(str(path))
    grey = folder / "sub" / "grey.png"
    assert cv2.imwrite(str(grey), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    paths.append(str(grey))
    (folder / "notes.txt").write_text("not a picture, ignored while searching a folder")
    (folder / ".hidden.png").write_bytes(b"ignored: hidden")
    return sorted(paths)


def test_image_folder(tmp_path):
    paths = _write_images(tmp_path / "stills")
    out = tmp_path / "data"
    summary = run("--input", tmp_path / "stills", "--output", out, "--size", "24x24", "--fit", "pad",
                  "--validation-fraction", "0.4")
    records = mf.read_records(out)
    assert sorted(r["source"] for r in records) == paths
    assert all(r["frame_index"] == 0 and r["timestamp"] == 0 and r["attributes"] == [] for r in records)
    assert all(cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_UNCHANGED).shape == (24, 24, 3)
               for r in records)
    # Splits are a hash of the path relative to the folder given: recompute them.
    from pipelines.extract_decode import still_split
    for r in records:
        assert r["split"] == still_split(os.path.relpath(r["source"], tmp_path / "stills"), 0.4)
    assert summary["inputs_found"] == 7 and summary["inputs_extracted"] == 7 and summary["skipped"] == []
    manifest = mf.read(out)
    assert set(manifest["sources"]) == set(paths)
    assert all(s["kind"] == "image" and s["count"] == 1 for s in manifest["sources"].values())


def test_mean_and_std_images_match_the_records(short_film, tmp_path):
    out = tmp_path / "data"
    run("--input", short_film, "--output", out, "--size", "18x32", "--validation-fraction", "0")
    pictures = np.stack([cv2.imdecode(np.frombuffer(r["image"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                         for r in mf.read_records(out)]).astype(np.float64)
    mean = cv2.imread(str(out / "mean.png"), cv2.IMREAD_COLOR)[..., ::-1]
    std = cv2.imread(str(out / "std.png"), cv2.IMREAD_COLOR)[..., ::-1]
    assert mean.shape == std.shape == (18, 32, 3)
    assert np.abs(mean - pictures.mean(0)).max() <= 0.5 + 1e-9
    assert np.abs(std - pictures.std(0)).max() <= 0.5 + 1e-6
    assert std.max() > 10  # testsrc2 moves: the std image is not flat


def test_num_shards_gzip_and_tf_data_reading(short_film, tmp_path):
    import tensorflow as tf

    out = tmp_path / "data"
    run("--input", short_film, "--output", out, "--size", "18x32", "--num-shards", "3", "--compression", "gzip",
        "--validation-fraction", "0")
    manifest = mf.read(out)
    assert manifest["compression"] == "GZIP"
    files = manifest["splits"]["train"]["files"]
    assert files == [schema.shard_name("train", i, 3, compressed=True) for i in range(3)]
    dataset = tf.data.TFRecordDataset([str(out / f) for f in files], compression_type="GZIP").batch(8)
    count = 0
    for batch in dataset.map(schema.parse_records):
        count += int(batch["image"].shape[0])
        assert tf.io.decode_png(batch["image"][0]).shape == (18, 32, 3)
    assert count == 75


def test_shards_roll_over_at_the_target_size(short_film, tmp_path):
    out = tmp_path / "data"
    run("--input", short_film, "--output", out, "--size", "36x64", "--shard-mb", "0.05", "--validation-fraction",
        "0", "--direct_num_workers=1")
    manifest = mf.read(out)
    files = manifest["splits"]["train"]["files"]
    assert len(files) > 2
    assert files == [schema.shard_name("train", i, len(files)) for i in range(len(files))]
    sizes = [os.path.getsize(out / f) for f in files]
    assert max(sizes[:-1]) < 0.05 * 2 ** 20 + 20000  # closed at the first record past the target
    assert len(mf.read_records(out)) == 75


def _record_set(folder):
    return sorted((r["source"], r["frame_index"], r["split"], r["timestamp"], r["image"])
                  for r in mf.read_records(folder))


def test_two_runs_give_identical_records(short_film, tmp_path):
    args = ["--input", short_film, "--size", "18x32", "--segment-seconds", "0.5", "--validation-fraction", "0.5",
            "--validation-block", "0.5", "--num-shards", "2"]
    run(*args, "--output", tmp_path / "one")
    run(*args, "--output", tmp_path / "two")
    assert _record_set(tmp_path / "one") == _record_set(tmp_path / "two")
    one, two = mf.read(tmp_path / "one"), mf.read(tmp_path / "two")
    assert one["splits"] == two["splits"]
    # With --num-shards, records are sorted within shards: the files are byte-identical too.
    for name in mf.listed_files(one):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    # And a rerun into the same folder replaces the dataset with the same records.
    run(*args, "--output", tmp_path / "one")
    assert _record_set(tmp_path / "one") == _record_set(tmp_path / "two")


def test_incremental_adds_only_new_inputs(short_film, silent_film, tmp_path):
    out = tmp_path / "data"
    common = ["--size", "18x32", "--validation-fraction", "0"]
    first = run("--input", short_film, "--output", out, *common)
    assert first["inputs_new"] == 1 and first["inputs_already_extracted"] == 0
    second = run("--input", short_film, "--input", silent_film, "--output", out, "--incremental", *common)
    assert second["inputs_new"] == 1 and second["inputs_already_extracted"] == 1
    assert second["records_new"] == 50 and second["records_total"] == 125
    assert all(name.startswith("train-r0002-") for name in second["shards_new"])
    manifest = mf.read(out)
    assert set(manifest["sources"]) == {os.path.abspath(short_film), os.path.abspath(silent_film)}
    assert manifest["splits"]["train"]["count"] == 125
    assert len(manifest["runs"]) == 2
    assert len(mf.read_records(out)) == 125
    # The merged mean/std equal those of one run over both films (moments are exact integers).
    both = tmp_path / "both"
    run("--input", short_film, "--input", silent_film, "--output", both, *common)
    merged, whole = mf.read_moments(out, 18, 32), mf.read_moments(both, 18, 32)
    assert merged["count"] == whole["count"] == 125
    assert np.array_equal(merged["sum"], whole["sum"]) and np.array_equal(merged["sumsq"], whole["sumsq"])
    assert manifest["mean_image"] == "r0002-mean.png" and not (out / "mean.png").exists()  # published as one unit
    assert (out / manifest["mean_image"]).read_bytes() == (both / "mean.png").read_bytes()
    # Nothing new: success, nothing written.
    third = run("--input", short_film, "--input", silent_film, "--output", out, "--incremental", *common)
    assert third["inputs_new"] == 0 and third["inputs_already_extracted"] == 2 and third["shards_new"] == []
    assert mf.read(out)["splits"]["train"]["count"] == 125
    # A different picture size cannot be mixed in.
    with pytest.raises(CadlError, match="image"):
        run("--input", short_film, "--output", out, "--incremental", "--size", "32x32")


def test_incremental_logs_what_it_skips(short_film, tmp_path, caplog):
    out = tmp_path / "data"
    run("--input", short_film, "--output", out, "--size", "18x32")
    with caplog.at_level("INFO", logger="cadl.extract"):
        run("--input", short_film, "--output", out, "--size", "18x32", "--incremental")
    assert "skipping 1 already extracted" in caplog.text


def test_output_that_cannot_be_written(short_film, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    with pytest.raises(CadlError, match="not a folder"):
        run("--input", short_film, "--output", blocker, "--size", "18x32")
    with pytest.raises(CadlError, match="not writable"):
        run("--input", short_film, "--output", blocker / "sub", "--size", "18x32")


def test_no_temp_files_are_left(short_film, tmp_path):
    out = tmp_path / "data"
    run("--input", short_film, "--output", out, "--size", "18x32")
    assert [n for n in os.listdir(out) if n.startswith(".")] == [".cadl"]  # the marker saying it is a dataset


def test_portable_runner_gives_the_same_records(short_film, ntsc_film, tmp_path):
    args = ["--input", short_film, "--input", ntsc_film, "--size", "18x32", "--segment-seconds", "1",
            "--validation-fraction", "0.3", "--validation-block", "0.5"]
    default = run(*args, "--output", tmp_path / "default")
    portable = run(*args, "--output", tmp_path / "portable", "--runner=PortableRunner", "--job_endpoint=embed",
                   "--environment_type=LOOPBACK")
    assert default["runner"] == "FnApiRunner" and portable["runner"] == "PortableRunner"
    assert _record_set(tmp_path / "default") == _record_set(tmp_path / "portable")
    assert default["splits"] == portable["splits"]
    assert (tmp_path / "default" / "mean.png").read_bytes() == (tmp_path / "portable" / "mean.png").read_bytes()


def test_help_lists_every_option():
    text = extract.build_parser().format_help()
    for option in ("--input", "--output", "--size", "--fit", "--crop-factor", "--every", "--fps", "--start", "--end",
                   "--format", "--quality", "--compression", "--num-shards", "--shard-mb", "--incremental",
                   "--validation-fraction", "--validation-block", "--segment-seconds"):
        assert option in text
    assert math.isclose(extract.build_parser().parse_args(["--input", "x", "--output", "y"]).validation_fraction,
                        0.05)


def test_extraction_never_imports_tensorflow(short_film, tmp_path):
    # TensorFlow costs ~2 s and ~0.6 GB per process: neither the driver nor the (thread) workers need it.
    import subprocess
    import sys

    code = ("import sys, jobs.extract as e; "
            f"e.run(['--input', {str(short_film)!r}, '--output', {str(tmp_path / 'data')!r}, '--size', '18x32']); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_worker_processes_give_the_same_records(short_film, tmp_path):
    # Machines with more than 4 cores run the workers as processes: the code must ship and behave the same.
    args = ["--input", short_film, "--size", "18x32", "--segment-seconds", "1", "--validation-block", "0.5",
            "--validation-fraction", "0.3"]
    run(*args, "--output", tmp_path / "threads", "--direct_num_workers=2", "--direct_running_mode=multi_threading")
    run(*args, "--output", tmp_path / "processes", "--direct_num_workers=2",
        "--direct_running_mode=multi_processing")
    assert _record_set(tmp_path / "threads") == _record_set(tmp_path / "processes")


def test_output_inside_an_input_folder_is_not_searched(short_film, tmp_path):
    import shutil

    folder = tmp_path / "films"
    folder.mkdir()
    shutil.copy(short_film, folder / "a.mp4")
    for _ in range(2):  # the second run must not take the first run's mean.png / std.png for stills
        summary = run("--input", folder, "--output", folder / "data", "--size", "18x32")
        assert summary["inputs_found"] == 1 and summary["records_total"] == 75


def test_incremental_warns_about_a_changed_input(short_film, tmp_path, caplog):
    import shutil

    film = tmp_path / "a.mp4"
    shutil.copy(short_film, film)
    out = tmp_path / "data"
    run("--input", film, "--output", out, "--size", "18x32")
    os.utime(film, (1e9, 1e9))
    with caplog.at_level("WARNING", logger="cadl.extract"):
        summary = run("--input", film, "--output", out, "--size", "18x32", "--incremental")
    assert summary["inputs_new"] == 1 and summary["inputs_already_extracted"] == 0
    assert f"{film} changed since it was extracted" in caplog.text
    assert mf.read(out)["sources"][str(film)]["mtime"] == 1e9


def test_cadl_extract_command_line(short_film, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "extract", "--input", str(short_film), "--output",
                           str(out), "--size", "18x32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{out}: 75 new records") and "Traceback" not in proc.stderr
    assert not [l for l in lines if "channel" in l.lower()]  # no Beam worker chatter
    assert json.loads((out / "summary.json").read_text())["records_total"] == 75


# -- the library, without a command line ----------------------------------------------------------------
def test_extract_from_python_gives_every_decoded_frame_per_split(tmp_path):
    from pipelines.extract import ExtractConfig, extract as extract_stage

    film = make_film(tmp_path / "lib.mp4", "testsrc2", seconds=9, size=(96, 54), rate="25", audio=False)
    decoded = media.probe(film).num_frames
    out = tmp_path / "data"
    summary = extract_stage(ExtractConfig(inputs=(str(film),), output=str(out), size=(18, 32),
                                          validation_fraction=0.3, validation_block=1.0, segment_seconds=2.0))
    manifest = mf.read(out)
    records = mf.read_records(out)
    per_split = {}
    for r in records:
        per_split[r["split"]] = per_split.get(r["split"], 0) + 1
    # Every frame ffmpeg decodes is one record, in the split its validation block says, and nothing else.
    assert len(records) == decoded and sorted(r["frame_index"] for r in records) == list(range(decoded))
    blocks = validation_blocks(os.path.basename(film), 9.0, 1.0, 0.3,
                               [r["timestamp"] for r in records])
    expected_validation = sum(1 for r in records if int(r["timestamp"] // 1.0) in blocks)
    assert blocks and per_split == {"train": decoded - expected_validation, "validation": expected_validation}
    assert mf.counts(manifest) == dict(per_split, total=decoded)
    assert manifest["options"]["size"] == [18, 32] and manifest["options"]["shard_mb"] == 100.0
    assert summary["splits_new"] == per_split and summary["records_new"] == decoded
    assert summary["inputs_found"] == summary["inputs_extracted"] == 1 and summary["inputs_bad"] == 0
    assert summary["inputs_already_extracted"] == 0
    assert json.loads((out / "summary.json").read_text())["records_total"] == decoded

    again = extract_stage(ExtractConfig(inputs=(str(film),), output=str(out), size=(18, 32),
                                        validation_fraction=0.3, validation_block=1.0, incremental=True))
    assert again["inputs_already_extracted"] == 1 and again["inputs_new"] == 0 and again["records_total"] == decoded


@pytest.mark.parametrize("field, value, message", [
    ("every", 0, "--every must be >= 1"), ("quality", 0, "--quality must be in 1..100"),
    ("end", 0.0, "--end must be after --start"), ("size", (0, 64), "--size must be"),
    ("compression", "zip", "--compression must be none or gzip"),
])
def test_a_bad_config_value_is_one_line(tmp_path, field, value, message):
    from pipelines.extract import ExtractConfig

    with pytest.raises(CadlError) as caught:
        ExtractConfig(inputs=("x.mp4",), output=str(tmp_path / "data"), **{field: value})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not (tmp_path / "data").exists()


def test_the_job_maps_every_flag_to_the_config():
    from pipelines.extract import ExtractConfig

    args, beam_args = extract.build_parser().parse_known_args(
        ["--input", "a", "--input", "b", "--output", "o", "--size", "72x128", "--keep-fields", "--every", "3",
         "--compression", "gzip", "--shard-mb", "5", "--incremental", "--runner", "DirectRunner"])
    config = extract.config(args, beam_args)
    assert config == ExtractConfig(inputs=("a", "b"), output="o", size=(72, 128), deinterlace="off", every=3,
                                   compression="gzip", shard_mb=5.0, incremental=True,
                                   beam_args=("--runner", "DirectRunner"))
    defaults = extract.config(extract.build_parser().parse_args(["--input", "a", "--output", "o"]))
    assert defaults == ExtractConfig(inputs=("a",), output="o")
