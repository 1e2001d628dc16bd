"""cadl explore on a really trained tiny VAE (CelebA-layout faces whose Smiling is a colour change):
interpolation, walks, neighbours, attribute vectors (also through cadl render), maps, and bad input."""
import json
import os
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import explore_data
import jobs
from jobs import explore as explore_job
from pipelines import explore, latent, media
from pipelines import manifest as mf
from pipelines.errors import CadlError
from pipelines.synthetic import make_film


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """(run folder, dataset folder): 160 CelebA-layout faces at 16x16, a tiny VAE trained 300 steps on them."""
    from jobs import extract
    from pipelines.training import TrainConfig, train

    root = tmp_path_factory.mktemp("explore")
    explore_data.write_celeba(str(root / "celeba"))
    extract.run(["--input", str(root / "celeba"), "--output", str(root / "data"), "--size", "16x16"])
    train(TrainConfig(data=str(root / "data"), out=str(root / "run"), preset="tiny", max_steps=300, lr=3e-3,
                      progress=False, montage_every=0, validate_every=0))
    return str(root / "run"), str(root / "data")


@pytest.fixture(scope="module")
def model(faces):
    return latent.load(faces[0])[0]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film(tmp_path_factory.mktemp("explore_film") / "film.mp4", "testsrc2", seconds=1.2,
                     size=(64, 48), rate="25")


def _frames(path):
    return np.stack([f for _, _, f in media.read_frames(path)])


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _record_png(data, index, path, split="validation"):
    image = mf.read_records(data, split)[index]["image"]
    with open(path, "wb") as f:
        f.write(image)
    return np.asarray(Image.open(path).convert("RGB"))


# ---- the pieces, without a model ----

def test_nearest_is_exact_in_blocks():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(1000, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
    found, dist = latent.nearest(queries, base, 5, chunk=64)
    brute = np.linalg.norm(queries[:, None] - base[None], axis=2)
    assert (found == np.argsort(brute, 1)[:, :5]).all()
    assert np.allclose(dist, np.sort(brute, 1)[:, :5], atol=1e-4)


def test_slerp_ends_at_a_and_b_and_moves_away_from_a():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=8)
    path = latent.slerp(a, b, np.linspace(0, 1, 50))
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    assert (np.diff(np.linalg.norm(path - a, axis=1)) > 0).all()


def test_prior_walk_is_smooth_and_prior_distributed():
    z = explore.prior_path(4000, 16, frames_per_sigma=10, seed=3)
    assert z.shape == (4000, 16) and abs(z.std() - 1) < 0.1 and abs(z.mean()) < 0.1
    assert np.abs(np.diff(z, axis=0)).mean() < 0.2 * np.abs(z).mean()  # neighbours are close
    assert (explore.prior_path(50, 4, 5, seed=3) == explore.prior_path(50, 4, 5, seed=3)).all()


def test_knot_path_passes_through_its_knots():
    knots = np.random.default_rng(2).normal(size=(5, 3))
    z = explore.knot_path(knots, 4 * 10 + 1, 10)
    assert np.allclose(z[::10], knots, atol=1e-5)


def test_grid_cells_are_one_per_point():
    coords = np.random.default_rng(4).normal(size=(23, 2))
    cells, cols = explore.grid_cells(coords)
    assert cols == 5 and len({tuple(c) for c in cells}) == 23


def test_time_specs():
    assert latent.parse_time_spec("a/film.mp4@12.5") == ("a/film.mp4", 12.5)
    assert latent.parse_time_spec("me@home.png") == ("me@home.png", None)
    assert latent.parse_attribute("Smiling=-1.5") == ("Smiling", -1.5)
    with pytest.raises(CadlError, match="NAME=AMOUNT"):
        latent.parse_attribute("Smiling")
    assert latent.parse_rate("30000/1001") == Fraction(30000, 1001) and latent.parse_rate("29.97") == Fraction("29.97")
    with pytest.raises(CadlError, match="--fps 0"):
        latent.parse_rate("0")


def test_film_sizes():
    assert latent.output_size((16, 16)) == (16, 16)
    assert latent.output_size((16, 24), film={"height": 72}) == (72, 108)  # the film's height, the model's aspect
    assert latent.output_size((16, 16), size=(45, 81)) == (44, 80)        # 4:2:0 needs even sides
    assert latent.output_size((16, 16), size=(45, 81), even=False) == (45, 81)


# ---- on the trained model ----

def test_interpolation_ends_are_the_reconstructions_of_a_and_b(faces, model, film, tmp_path):
    run, data = faces
    a = _record_png(data, 0, tmp_path / "a.png")
    b = latent.read_picture(f"{film}@0.6", (16, 16))
    out = tmp_path / "ab.mkv"
    summary = explore_job.run(["interpolate", "--model", run, "--from", str(tmp_path / "a.png"),
                               "--to", f"{film}@0.6", "--frames", "24", "--output", str(out), "--codec", "ffv1",
                               "--gif"])
    frames = _frames(out)
    assert len(frames) == 24 == summary["frames"] and os.path.isfile(summary["gif"])
    recon = model.reconstruct(np.stack([a, b]))
    assert _psnr(frames[0], recon[0]) >= 35 and _psnr(frames[-1], recon[1]) >= 35
    distance = [np.abs(f.astype(float) - frames[0]).mean() for f in frames]
    assert all(later > earlier for earlier, later in zip(distance, distance[1:]))  # strictly, frame by frame
    assert distance[-1] > 10 * distance[1]
    assert json.load(open(f"{out}.summary.json"))["path"] == "slerp"
    h264 = explore_job.run(["interpolate", "--model", run, "--from", str(tmp_path / "a.png"), "--to",
                            f"{film}@0.6", "--frames", "12", "--output", str(tmp_path / "ab.mp4"), "--crf", "0",
                            "--size", "64x64"])
    first = _frames(tmp_path / "ab.mp4")[0]
    assert h264["width"] == 64 and _psnr(first, latent.fit_frame(recon[0], (64, 64))) >= 35


def test_a_walk_has_the_frames_and_rate_asked_for(faces, film, tmp_path):
    run, data = faces
    out = tmp_path / "walk.mp4"
    summary = explore_job.run(["walk", "--model", run, "--seconds", "1.5", "--fps", "30000/1001", "--seed", "7",
                               "--audio", str(film), "--output", str(out), "--size", "32x32"])
    info = media.probe(out)
    assert info.num_frames == summary["frames"] == round(1.5 * 30000 / 1001)
    assert info.fps == Fraction(30000, 1001) and not info.vfr and (info.width, info.height) == (32, 32)
    assert info.audio_codec == "aac"
    config = tmp_path / "walk.toml"  # flags from a file, as every job takes them
    config.write_text(f'model = "{run}"\ndata = "{data}"\nseconds = 2\nfps = "10"\nsmoothness = 0.5\n')
    through = explore_job.run(["walk", "--config", str(config), "--output", str(tmp_path / "data_walk.mp4")])
    assert through["settings"]["config_file"] == str(config) and through["settings"]["subcommand"] == "walk"
    info = media.probe(tmp_path / "data_walk.mp4")
    assert info.num_frames == 20 and info.fps == 10 and through["through"] == os.path.abspath(data)
    assert len(through["visited"]) == 5  # a dataset frame every 0.5 s: at 0, 0.5, 1, 1.5 and past the end


def test_a_walk_through_a_films_frames_takes_its_rate_and_height(faces, tmp_path):
    from jobs import extract
    film = make_film(tmp_path / "ntsc.mp4", "testsrc2", seconds=1, size=(64, 48), rate="30000/1001", audio=False)
    extract.run(["--input", str(film), "--output", str(tmp_path / "film_data"), "--size", "16x16"])
    summary = explore_job.run(["walk", "--model", faces[0], "--data", str(tmp_path / "film_data"), "--seconds", "1",
                               "--output", str(tmp_path / "walk.mp4")])
    info = media.probe(tmp_path / "walk.mp4")
    assert info.fps == Fraction(30000, 1001) and (info.height, info.width) == (48, 48) == (summary["height"],
                                                                                         summary["width"])
    assert info.num_frames == 30 and {v["source"] for v in summary["visited"]} == {str(film)}


def test_neighbours_of_a_training_frame_start_with_itself(faces, tmp_path):
    run, data = faces
    _record_png(data, 17, tmp_path / "train17.png", split="train")
    summary = explore_job.run(["neighbours", "--model", run, "--data", data, "--input", str(tmp_path / "train17.png"),
                               "--k", "3", "--output", str(tmp_path / "grid.png")])
    [row] = summary["rows"]
    first, second = row["neighbours"][:2]
    assert first["index"] == 17 and first["distance"] < 0.01 * second["distance"]
    assert Image.open(tmp_path / "grid.png").size == (4 * 17 + 1, 18)
    cached = [n for n in os.listdir(os.path.join(run, "explore")) if n.startswith("encodings-")]
    assert len(cached) >= 1


def test_neighbours_of_a_film_is_a_film_with_its_timing(faces, film, tmp_path):
    run, data = faces
    out = tmp_path / "n.mp4"
    summary = explore_job.run(["neighbours", "--model", run, "--data", data, "--input", str(film), "--end", "0.8",
                               "--k", "2", "--output", str(out)])
    info = media.probe(out)
    assert info.num_frames == summary["frames"] == 20 and info.fps == 25
    assert len(summary["rows"]) == 20 and all(len(r["neighbours"]) == 2 for r in summary["rows"])


def test_encodings_are_cached_until_the_dataset_changes(faces, model, tmp_path):
    import shutil
    run, data = faces
    copy = str(tmp_path / "data")
    shutil.copytree(data, copy)
    model_file = latent.load(run)[1]
    first = latent.encode_dataset(model, model_file, copy, "validation")
    names = set(os.listdir(os.path.join(run, "explore")))
    again = latent.encode_dataset(model, model_file, copy, "validation")
    assert set(os.listdir(os.path.join(run, "explore"))) == names and (again.z == first.z).all()
    manifest = mf.read(copy)
    manifest["options"]["note"] = "re-extracted"
    mf.write(copy, manifest)
    latent.encode_dataset(model, model_file, copy, "validation")
    after = set(os.listdir(os.path.join(run, "explore")))
    assert len(after - names) == 1 and len(names - after) == 1  # the new entry replaced the stale one


def _redness(images):
    images = np.asarray(images, np.float64)
    return (images[..., 0] - images[..., 2]).mean(axis=(-1, -2))


def test_the_attribute_vector_moves_the_colour_the_right_way(faces, model, tmp_path):
    run, data = faces
    summary = explore_job.run(["attribute", "--model", run, "--data", data, "--attribute", "Smiling",
                               "--amount=-2..2", "--steps", "5", "--faces", "4", "--output",
                               str(tmp_path / "smile.png")])
    assert summary["with"] > 20 and summary["without"] > 20 and os.path.isfile(summary["saved"])
    montage = np.asarray(Image.open(tmp_path / "smile.png"))
    assert montage.shape == (4 * 17 + 1, 6 * 17 + 1, 3)
    tiles = [[montage[1 + r * 17:17 + r * 17, 1 + c * 17:17 + c * 17] for c in range(6)] for r in range(4)]
    for row in tiles:
        red = [_redness(t) for t in row[1:]]  # amounts -2, -1, 0, 1, 2
        assert all(np.diff(red) > 5) and red[-1] > red[0] + 100, red  # warmer with every step


def _faces_film(data, path):
    """A film of the validation faces without the attribute, enlarged: what render --attribute is given."""
    from pipelines import video_out
    names = mf.read(data)["attribute_names"]
    records = [r for r in mf.read_records(data, "validation") if r["attributes"][names.index("Smiling")] < 0]
    frames = [np.repeat(np.repeat(np.asarray(Image.open(__import__("io").BytesIO(r["image"]))), 4, 0), 4, 1)
              for r in records[:10]]
    fmt = video_out.output_format(str(path))
    return latent.write_video(path, frames, len(frames), (64, 64), 10, fmt).path


@pytest.mark.slow
def test_render_with_an_attribute_applies_it_to_every_frame(faces, tmp_path):
    from jobs import render
    run, data = faces
    film = _faces_film(data, tmp_path / "faces.mp4")
    plain = render.run(["--model", run, "--input", film, "--output", str(tmp_path / "plain.mp4"),
                        "--preset", "ultrafast"])
    smiling = render.run(["--model", run, "--input", film, "--output", str(tmp_path / "smile.mp4"),
                          "--preset", "ultrafast", "--attribute", "Smiling=1.5", "--attribute-data", data])
    n = media.probe(film).num_frames
    assert plain["frames"] == smiling["frames"] == n >= 5 and smiling["attribute"]["amounts"] == {"Smiling": 1.5}
    a, b = _frames(tmp_path / "plain.mp4"), _frames(tmp_path / "smile.mp4")
    assert (_redness(b) > _redness(a) + 10).all()
    # the vector is saved in the run folder: the next render needs no dataset
    again = render.run(["--model", run, "--input", film, "--output", str(tmp_path / "smile2.mp4"),
                        "--preset", "ultrafast", "--attribute", "Smiling=1.5"])
    assert again["frames"] == n and np.abs(_frames(tmp_path / "smile2.mp4").astype(int) - b).max() <= 2


def test_render_attribute_without_a_vector_for_this_model_is_one_line(faces, film, tmp_path, capsys):
    import shutil
    from jobs import render
    model_file = tmp_path / "copy.keras"
    shutil.copy(latent.load(faces[0])[1], model_file)  # a model file with nothing saved next to it
    assert jobs.main(render.run, ["--model", str(model_file), "--input", str(film), "--output",
                                  str(tmp_path / "out.mp4"), "--attribute", "Smiling=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadl: error: ") and "\n" not in err
    assert "attributes.json" in err and "--attribute-data" in err and not os.path.exists(tmp_path / "out.mp4")
    assert jobs.main(render.run, ["--model", str(model_file), "--input", str(film), "--output",
                                  str(tmp_path / "out.mp4"), "--attribute", "Bald=1", "--attribute-data",
                                  faces[1]]) == 2
    assert "no attribute 'Bald'" in capsys.readouterr().err


def test_map_places_one_thumbnail_per_sampled_record(faces, tmp_path):
    run, data = faces
    summary = explore_job.run(["map", "--model", run, "--data", data, "--samples", "30", "--output",
                               str(tmp_path / "map.png")])
    assert summary["samples"] == len(summary["placed"]) == 30
    assert len({p["index"] for p in summary["placed"]}) == 30
    picture = np.asarray(Image.open(tmp_path / "map.png"))
    records = mf.read_records(data, "train")
    for p in summary["placed"]:
        thumb = np.asarray(Image.open(__import__("io").BytesIO(records[p["index"]]["image"])).convert("RGB"))
        assert (picture[p["y"]:p["y"] + 16, p["x"]:p["x"] + 16] == thumb).all()
    scatter = explore_job.run(["map", "--model", run, "--data", data, "--samples", "12", "--layout", "scatter",
                               "--canvas", "128", "--output", str(tmp_path / "scatter.png")])
    assert len(scatter["placed"]) == 12 and Image.open(tmp_path / "scatter.png").size == (128, 128)


# ---- bad input: one line each ----

def _one_line(capsys, argv):
    assert jobs.main(explore_job.run, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadl: error: ") and "\n" not in err
    return err


def test_a_model_without_an_encoder_is_one_line(tmp_path, capsys, faces):
    import keras
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    net.save(tmp_path / "classifier.keras")
    err = _one_line(capsys, ["walk", "--model", str(tmp_path / "classifier.keras"), "--output",
                             str(tmp_path / "w.mp4")])
    assert "classifier.keras" in err and "no encoder" in err and "Sequential" in err


def test_an_attribute_not_in_the_data_is_one_line(faces, tmp_path, capsys):
    run, data = faces
    err = _one_line(capsys, ["attribute", "--model", run, "--data", data, "--attribute", "Bald",
                             "--output", str(tmp_path / "bald.png")])
    assert "manifest.json" in err and "'Bald'" in err and "Smiling, Young" in err


def test_a_time_past_the_end_is_one_line(faces, film, tmp_path, capsys):
    err = _one_line(capsys, ["interpolate", "--model", faces[0], "--from", f"{film}@0.1", "--to", f"{film}@5",
                             "--output", str(tmp_path / "x.mp4")])
    assert str(film) in err and "past the end" in err and "1.200 s" in err
