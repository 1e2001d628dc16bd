"""The extraction pipeline (Apache Beam): inputs -> decoded, fitted, encoded pictures -> TFRecord shards.

    films   Create -> SegmentFilm (probe, sampling, validation blocks, segments cut after keyframes)
                   -> Reshuffle -> DecodeFilmSegment (ffmpeg decodes and scales one segment)
    stills  Create(batches of images / CelebA index ranges) -> DecodeStills
    both    -> WriteShards (rolling ~shard_mb temp files per bundle, or exactly num_shards via a shuffle)
            + "report" (per-input facts, skipped inputs, written parts) and "moments" (per-pixel sums)
              combined globally and written into the run's temp folder for the driver to finalize.

The decoders are in ``pipelines.extract_decode``; this module holds the PTransforms that join them, the
writers, the runner's options, and the reading back of what the pipeline leaves in the temp folder.

Create itself reshuffles several elements, so films and still batches spread over the workers. Records never
pass through a shuffle in the default sharding: they are written by the worker that decoded them. Shards and
the run's report are written with ``FileSystems.create`` (any filesystem Beam knows).
"""
import io
import json
import os
import threading
import uuid

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipelines.extract_decode import DecodeFilmSegment, DecodeStills, SegmentFilm, merge_lost, unit_hash
from pipelines.schema import TFRecordFile, count_tfrecords

REPORT = "report.json"           # written into the run's temp folder by the pipeline, read by the driver
MOMENTS = "moments.npz"
STILLS_PER_ITEM = 64             # images per work item: amortizes per-element overhead, still spreads well
# Set by a driver that was interrupted (Ctrl-C, SIGTERM): its in-process workers, still running their
# bundles, stop writing into the work folder the driver is removing.
CANCELLED = threading.Event()


class _Discard:
    """What a cancelled run's workers write into: nothing (no error either: the driver is already gone)."""
    count = bytes = 0
    path = first_key = None

    def write(self, key, record):
        pass

    def close(self):
        return {"path": None, "count": 0, "bytes": 0, "first_key": None, "sources": {}}


class MomentsFn(beam.CombineFn):
    """Sums (count, sum, sumsq) triples; the empty result is count 0 with zero arrays."""

    def __init__(self, size, channels=3):
        self.shape = tuple(size) + (channels,)

    def create_accumulator(self):
        return (0, None, None)

    def add_input(self, acc, value):
        return self.merge_accumulators([acc, value])

    def merge_accumulators(self, accumulators):
        count, total, squares = 0, None, None
        for c, s, q in accumulators:
            if not c:
                continue
            count += c
            total = s.copy() if total is None else total + s
            squares = q.copy() if squares is None else squares + q
        return (count, total, squares)

    def extract_output(self, acc):
        count, total, squares = acc
        if total is None:
            total, squares = np.zeros(self.shape, np.int64), np.zeros(self.shape, np.int64)
        return (count, total, squares)


class WriteShards(beam.DoFn):
    """Records -> temp shard files of about ``shard_bytes``, one open file per split per bundle; each closed
    file is reported as a "part" when its bundle finishes (so a retried bundle's files are never counted)."""

    def __init__(self, settings):
        self.settings = settings

    def start_bundle(self):
        self.open, self.parts = {}, []

    def process(self, element):
        split, key, record = element
        shard = self.open.get(split)
        if shard is not None and shard.bytes >= self.settings.shard_bytes:
            self.parts.append((split, shard.close()))
            shard = None
        if shard is None:
            shard = self.open[split] = _new_shard(self.settings, split)
        shard.write(key, record)

    def finish_bundle(self):
        for split, shard in self.open.items():
            self.parts.append((split, shard.close()))
        for split, part in self.parts:
            yield GlobalWindows.windowed_value(("part", split, part))
        self.open, self.parts = {}, []


def _new_shard(settings, split):
    if CANCELLED.is_set():
        return _Discard()
    return TFRecordFile(FileSystems.join(settings.tmp_dir, f"{split}-{uuid.uuid4().hex}{settings.suffix}"),
                        settings.compression)


class WriteShardGroup(beam.DoFn):
    """((split, shard), [(key, record), ...]) -> one temp shard, records sorted by key."""

    def __init__(self, settings):
        self.settings = settings

    def process(self, element):
        (split, shard_index), records = element
        shard = _new_shard(self.settings, split)
        for key, record in sorted(records):
            shard.write(key, record)
        part = shard.close()
        part["shard"] = shard_index
        yield "part", split, part


class WriteFile(beam.DoFn):
    """Writes its single input into ``path`` (JSON for the report, .npz for the moments)."""

    def __init__(self, path):
        self.path = path

    def process(self, value):
        if self.path.endswith(".npz"):
            buffer = io.BytesIO()
            count, total, squares = value
            np.savez(buffer, count=np.int64(count), sum=total, sumsq=squares)
            data = buffer.getvalue()
        else:
            data = json.dumps(value, sort_keys=True).encode()
        if CANCELLED.is_set():
            return
        with FileSystems.create(self.path) as f:
            f.write(data)


# -- the pipeline ----------------------------------------------------------------------------------------
class ExtractRecords(beam.PTransform):
    """PBegin -> (records, reports, moments) for the given inputs (``sources.Input``) and CelebA batches."""

    def __init__(self, settings, films=(), images=(), celeba_batches=()):
        super().__init__()
        self.settings, self.films, self.images, self.celeba_batches = settings, list(films), list(images), \
            list(celeba_batches)

    def expand(self, pbegin):
        s, records, reports, moments = self.settings, [], [], []
        if self.films:
            # Create already reshuffles its elements (when there are several), spreading films over workers.
            planned = (pbegin | "Films" >> beam.Create(self.films)
                       | "Plan segments" >> beam.ParDo(SegmentFilm(s)).with_outputs("report", main="segments"))
            decoded = (planned.segments
                       | "Spread segments" >> beam.Reshuffle()
                       | "Decode segments" >> beam.ParDo(DecodeFilmSegment(s)).with_outputs(
                           "report", "moments", main="records"))
            records.append(decoded.records)
            reports += [planned.report, decoded.report]
            moments.append(decoded.moments)
        batches = [{"kind": "image", "items": self.images[i:i + STILLS_PER_ITEM]}
                   for i in range(0, len(self.images), STILLS_PER_ITEM)] + list(self.celeba_batches)
        batches = [dict(b, number=i, of=len(batches)) for i, b in enumerate(batches, 1)]
        if batches:
            stills = (pbegin | "Still batches" >> beam.Create(batches)
                      | "Decode stills" >> beam.ParDo(DecodeStills(s)).with_outputs("report", "moments",
                                                                                   main="records"))
            records.append(stills.records)
            reports.append(stills.report)
            moments.append(stills.moments)
        flat = lambda pcolls, label: pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | label >> beam.Flatten()
        return flat(records, "All records"), flat(reports, "All reports"), flat(moments, "All moments")


class WriteDataset(beam.PTransform):
    """(records, reports, moments) -> temp shards + ``report.json`` + ``moments.npz`` in ``settings.tmp_dir``."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def expand(self, pcolls):
        records, reports, moments = pcolls
        s = self.settings
        if s.config.num_shards > 0:
            n = s.config.num_shards
            parts = (records
                     | "Key by shard" >> beam.Map(lambda r: ((r[0], int(unit_hash(r[1]) * n)), (r[1], r[2])))
                     | "Group shards" >> beam.GroupByKey()
                     | "Write shards" >> beam.ParDo(WriteShardGroup(s)))
        else:
            parts = records | "Write shards" >> beam.ParDo(WriteShards(s))
        (((reports, parts) | "Reports and parts" >> beam.Flatten())
         | "Collect report" >> beam.combiners.ToList()
         | "Write report" >> beam.ParDo(WriteFile(FileSystems.join(s.tmp_dir, REPORT))))
        (moments
         | "Sum moments" >> beam.CombineGlobally(MomentsFn(s.config.size))
         | "Write moments" >> beam.ParDo(WriteFile(FileSystems.join(s.tmp_dir, MOMENTS))))
        return parts


def celeba_batches(dataset, per_item=256):
    """CelebA(root) -> work items of ``per_item`` images, as index ranges into ``dataset.names``: workers read
    the names, partition and attributes themselves, so the pipeline's graph stays small (no 200,000-row
    Create, which remote runners limit)."""
    n = len(dataset.names)
    return [{"kind": "celeba", "root": dataset.root, "start": i, "stop": min(n, i + per_item), "total": n}
            for i in range(0, n, per_item)]


def read_results(tmp_dir, size):
    """The pipeline's report (list of tuples) and moments dict, read back by the driver."""
    with FileSystems.open(FileSystems.join(tmp_dir, REPORT)) as f:
        report = [tuple(r) for r in json.loads(f.read().decode())]
    with FileSystems.open(FileSystems.join(tmp_dir, MOMENTS)) as f:
        with np.load(io.BytesIO(f.read())) as z:
            moments = {"count": int(z["count"]), "sum": z["sum"], "sumsq": z["sumsq"]}
    return report, moments


def tally(report):
    """The pipeline's report (``read_results``) by kind: {"facts": {input: facts}, "counts": {input: records},
    "bad": {input: reason}, "partial": {input: reason a stretch failed}, "lost": {input: lost frames},
    "parts": {split: [part, ...]}, "workers": {"host:pid": film segments decoded}}. The first reason reported for an input is the one kept."""
    out = {k: {} for k in ("facts", "counts", "bad", "partial", "lost", "parts", "workers")}
    for entry in report:
        kind = entry[0]
        if kind == "facts":
            out["facts"][entry[1]] = entry[2]
        elif kind == "count":
            out["counts"][entry[1]] = out["counts"].get(entry[1], 0) + entry[2]
        elif kind == "skip":
            out["bad"].setdefault(entry[1], entry[2])
        elif kind == "segment_error":
            out["partial"].setdefault(entry[1], entry[2])
        elif kind == "lost":
            out["lost"][entry[1]] = merge_lost(out["lost"].get(entry[1]), entry[2])
        elif kind == "part":
            out["parts"].setdefault(entry[1], []).append(entry[2])
        elif kind == "worker":
            out["workers"][entry[1]] = out["workers"].get(entry[1], 0) + entry[2]
    return out


def verify(tallied, inputs, compression, where):
    """Never trust a runner's "done": the parts the pipeline reported must be files holding exactly the records
    their writers counted, and the records written must be exactly the records the decoders counted, per split
    and per source (films and stills by path, a CelebA root as a whole). ``tallied`` is ``tally``'s result,
    ``inputs`` the run's ``sources.Input`` list. Raises ``CadlError`` naming the first difference."""
    from pipelines.errors import CadlError

    def fail(problem):
        raise CadlError(f"{where}: the Beam runner's result does not add up ({problem}); nothing was published "
                        "(run again; if it persists, the runner loses or repeats records)")

    written, split_counts = {}, {}
    paths = [part["path"] for group in tallied["parts"].values() for part in group if part["count"]]
    if len(set(paths)) != len(paths):
        fail("a shard was reported twice")
    for split, group in tallied["parts"].items():
        for part in group:
            if not part["count"]:
                continue
            try:
                held = count_tfrecords(part["path"], compression)
            except (OSError, ValueError) as e:
                fail(f"{part['path']}: {e}")
            if held != part["count"]:
                fail(f"{part['path']} holds {held} records, its writer counted {part['count']}")
            split_counts[split] = split_counts.get(split, 0) + held
            for source, n in part.get("sources", {}).items():
                written[source] = written.get(source, 0) + n
    counted = tallied["counts"]
    if sum(split_counts.values()) != sum(counted.values()):
        fail(f"{sum(split_counts.values())} records in the shards ({', '.join(f'{k} {v}' for k, v in sorted(split_counts.items()))}), "
             f"{sum(counted.values())} decoded")
    by_path = {i.path for i in inputs if i.kind != "celeba"}
    for path in sorted(by_path):
        if written.get(path, 0) != counted.get(path, 0):
            fail(f"{path}: {written.get(path, 0)} records written, {counted.get(path, 0)} decoded")
    roots = sum(n for path, n in counted.items() if path not in by_path)
    if sum(n for source, n in written.items() if source not in by_path) != roots:
        fail("the CelebA records written differ from those decoded")
    return split_counts


def pipeline_options(beam_args):
    """Beam options from the pass-through options, and the runner to use (None: the one the options name).

    ``--runner DaskRunner``: cadl's Dask runner (``pipelines.dask_runner``). Without --runner: the FnApiRunner (what DirectRunner uses for batch, minus the Prism attempt) with one
    worker per core. On up to 4 cores the workers are threads: decoding runs in ffmpeg processes and OpenCV's
    encoders release the GIL, and worker processes would each pay Beam's start-up (measured on 2 cores:
    threads were faster, start-up included). On more cores, the Python per frame that holds the GIL would cap
    threads near what about 4 ffmpeg decoders deliver, so the workers are processes (figures in
    benchmarks/extract_bench.py).
    """
    from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions,
                                                      WorkerOptions)

    options = PipelineOptions(list(beam_args))
    runner = options.view_as(StandardOptions).runner
    if runner:
        from pipelines import dask_runner
        return options, (dask_runner.make() if dask_runner.is_dask(runner) else None)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    direct = options.view_as(DirectOptions)
    given = " ".join(beam_args)
    cores = os.cpu_count() or 1
    if "--direct_num_workers" not in given:
        direct.direct_num_workers = cores
    if "--direct_running_mode" not in given:
        direct.direct_running_mode = ("in_memory" if direct.direct_num_workers == 1 else
                                      "multi_threading" if cores <= 4 else "multi_processing")
    if "--default_sdk_harness_log_level" not in given:
        # Worker processes log every channel they open at INFO; problems still show.
        options.view_as(WorkerOptions).default_sdk_harness_log_level = "WARNING"
    return options, FnApiRunner()


def local_workers(options, runner):
    """How many workers decode with ``pipeline_options``'s result: the local runner's; 0 for any other (not
    known here)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if not isinstance(runner, FnApiRunner) or options.view_as(StandardOptions).runner:
        return 0
    return max(1, options.view_as(DirectOptions).direct_num_workers or 1)


def make_pipeline(runner, options):
    """``beam.Pipeline(runner, options)``; a runner Beam does not know is one line naming it."""
    try:
        return beam.Pipeline(runner=runner, options=options)
    except ValueError as e:
        if "Unexpected pipeline runner" not in str(e):
            raise
        from apache_beam.options.pipeline_options import StandardOptions

        from pipelines.errors import CadlError
        raise CadlError(f"--runner {options.view_as(StandardOptions).runner}: not a runner Beam knows "
                        "(DirectRunner, DaskRunner, DataflowRunner, FlinkRunner, SparkRunner, PortableRunner, "
                        "or a runner class's full name)") from None
