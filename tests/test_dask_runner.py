"""cadl's Dask runner (pipelines/dask_runner.py), one primitive at a time, on a real dask.distributed cluster
(a scheduler and two workers in this process, 127.0.0.1 only). Each test is a pipeline Beam's own DaskRunner
(2.77) gets wrong; what reaches the sinks is read back from files, never from the runner."""
import json
import os
import uuid

import apache_beam as beam
import pytest

from pipelines import dask_runner

dd = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="module")
def cluster():
    with dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                         dashboard_address=None) as c:
        yield c


class Sink(beam.DoFn):
    """Writes every element it gets into its own JSON file under ``folder/name``, with the worker's name."""

    def __init__(self, folder, name):
        self.folder, self.name = os.path.join(folder, name), name

    def process(self, element):
        os.makedirs(self.folder, exist_ok=True)
        try:
            worker = dd.get_worker().name
        except ValueError:
            worker = None
        with open(os.path.join(self.folder, uuid.uuid4().hex), "w") as f:
            json.dump({"value": element, "worker": worker}, f)


def got(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        return []
    out = []
    for n in os.listdir(path):
        with open(os.path.join(path, n)) as f:
            out.append(json.load(f))
    return out


def values(folder, name):
    return sorted(json.dumps(e["value"]) for e in got(folder, name))


def run(cluster, build):
    options, runner = dask_runner.pipeline_options_for(
        ["--runner", "DaskRunner", "--dask_client_address", cluster.scheduler_address])
    assert isinstance(runner, dask_runner.DaskRunner)
    p = beam.Pipeline(runner=runner, options=options)
    build(p)
    assert p.run().wait_until_finish() == "DONE"


class Split(beam.DoFn):
    def process(self, n):
        yield n
        yield beam.pvalue.TaggedOutput("odd" if n % 2 else "even", ("tagged", n))


def test_tagged_outputs_reach_only_their_consumers(cluster, tmp_path):
    def build(p):
        out = p | beam.Create([1, 2, 3, 4, 5]) | beam.ParDo(Split()).with_outputs("odd", "even", main="all")
        out.all | "main" >> beam.ParDo(Sink(str(tmp_path), "all"))
        out.odd | "odd" >> beam.ParDo(Sink(str(tmp_path), "odd"))
        out.even | "even" >> beam.ParDo(Sink(str(tmp_path), "even"))

    run(cluster, build)
    assert values(tmp_path, "all") == sorted(json.dumps(n) for n in [1, 2, 3, 4, 5])
    assert values(tmp_path, "odd") == sorted(json.dumps(["tagged", n]) for n in [1, 3, 5])
    assert values(tmp_path, "even") == sorted(json.dumps(["tagged", n]) for n in [2, 4])


class CountInBundle(beam.DoFn):
    def start_bundle(self):
        self.n = 0

    def process(self, element):
        self.n += 1
        yield element

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        yield GlobalWindows.windowed_value(("bundle", self.n))


def test_finish_bundle_outputs_are_kept_and_every_sink_runs(cluster, tmp_path):
    def build(p):
        xs = p | beam.Create(list(range(10))) | beam.ParDo(CountInBundle())
        xs | "first sink" >> beam.ParDo(Sink(str(tmp_path), "a"))
        xs | beam.Map(lambda x: x) | "second sink" >> beam.ParDo(Sink(str(tmp_path), "b"))

    run(cluster, build)
    for name in ("a", "b"):
        got_values = [json.loads(v) for v in values(tmp_path, name)]
        plain = sorted(v for v in got_values if not isinstance(v, list))
        bundles = [v[1] for v in got_values if isinstance(v, list)]
        assert plain == list(range(10))
        assert bundles and sum(bundles) == 10, (name, got_values)


def test_reshuffle_spreads_elements_over_the_workers(cluster, tmp_path):
    def slow(x):
        import time
        time.sleep(0.05)
        return x

    def build(p):
        # One element fans out into 40 in a single bundle: only a reshuffle can spread them.
        (p | beam.Create([40]) | beam.FlatMap(lambda n: list(range(n))) | beam.Reshuffle() | beam.Map(slow)
         | beam.ParDo(Sink(str(tmp_path), "spread")))

    run(cluster, build)
    seen = got(tmp_path, "spread")
    assert sorted(e["value"] for e in seen) == list(range(40))
    assert len({e["worker"] for e in seen}) == 2


def test_side_inputs_impulse_group_by_key_and_combine(cluster, tmp_path):
    def build(p):
        words = p | "words" >> beam.Create(["a", "b", "a", "c", "a"])
        total = words | "total" >> beam.combiners.Count.Globally()
        (words | beam.Map(lambda w: (w, 1)) | beam.GroupByKey() | beam.MapTuple(lambda w, ones: (w, sum(ones)))
         | beam.Map(lambda kv, n: [kv[0], kv[1], n], beam.pvalue.AsSingleton(total))
         | "counts" >> beam.ParDo(Sink(str(tmp_path), "counts")))
        words | beam.combiners.ToList() | "list" >> beam.ParDo(Sink(str(tmp_path), "list"))
        p | beam.Impulse() | beam.Map(lambda b: len(b)) | "impulse" >> beam.ParDo(Sink(str(tmp_path), "impulse"))
        (p | "nothing" >> beam.Create([]) | "count nothing" >> beam.combiners.Count.Globally()
         | "zero" >> beam.ParDo(Sink(str(tmp_path), "zero")))

    run(cluster, build)
    assert values(tmp_path, "counts") == sorted(json.dumps(v) for v in [["a", 3, 5], ["b", 1, 5], ["c", 1, 5]])
    assert [sorted(e["value"]) for e in got(tmp_path, "list")] == [["a", "a", "a", "b", "c"]]
    assert values(tmp_path, "impulse") == ["0"]
    assert values(tmp_path, "zero") == ["0"]


def test_a_worker_error_fails_the_run(cluster):
    def boom(x):
        raise ValueError(f"bad element {x}")

    with pytest.raises(ValueError, match="bad element"):
        run(cluster, lambda p: p | beam.Create([1]) | beam.Map(boom))


def test_the_runner_is_named_dask_runner_and_pinned(monkeypatch):
    for name in ("DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"):
        assert isinstance(dask_runner.pipeline_options_for(["--runner", name])[1], dask_runner.DaskRunner)
    assert dask_runner.pipeline_options_for(["--runner", "DirectRunner"])[1] is None
    monkeypatch.setattr(beam, "__version__", "2.99.0")
    with pytest.raises(dask_runner.CadlError, match="tested with Apache Beam 2.77, not 2.99.0"):
        dask_runner.pipeline_options_for(["--runner", "DaskRunner"])


class Counted(beam.DoFn):
    def __init__(self):
        self.seen = beam.metrics.Metrics.counter("test", "seen")

    def process(self, element):
        self.seen.inc()
        yield element


def test_metrics_are_the_dofns_counters_summed_over_bundles(cluster):
    options, runner = dask_runner.pipeline_options_for(
        ["--runner", "DaskRunner", "--dask_client_address", cluster.scheduler_address])
    p = beam.Pipeline(runner=runner, options=options)
    _ = p | beam.Create(list(range(25))) | beam.Reshuffle() | beam.ParDo(Counted())
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_name("seen"))["counters"]
    assert sum(c.committed for c in counters) == 25


def test_beam_file_sinks_write_every_record(cluster, tmp_path):
    """Beam's own WriteToTFRecord (temp files, then a finalize step fed by side inputs): on Beam's DaskRunner
    it ends DONE with a file of 0 records, the data left in beam-temp-*."""
    import glob

    from pipelines import schema

    prefix = str(tmp_path / "out")
    run(cluster, lambda p: (p | beam.Create([f"record {i}".encode() for i in range(30)]) | beam.Reshuffle()
                            | beam.io.WriteToTFRecord(prefix, num_shards=2)))
    files = sorted(glob.glob(prefix + "*"))
    assert len(files) == 2 and not glob.glob(str(tmp_path / "beam-temp*"))
    got_records = sorted(r for f in files for r in schema.tfrecords(open(f, "rb").read()))
    assert got_records == sorted(f"record {i}".encode() for i in range(30))


class Marked(beam.DoFn):
    """Leaves one file per element it processes: how often it really ran."""

    def __init__(self, folder):
        self.folder = folder

    def process(self, element):
        os.makedirs(self.folder, exist_ok=True)
        open(os.path.join(self.folder, uuid.uuid4().hex), "w").close()
        yield element


def test_a_stage_with_many_consumers_runs_once_per_element(cluster, tmp_path):
    marks = str(tmp_path / "marks")

    def build(p):
        xs = p | beam.Create(list(range(20))) | beam.Reshuffle() | beam.ParDo(Marked(marks))
        total = xs | "count" >> beam.combiners.Count.Globally()
        xs | "sink" >> beam.ParDo(Sink(str(tmp_path), "xs"))
        xs | "as list" >> beam.combiners.ToList() | "list sink" >> beam.ParDo(Sink(str(tmp_path), "list"))
        (p | "one" >> beam.Create([0]) | beam.Map(lambda _, n: n, beam.pvalue.AsSingleton(total))
         | "total sink" >> beam.ParDo(Sink(str(tmp_path), "total")))

    run(cluster, build)
    assert len(os.listdir(marks)) == 20
    assert values(tmp_path, "total") == ["20"] and len(got(tmp_path, "xs")) == 20
