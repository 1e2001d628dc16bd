"""Each kind of real footage end to end, as a user runs it: extract -> train -> render; and 200 fuzzed films
through a batch extract and a render each. Slow: CI runs them (pytest -m slow)."""
import faulthandler
import os

import pytest

import footage
from jobs import extract, render, train
from pipelines import manifest as mf
from pipelines import media
from pipelines.errors import CadlError
from test_real_footage import fuzzed_films

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kinds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kinds_e2e")


@pytest.mark.parametrize("kind", sorted(footage.KINDS))
def test_each_kind_extracts_trains_and_renders(kind, kinds_dir, tmp_path):
    film = footage.make(kind, kinds_dir)
    expect = footage.KINDS[kind]
    source = media.probe(film)
    decoded, _ = footage.decoded(film)

    extracted = extract.run(["--input", film, "--output", str(tmp_path / "data"), "--size", "16x16",
                             "--validation-block", "0.4", "--validation-fraction", "0.3"])
    assert extracted["records_total"] == decoded  # every frame ffmpeg decodes, once
    manifest = mf.read(str(tmp_path / "data"))
    facts = manifest["sources"][film]
    assert facts["num_frames"] == decoded and facts["rotation"] == expect.rotation
    if kind == "damaged_middle":
        assert facts["lost_frames"]["frames"] == 100 - decoded

    trained = train.run(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
                         "--max-steps", "3", "--batch-size", "4", "--no-progress"])
    assert trained["step"] == 3

    out = tmp_path / ("out.mkv" if kind in ("avi_dropped", "mkv_bframes") else "out.mp4")
    rendered = render.run(["--model", str(tmp_path / "run"), "--input", film, "--output", str(out),
                           "--preset", "ultrafast"])
    result = media.probe(out)
    assert result.num_frames == source.num_frames == rendered["frames"]
    assert result.duration == pytest.approx(source.duration, abs=1.01 / float(source.fps))
    assert result.fps == source.fps and result.vfr == source.vfr
    assert result.has_audio == (expect.audio_tracks > 0)
    # The display aspect a player shows for the source, to the pixel that even sides cost.
    assert result.sar == 1 and result.rotation == 0
    assert abs(result.width / result.height - float(expect.aspect)) <= 2 / min(result.width, result.height)
    if expect.audio_tracks:  # audio where it was against the first frame (a TS starting at 11.4 s too)
        offset = footage.first_time(film, "a:0") - footage.first_time(film, "V:0")
        assert footage.first_time(str(out), "a:0") - footage.first_time(str(out), "V:0") == \
            pytest.approx(offset, abs=0.025)
    if source.vfr:  # each frame keeps its own time
        assert [result.timestamp(i) for i in range(result.num_frames)] == \
            pytest.approx([source.timestamp(i) for i in range(source.num_frames)], abs=1.5e-3)


def test_second_audio_track_on_request(kinds_dir, tmp_path):
    film = footage.make("many_streams", kinds_dir)
    extract.run(["--input", film, "--output", str(tmp_path / "data"), "--size", "16x16"])
    train.run(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
               "--max-steps", "2", "--batch-size", "4", "--no-progress"])
    out = tmp_path / "second.mkv"
    summary = render.run(["--model", str(tmp_path / "run"), "--input", film, "--output", str(out),
                          "--preset", "ultrafast", "--audio-track", "1"])
    assert summary["audio_track"] == 1 and len(media.probe(out).audio_tracks) == 1  # one track, no subtitles
    with pytest.raises(CadlError, match="--audio-track 2: the film has 2 audio tracks"):
        render.run(["--model", str(tmp_path / "run"), "--input", film, "--output", str(tmp_path / "x.mp4"),
                    "--audio-track", "2"])


def test_fuzzed_films_through_extract_and_render(kinds_dir, tmp_path):
    faulthandler.dump_traceback_later(1500, exit=True)  # a hang fails the run instead of blocking it
    try:
        folder = tmp_path / "fuzz"
        folder.mkdir()
        films = fuzzed_films(folder, kinds_dir)
        summary = extract.run(["--input", str(folder), "--output", str(tmp_path / "data"), "--size", "16x16",
                               "--stall-seconds", "20"])
        manifest = mf.read(str(tmp_path / "data"))
        kept = {p for p, s in manifest["sources"].items() if s["count"] > 0}
        skipped = {s["input"]: s["reason"] for s in manifest["skipped"]}
        assert kept | set(skipped) == set(films) and not kept & set(skipped)  # each one accounted for, once
        assert all(reason and "\n" not in reason and "Traceback" not in reason for reason in skipped.values())
        assert summary["records_total"] == sum(manifest["sources"][p]["count"] for p in kept)
        assert len(kept) > 50

        train.run(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
                   "--max-steps", "2", "--no-progress"])
        rendered = refused = 0
        for film in films:
            out = tmp_path / "renders" / (os.path.basename(film) + ".mp4")
            out.parent.mkdir(exist_ok=True)
            try:
                result = render.run(["--model", str(tmp_path / "run"), "--input", film, "--output", str(out),
                                     "--preset", "ultrafast", "--stall-seconds", "20"])
                assert result["frames"] == media.probe(film).num_frames == media.probe(out).num_frames
                rendered += 1
            except CadlError as e:
                assert "\n" not in str(e) and not out.exists(), str(e)
                refused += 1
        assert rendered + refused == len(films) and rendered >= len(kept) * 0.9
    finally:
        faulthandler.cancel_dump_traceback_later()
