"""The extraction pipeline's pieces: the TensorFlow-free record encoder and TFRecord writer, the split rules,
and each DoFn / PTransform run in memory with TestPipeline."""
import dataclasses
import os
from fractions import Fraction

import apache_beam as beam
import cv2
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import extract_decode as decode
from pipelines import media, schema, sources
from pipelines.extract import ExtractConfig
from pipelines.extract_beam import WriteShards
from pipelines.extract_decode import DecodeFilmSegment, DecodeStills, SegmentFilm, Settings
from pipelines.schema import RecordEncoder, TFRecordFile
from pipelines.synthetic import make_film


def settings(tmp_path=None, **overrides):
    """The workers' settings for a config of ``overrides`` (ExtractConfig's fields) writing into ``tmp_path``."""
    base = dict(size=(18, 32), fit="crop", format="png", validation_fraction=0.0, segment_seconds=0.5)
    base.update(overrides)
    return Settings(ExtractConfig(inputs=(), output="", **base), tmp_dir=str(tmp_path or ""))


def pipeline():
    # FnApiRunner: TestPipeline's default DirectRunner would first try Prism, which needs a download.
    return BeamTestPipeline(runner=FnApiRunner())


@pytest.mark.parametrize("values", [
    dict(source="/films/a.mp4", frame_index=123456, timestamp=4.92, split="validation", attributes=()),
    dict(source="000001.jpg", frame_index=0, timestamp=0.0, split="test", attributes=(-1, 1, 1, -1)),
    dict(source="ünïcödé.png", frame_index=2 ** 40, timestamp=1e-3, split="train", attributes=(1,)),
])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_encoder_writes_the_schemas_example(values, fmt):
    s = settings(size=(72, 128), format=fmt)
    image = bytes(range(256)) * 3
    ours = RecordEncoder.encode(RecordEncoder(s.config.size, s.config.format).prefix(values["source"], values["split"], values["attributes"]),
                                image, values["frame_index"], values["timestamp"])
    theirs = schema.encode_record(image, fmt=fmt, height=72, width=128, channels=3, **values)
    assert tf.train.Example.FromString(ours) == tf.train.Example.FromString(theirs)
    decoded = schema.decode_record(ours)
    assert decoded["image"] == image and decoded["source"] == values["source"]
    assert decoded["attributes"] == list(values["attributes"])
    parsed = schema.parse_records(tf.constant([ours]))
    assert int(parsed["frame_index"][0]) == values["frame_index"] and parsed["split"][0].numpy().decode() == \
        values["split"]


def test_encoder_refuses_a_schema_it_does_not_know():
    with pytest.raises(ValueError, match="features"):
        RecordEncoder((18, 32), "png", feature_names=schema.FEATURE_NAMES + ("depth",))


@pytest.mark.parametrize("shape", [(64, 64), (1, 1), (3, 200), (72, 128)])
def test_png_records_decode_to_the_same_pixels_everywhere(shape):
    """cadl writes its own PNGs: TensorFlow (training), OpenCV and Pillow must read back the very pixels, and
    the bytes must stay compact (the "up" filter and run-length deflate, as libpng would write them)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(sum(shape))
    h, w = shape
    smooth = np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8)
    for rgb in (smooth, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.zeros((h, w, 3), np.uint8)):
        data = decode.encode_png(rgb)
        assert np.array_equal(tf.io.decode_png(data, channels=3).numpy(), rgb)
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], rgb)
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), rgb)
        libpng = cv2.imencode(".png", rgb[..., ::-1].copy(), [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
                                                               cv2.IMWRITE_PNG_STRATEGY,
                                                               cv2.IMWRITE_PNG_STRATEGY_RLE])[1]
        assert len(data) <= len(libpng) * 1.02 + 16
    assert len(decode.encode_png(np.zeros((h, w, 3), np.uint8))) < 100 + h * 8  # runs compress


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tfrecord_file_is_read_by_tensorflow(tmp_path, compression):
    path = str(tmp_path / ("x.tfrecord" + (".gz" if compression else "")))
    records = [os.urandom(n) for n in (0, 1, 100, 70000)]
    shard = TFRecordFile(path, compression)
    for i, r in enumerate(records):
        shard.write(f"k{i}", r)
    part = shard.close()
    assert part["count"] == 4 and part["first_key"] == "k0"
    read = [x.numpy() for x in tf.data.TFRecordDataset(path, compression_type=compression or None)]
    assert read == records


def test_split_rules_are_stable():
    assert 0 <= decode.unit_hash("a", 1) < 1 and decode.unit_hash("a", 1) == decode.unit_hash("a", 1)
    assert decode.unit_hash("a", 1) != decode.unit_hash("a", 2)
    shares = [decode.still_split(f"dir/{i}.jpg", 0.25) for i in range(4000)]
    assert 0.22 < shares.count("validation") / 4000 < 0.28
    blocks = decode.validation_blocks("film.mp4", 400.0, 4.0, 0.05)
    assert 1 <= len(blocks) <= 15 and blocks == decode.validation_blocks("film.mp4", 400.0, 4.0, 0.05)
    assert decode.validation_blocks("film.mp4", 3.0, 4.0, 0.05) <= {0}     # one block: maybe none
    assert len(decode.validation_blocks("x.mp4", 8.0, 4.0, 1e-9)) == 1    # two blocks: at least one
    assert decode.validation_blocks("x.mp4", 8.0, 4.0, 0.0) == frozenset()


def test_pts_window_answers_like_the_full_list(short_film):
    info = media.probe(short_film)
    window = decode._PtsWindow(info.pts, 29, 41)
    assert len(window) == len(info.pts) and window[0] == info.pts[0]
    assert window[30:41] == info.pts[30:41] and window[29] == info.pts[29] and window[40] == info.pts[40]
    with pytest.raises(IndexError):
        window[45]


def film_input(path):
    [item], _ = sources.discover([path])
    return item


@pytest.fixture(scope="module")
def gop_film(tmp_path_factory):
    """3 s at 25 fps with a keyframe every 10 frames."""
    return make_film(tmp_path_factory.mktemp("gop") / "gop.mp4", "testsrc2", seconds=3, size=(96, 54),
                     rate="25", audio=False, extra_video_args=("-g", "10"))


def test_keyframes_and_cheap_segment_starts(gop_film, short_film):
    info = media.probe(gop_film)
    keys = info.keyframes
    assert keys == tuple(range(0, 75, 10))
    # Each segment after the first starts on the frame after a keyframe (one wasted frame to decode), and
    # lasts at least the asked length; together they cover the range exactly once.
    ranges = media.keyframe_segments(info, keys, 0.5, 0, 75)
    assert ranges == [(0, 21), (21, 41), (41, 61), (61, 75)]
    assert media.keyframe_segments(info, keys, 0.3, 5, 70) == [(5, 21), (21, 31), (31, 41), (41, 51), (51, 61),
                                                                  (61, 70)]
    # Without keyframe information: by time, as VideoInfo.segments.
    assert media.keyframe_segments(info, [], 0.5, 0, 75) == info.segments(0.5)
    # x264's default GOP (250 frames) is longer than the 75-frame fixture: one segment, no wasted decoding.
    short = media.probe(short_film)
    assert media.keyframe_segments(short, short.keyframes, 0.5, 0, 75) == [(0, 75)]


def _film_info(width, height, seconds, rate=25, key_every=250):
    """The facts of a constant-rate film as probe gives them (no file needed to cut it)."""
    n = int(seconds * rate)
    return media.VideoInfo(path="f.avi", width=width, height=height, time_base=Fraction(1, rate),
                           pts=tuple(range(n)), fps=Fraction(rate), vfr=False, duration=n / rate,
                           video_codec="mpeg4", audio_codec=None, size_bytes=0, mtime=0.0, coded_width=width,
                           coded_height=height, keyframes=tuple(range(0, n, key_every)))


def test_segments_sized_by_work_and_workers():
    film = _film_info(768, 576, 300)   # the kind of film: 7,500 frames of 768x576
    cut = lambda info, workers: media.keyframe_segments(
        info, info.keyframes, decode.segment_seconds(info, 0, info.num_frames, workers), 0, info.num_frames)
    # Two workers: two work items each (not the 30 that 10 s pieces gave), cut after keyframes, covering it.
    ranges = cut(film, 2)
    assert len(ranges) == 4 and ranges[0][0] == 0 and ranges[-1][1] == 7500
    assert all(a == b for (_, a), (b, _) in zip(ranges, ranges[1:]))
    assert all(a - 1 in film.keyframes for a, _ in ranges[1:])
    # Workers not known (a remote runner): as many items as hold SEGMENT_PIXELS each, no fewer seconds than 10.
    assert len(cut(film, 0)) == 7500 * 768 * 576 // decode.SEGMENT_PIXELS == 6
    # Less work than one item per worker: one item, not four tiny ones; a short film is never cut under 10 s.
    assert len(cut(_film_info(160, 120, 300), 2)) == 1
    assert decode.segment_seconds(_film_info(1920, 1080, 4), 0, 100, 64) == decode.AUTO_SEGMENT_SECONDS
    # An odd count would leave a worker idle at the end: a multiple of the workers.
    assert len(cut(_film_info(640, 360, 300), 2)) == 2
    # With segment_seconds given, it decides alone (tests below cut 3 s films in 0.5 s pieces).
    assert ExtractConfig(inputs=(), output="", segment_seconds=None).segment_seconds is None
    # The workers counted are the local runner's; another runner's are not known here.
    from pipelines.extract_beam import local_workers, pipeline_options
    assert local_workers(*pipeline_options([])) == (os.cpu_count() or 1)
    assert local_workers(*pipeline_options(["--direct_num_workers", "3"])) == 3
    assert local_workers(*pipeline_options(["--runner", "DirectRunner"])) == 0


def test_segment_film_sized_by_work_gives_a_short_film_one_item(gop_film, tmp_path):
    s = dataclasses.replace(settings(tmp_path, segment_seconds=None), workers=2)
    with pipeline() as p:
        planned = p | beam.Create([film_input(gop_film)]) | beam.ParDo(SegmentFilm(s)).with_outputs(
            "report", main="segments")
        ranges = planned.segments | beam.Map(lambda seg: (seg["start"], seg["stop"]))
        assert_that(ranges, equal_to([(0, 75)]))


def test_segment_film_covers_the_film_with_segments(gop_film, tmp_path):
    s = settings(tmp_path)
    expected = [(0, 21), (21, 41), (41, 61), (61, 75)]
    with pipeline() as p:
        planned = p | beam.Create([film_input(gop_film)]) | beam.ParDo(SegmentFilm(s)).with_outputs(
            "report", main="segments")
        ranges = planned.segments | beam.Map(lambda seg: (seg["start"], seg["stop"]))
        assert_that(ranges | beam.combiners.ToList() | beam.Map(sorted), equal_to([expected]))
        kinds = planned.report | beam.Map(lambda r: (r[0], r[1], r[2]["num_frames"], r[2]["segments"]))
        assert_that(kinds, equal_to([("facts", str(gop_film), 75, 4)]), label="facts")


def test_segment_film_counts_bad_films(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01" * 1000)
    p = pipeline()
    planned = p | beam.Create([film_input(bad)]) | beam.ParDo(SegmentFilm(settings(tmp_path))).with_outputs(
        "report", main="segments")
    assert_that(planned.report | beam.Map(lambda r: (r[0], r[1])), equal_to([("skip", str(bad))]))
    assert_that(planned.segments, equal_to([]), label="no segments")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("bad_inputs"))["counters"]
    assert sum(c.committed for c in counters) == 1


def test_decode_segments_give_each_frame_once(gop_film, tmp_path):
    s = settings(tmp_path, every=2)
    with pipeline() as p:
        decoded = (p | beam.Create([film_input(gop_film)])
                   | beam.ParDo(SegmentFilm(s)).with_outputs("report", main="segments")).segments \
            | beam.Reshuffle() | beam.ParDo(DecodeFilmSegment(s)).with_outputs("report", "moments", main="records")
        keys = decoded.records | beam.Map(lambda r: (r[0], int(r[1].rsplit("\t", 1)[1])))
        assert_that(keys, equal_to([("train", i) for i in range(0, 75, 2)]))
        counts = decoded.report | beam.Filter(lambda r: r[0] == "count") | beam.Map(lambda r: r[2]) \
            | beam.CombineGlobally(sum)
        assert_that(counts, equal_to([38]), label="counts")
        frames = (decoded.moments | beam.Map(lambda m: (m[0], m[1].shape)) | beam.combiners.ToList()
                  | beam.Map(lambda ms: (sum(m[0] for m in ms), sorted({m[1] for m in ms}))))
        assert_that(frames, equal_to([(38, [(18, 32, 3)])]), label="moments")


def test_decode_stills_encodes_and_reports(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((30, 50, 3), 200, np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8junk")
    items, _ = sources.discover([good, bad])
    s = settings(tmp_path, format="jpeg", quality=80)
    with pipeline() as p:
        out = p | beam.Create([{"kind": "image", "items": items}]) | beam.ParDo(DecodeStills(s)).with_outputs(
            "report", "moments", main="records")
        shapes = out.records | beam.Map(lambda r: (r[0], schema.decode_record(r[2])["format"], cv2.imdecode(
            np.frombuffer(schema.decode_record(r[2])["image"], np.uint8), cv2.IMREAD_COLOR).shape))
        assert_that(shapes, equal_to([("train", "jpeg", (18, 32, 3))]))
        assert_that(out.report, equal_to([("skip", str(bad), "not a readable image"), ("count", str(good), 1)]),
                    label="report")


def test_write_shards_rolls_over_and_reports_parts(tmp_path):
    s = settings(tmp_path, shard_mb=1000 / 2 ** 20)
    records = [("train" if i % 3 else "validation", f"k{i:03d}", bytes([i]) * 300) for i in range(30)]
    with pipeline() as p:
        parts = p | beam.Create(records) | beam.ParDo(WriteShards(s))
        totals = parts | beam.Map(lambda part: (part[1], part[2]["count"])) | beam.CombinePerKey(sum)
        assert_that(totals, equal_to([("train", 20), ("validation", 10)]))
    written = sorted(os.listdir(tmp_path))
    assert len(written) >= 30 * 316 // 1316  # every file closed at ~1000 bytes
    read = sorted(r.numpy() for name in written for r in tf.data.TFRecordDataset(str(tmp_path / name)))
    assert read == sorted(r[2] for r in records)


def test_moments_are_exact_past_the_uint32_fold(monkeypatch):
    monkeypatch.setattr(decode._Moments, "_FOLD_EVERY", 7)
    rng = np.random.default_rng(3)
    pictures = rng.integers(0, 256, (20, 5, 4, 3), dtype=np.uint8)
    pictures[:10] = 255  # the worst case for the squares
    moments = decode._Moments((5, 4))
    for p in pictures:
        moments.add(p[..., ::-1][..., ::-1])  # also a non-contiguous view, as the stills path passes
    count, total, squares = moments.value()
    wide = pictures.astype(np.int64)
    assert count == 20 and np.array_equal(total, wide.sum(0)) and np.array_equal(squares, (wide * wide).sum(0))
    assert total.dtype == squares.dtype == np.int64
