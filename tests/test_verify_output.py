"""Never trust a runner's "done": what a pipeline wrote is read back before anything is published. The shards
must hold exactly the records their writers counted (checksums intact), and those must be the records the
decoders counted, per split and per source; otherwise one line, and the old dataset stays as it was."""
import os

import pytest

from jobs import extract
from pipelines import extract_beam, schema
from pipelines.errors import CadlError
from pipelines.sources import Input
from pipelines.synthetic import make_film
from test_publish import _tree


def _shard(folder, name, sources):
    shard = schema.TFRecordFile(str(folder / name))
    for source, n in sources.items():
        for i in range(n):
            shard.write(f"{source}\t{i:010d}", f"{source}-{i}".encode() * 20)
    return shard.close()


def _report(tmp_path):
    a = _shard(tmp_path, "a.tfrecord", {"/films/one.mp4": 5, "/films/two.mp4": 2})
    b = _shard(tmp_path, "b.tfrecord", {"/films/two.mp4": 3})
    return ({"counts": {"/films/one.mp4": 5, "/films/two.mp4": 5}, "parts": {"train": [a], "validation": [b]}},
            [Input("/films/one.mp4", "film", 1, 0.0, "one.mp4"), Input("/films/two.mp4", "film", 1, 0.0, "two.mp4")])


def test_a_report_that_adds_up_is_verified(tmp_path):
    tallied, inputs = _report(tmp_path)
    assert extract_beam.verify(tallied, inputs, "", "out") == {"train": 7, "validation": 3}


@pytest.mark.parametrize("damage, message", [
    ("truncate", "a.tfrecord: record 6 .* is cut off"),
    ("flip", "a.tfrecord: record 0 fails its checksum"),
    ("delete", "a.tfrecord: .*No such file"),
    ("overcount", "a.tfrecord holds 7 records, its writer counted 8"),
    ("twice", "a shard was reported twice"),
    ("lost", "10 decoded"),
    ("source", "/films/one.mp4: 5 records written, 6 decoded"),
])
def test_a_report_that_does_not_add_up_is_one_line(tmp_path, damage, message):
    tallied, inputs = _report(tmp_path)
    a = tallied["parts"]["train"][0]
    if damage == "truncate":
        os.truncate(a["path"], os.path.getsize(a["path"]) - 3)
    elif damage == "flip":
        data = bytearray(open(a["path"], "rb").read())
        data[20] ^= 0xFF
        open(a["path"], "wb").write(bytes(data))
    elif damage == "delete":
        os.remove(a["path"])
    elif damage == "overcount":
        a["count"] = 8
    elif damage == "twice":
        tallied["parts"]["validation"].append(dict(a))
    elif damage == "lost":
        tallied["parts"]["validation"] = []
    elif damage == "source":
        tallied["counts"] = {"/films/one.mp4": 6, "/films/two.mp4": 4}
    with pytest.raises(CadlError, match=message) as e:
        extract_beam.verify(tallied, inputs, "", "out")
    assert "\n" not in str(e.value) and "nothing was published" in str(e.value)


def test_records_lost_after_the_runner_said_done_publish_nothing(tmp_path, monkeypatch):
    film = make_film(tmp_path / "f.mp4", seconds=2, size=(96, 64), audio=False)
    out = tmp_path / "data"
    extract.run(["--input", str(film), "--output", str(out), "--size", "16x16"])
    before = _tree(out)
    read = extract_beam.read_results

    def read_then_lose_a_record(tmp_dir, size):  # a runner that said DONE over a shard short of a record
        report, moments = read(tmp_dir, size)
        part = next(r[2] for r in report if r[0] == "part" and r[2]["count"])
        os.truncate(part["path"], os.path.getsize(part["path"]) - 1)
        return report, moments

    monkeypatch.setattr(extract_beam, "read_results", read_then_lose_a_record)
    with pytest.raises(CadlError, match="does not add up .*is cut off") as e:
        extract.run(["--input", str(film), "--output", str(out), "--size", "16x16"])
    assert str(e.value).startswith(str(out)) and "\n" not in str(e.value)
    assert _tree(out) == before  # the dataset from before, untouched; no work folder left


def test_an_unknown_runner_is_one_line_and_leaves_no_work_folder(tmp_path):
    film = make_film(tmp_path / "f.mp4", seconds=1, size=(96, 64), audio=False)
    with pytest.raises(CadlError, match="--runner NoSuchRunner: not a runner Beam knows"):
        extract.run(["--input", str(film), "--output", str(tmp_path / "data"), "--runner", "NoSuchRunner"])
    assert not [n for n in os.listdir(tmp_path / "data") if n.startswith(".cadl-extract-")]


def test_a_render_segment_short_of_frames_after_the_runner_said_done_is_one_line(tiny_run, short_film, tmp_path,
                                                                                 monkeypatch):
    from pipelines import render as render_stage
    from pipelines.render import RenderConfig

    real = render_stage.render_with_beam

    def render_then_lose_a_frame(plan, model_path, pending, beam_args):
        real(plan, model_path, pending, beam_args)
        folder = plan.segment_path(pending[-1])  # a PNG sequence: one folder of pictures per segment
        os.remove(os.path.join(folder, sorted(os.listdir(folder))[-1]))

    monkeypatch.setattr(render_stage, "render_with_beam", render_then_lose_a_frame)
    out = tmp_path / "frames"
    with pytest.raises(CadlError, match=r"the Beam pipeline left \d+ frames of this segment's \d+"):
        render_stage.render(RenderConfig(model=tiny_run, input=str(short_film), output=str(out),
                                         segment_seconds=1.0, runner="DirectRunner"))
    assert not out.exists()
