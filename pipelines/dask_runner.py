"""Apache Beam's Dask runner, made to run cadl's pipelines on a dask.distributed cluster.

    cadl extract FILMS --output DATA --runner DaskRunner --dask_client_address tcp://HOST:8786
    cadl render FILM --model RUN --output OUT --runner DaskRunner [--dask_client_address ...]

Without an address a local cluster of worker processes (one per core, 127.0.0.1 only) is started for the run
and stopped after it. Scheduler and workers need cadl installed (``pip install 'cadl[dask]'``): this runner
ships no code.

Beam's ``DaskRunner`` (``apache_beam.runners.dask``, Beam 2.77) translates a pipeline into dask bags, but as it
stands it cannot run cadl (each measured with a small pipeline, each with its own test in
tests/test_dask_runner.py):
- a ParDo's tagged outputs are not separated: every consumer receives every tag;
- elements emitted in ``finish_bundle`` are dropped (collected before it runs);
- only the last transform's bag is computed: with several sinks, the others never run;
- ``Reshuffle`` is a no-op: all segments of a film decode in one task on one worker (and a lazy repartition
  does not help: tasks run where their input is);
- ``Impulse`` has no translation; side inputs are computed inside a task (``list(bag)``), not as graph
  dependencies; ``metrics()`` raises (no DoFn counter is collected); ``DaskRunner`` is not a name
  ``--runner`` knows.
This subclass translates ParDo (a bag of (tag, value) pairs, filtered per consumer), Reshuffle (its elements
computed, then new root tasks the scheduler spreads), Impulse, Create and side inputs (an Item the task depends on) itself and keeps Beam's
GroupByKey and Flatten, and runs CombinePerKey as a tree reduction (its expansion, a GroupByKey, is a
shuffle: 1,682 tasks for a 20-second film's extraction, 212 with the reduction); it computes every leaf of the graph together, so shared stages run once, and
collects each bundle's metrics with its outputs. The results
are verified by the caller (``pipelines.extract`` counts what the shards hold; ``pipelines.render`` checks
each segment), never trusted from the runner's "DONE".

Side inputs and reductions enter their consumers as Delayed values whose graphs are not optimized on their
own: dask optimizes (fuses and renames) an Item's graph for each consumer, so a stage feeding several
consumers ran once per consumer (a test counts each element's processing; it ran 6 times).

It relies on Beam's runner internals, so it is pinned to the Beam versions it is tested with (``TESTED``).
"""
import contextlib
import functools
import logging
import os

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipelines.errors import CadlError

try:  # Beam's Dask runner imports dask: without the [dask] extra, naming the runner is a one-line error
    from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner as BeamDaskRunner
    from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, _Reshuffle, dask_overrides
except ImportError as e:
    BeamDaskRunner, MISSING = object, e
else:
    MISSING = None

log = logging.getLogger(__name__)


class _CombinePerKey(beam.PTransform):
    """CombinePerKey as one primitive: translated into a tree reduction of per-key accumulators (a few tasks),
    where its expansion (GroupByKey, then the combine) is a shuffle of thousands of tasks."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def expand(self, pcoll):
        return beam.pvalue.PCollection.from_(pcoll)


def _overrides():
    """Beam's Dask overrides, and CombinePerKey (without side inputs) as a primitive. (CombineGlobally and
    the combiners expand into CombinePerKey; it is what survives Beam's round trip through the Runner API.)"""
    from apache_beam.pipeline import PTransformOverride
    from apache_beam.transforms.core import CombineFn

    class CombinePerKeyOverride(PTransformOverride):
        def matches(self, applied):
            t = applied.transform
            return type(t) is beam.CombinePerKey and not t.args and not t.kwargs

        def get_replacement_transform_for_applied_ptransform(self, applied):
            return _CombinePerKey(CombineFn.maybe_from_callable(applied.transform.fn))

    return [CombinePerKeyOverride()] + dask_overrides()

TESTED = ("2.77",)             # Beam minor versions this runner is tested with
NAMES = ("DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner")  # what --runner may say
MIN_PARTITIONS = 16            # a Reshuffle spreads its elements over at least this many tasks
METRICS = "__cadl_metrics__"   # the output tag of a bundle's metric updates (no PCollection has it)


def is_dask(runner_name):
    return (runner_name or "").strip() in NAMES or (runner_name or "").lower() == "daskrunner"


def check_version():
    if MISSING is not None:
        raise CadlError(f"--runner DaskRunner needs dask.distributed ({MISSING}): pip install 'cadl[dask]'")
    version = ".".join(beam.__version__.split(".")[:2])
    if version not in TESTED:
        raise CadlError(f"--runner DaskRunner: cadl's Dask runner is tested with Apache Beam "
                        f"{', '.join(TESTED)}, not {beam.__version__} (pip install 'cadl[dask]')")


# -- what runs inside a Dask task --------------------------------------------------------------------------
def _receiver(tag, out):
    """A Beam Receiver collecting one output tag's windowed values as (tag, value) pairs (Beam's output
    handler accepts only its own Receiver type, a compiled class: hence the subclass made here, in the task)."""
    from apache_beam.runners.common import Receiver

    class _Receiver(Receiver):
        def receive(self, windowed_value):
            out.append((tag, windowed_value.value))

    return _Receiver()


class _Receivers(dict):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        receiver = self[tag] = _receiver(tag, self.out)
        return receiver


def _global(value):
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.windowed_value import WindowedValue

    return value if isinstance(value, WindowedValue) else WindowedValue(value, 0, (GlobalWindow(),))


def _run_bundle(items, fn, label, window_fn, args, kwargs, side_views, *side_values):
    """One dask partition as one Beam bundle: setup, start_bundle, process each, finish_bundle, teardown.
    Returns every output, finish_bundle's included, as (tag, value); tag None is the main output."""
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    from apache_beam.transforms.sideinputs import SideInputMap

    out = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    sides = [SideInputMap(view, options, [_global(v) for v in values])
             for (view, options), values in zip(side_views, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(label, state=None), side_inputs=sides,
        input_args=list(args), input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    with _metrics(label) as container:
        invoker.invoke_setup()
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(_global(item))
        invoker.invoke_finish_bundle()
        invoker.invoke_teardown()
    out.append((METRICS, container.get_cumulative()))
    return out


@contextlib.contextmanager
def _metrics(step):
    """A metrics container current for the bundle's thread, as Beam's workers have one: the DoFn's
    ``Metrics.counter(...).inc()`` lands there, and its cumulative values travel with the bundle's outputs."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    container = MetricsContainer(step)
    sampler = statesampler.StateSampler(step, CounterFactory())
    state = sampler.scoped_state(step, "process", metrics_container=container)
    sampler.start()
    try:
        with state:
            yield container
    finally:
        sampler.stop()


def _accumulate(fn, items):
    """One partition of (key, value) -> {key: accumulator}."""
    if hasattr(fn, "setup"):
        fn.setup()
    accs = {}
    for key, value in items:
        accs[key] = fn.add_input(accs[key] if key in accs else fn.create_accumulator(), value)
    return accs


def _merge(fn, parts):
    merged = {}
    for accs in parts:
        for key, acc in accs.items():
            merged.setdefault(key, []).append(acc)
    return {key: fn.merge_accumulators(accs) for key, accs in merged.items()}


def _extract(fn, accs):
    return [(key, fn.extract_output(acc)) for key, acc in accs.items()]


def _has_tag(tag, pair):
    return pair[0] == tag


def _value(pair):
    return pair[1]


def _never(_):
    return False


def _concat(parts):
    return [v for part in parts for v in part]


# -- the translation ---------------------------------------------------------------------------------------
class _Translation(PipelineVisitor):
    """Every leaf transform -> a dask bag. ParDo bags hold (tag, value) pairs; a consumer's input keeps only
    its PCollection's tag. ``leaves()``: the bags no transform consumes (the sinks)."""

    def __init__(self, client, partitions, bag_kwargs):
        self.client, self.partitions, self.bag_kwargs = client, partitions, bag_kwargs
        self.bags, self.tagged, self.consumed, self.persisted = {}, set(), set(), []

    def bag_of(self, pcoll):
        producer = pcoll.producer
        self.consumed.add(producer)
        bag = self.bags[producer]
        if producer in self.tagged:
            bag = bag.filter(functools.partial(_has_tag, pcoll.tag)).map(_value)
        return bag

    def leaves(self):
        return [bag for node, bag in self.bags.items() if node not in self.consumed]

    def metrics(self):
        """One bag per ParDo: the metric updates of its bundles (only of those whose outputs were used: a task
        run again after a lost worker counts once)."""
        return [self.bags[node].filter(functools.partial(_has_tag, METRICS)).map(_value) for node in self.tagged]

    def visit_transform(self, node):
        import dask.bag as db

        transform = node.transform
        kind = type(transform)
        if kind is _Reshuffle:
            self.bags[node] = self._reshuffle(next(iter(node.main_inputs.values())))
            return
        inputs = [self.bag_of(p) for p in node.main_inputs.values() if not isinstance(p, pvalue.PBegin)]
        if kind is _Create:
            bag = self._create(list(transform.values))
        elif kind is beam.Impulse:
            bag = db.from_sequence([b""], npartitions=1)
        elif kind is beam.ParDo:
            bag = self._pardo(node, inputs[0])
            self.tagged.add(node)
        elif kind is _Flatten:
            bag = db.concat(inputs)
        elif kind is _CombinePerKey:
            fn = transform.fn
            accs = inputs[0].reduction(functools.partial(_accumulate, fn), functools.partial(_merge, fn),
                                       split_every=8)
            bag = db.from_delayed([accs.apply(functools.partial(_extract, fn)).to_delayed(optimize_graph=False)])
        elif kind is _GroupByKeyOnly:
            from apache_beam.runners.dask.transform_evaluator import GroupByKey
            bag = GroupByKey(node, bag_kwargs=self.bag_kwargs).apply(inputs[0])
        elif len(inputs) == 1:
            # WindowInto, GroupAlsoByWindow (the grouping above already dropped the windows): everything
            # cadl runs is in the global window.
            bag = inputs[0]
        else:
            raise CadlError(f"the Dask runner cannot run {node.full_label} ({kind.__name__})")
        self.bags[node] = bag

    def _create(self, values):
        import dask.bag as db

        if not values:
            return db.from_sequence([None], npartitions=1).filter(_never)
        return db.from_sequence(values, npartitions=min(len(values), self.partitions))

    def _reshuffle(self, pcoll):
        """The elements, computed now, as new root tasks of ``partitions`` partitions: tasks without inputs are
        what the scheduler spreads over the workers (tasks that depend on data run where it is: a lazy
        repartition keeps every segment of a film on the worker that planned it). The producer is kept
        (persisted) so its other outputs are not computed twice. cadl reshuffles work descriptions (segments),
        never records: the elements pass through the driver."""
        producer = self.bags[pcoll.producer] = self.client.persist(self.bags[pcoll.producer])
        self.persisted.append(producer)
        return self._create(self.client.compute(self.bag_of(pcoll), sync=True))

    def _pardo(self, node, bag):
        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        views, values = [], []
        for side in node.side_inputs:
            views.append((type(side), side._view_options()))
            # A Delayed, not optimized on its own: dask would optimize (fuse and rename) an Item's graph for
            # each consumer, and its tasks (a sink's initialize_write) would run once per consumer.
            values.append(self.bag_of(side.pvalue).reduction(list, _concat).to_delayed(optimize_graph=False))
        return bag.map_partitions(_run_bundle, transform.fn, transform.label, window_fn, tuple(args), kwargs,
                                  views, *values)


class DaskRunnerResult(PipelineResult):
    """The futures of the run's leaves; waiting gathers them (a worker's error is raised here), then closes
    the client and any local cluster this run started."""

    def __init__(self, client, futures, metric_futures=(), cluster=None):
        super().__init__(PipelineState.RUNNING)
        self.client, self.futures, self.metric_futures, self.cluster = client, futures, list(metric_futures), cluster
        self._metrics = None

    def wait_until_finish(self, duration=None):
        import dask.distributed as dd

        if self._state != PipelineState.RUNNING:
            return self._state
        from apache_beam.runners.direct.direct_metrics import DirectMetrics

        futures = self.futures + self.metric_futures
        metrics = set(self.metric_futures)
        self._metrics = DirectMetrics()
        try:
            for future, result in dd.as_completed(futures, timeout=None if duration is None else duration / 1000,
                                                  with_results=True):
                if future in metrics:
                    for updates in result:
                        self._metrics.commit_logical(None, updates)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            self.client.cancel(futures)
            raise
        finally:
            self._close()
        return self._state

    def cancel(self):
        self.client.cancel(self.futures + self.metric_futures)
        self._close()
        self._state = PipelineState.CANCELLED
        return self._state

    def _close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def metrics(self):
        """The DoFns' counters, distributions and gauges summed over the bundles (committed; after
        ``wait_until_finish``)."""
        if self._metrics is None:
            raise RuntimeError("metrics are known once the pipeline has finished (wait_until_finish)")
        return self._metrics


class DaskRunner(BeamDaskRunner):
    """Beam's Dask runner with the translation above (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as dd

        logging.getLogger("distributed").setLevel(logging.WARNING)  # workers coming and going, at INFO
        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        cluster = None
        if not dask_options.get("address") and not dask_options.get("scheduler_file"):
            cluster = dd.LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None)
            dask_options["address"] = cluster.scheduler_address
        try:
            client = dd.Client(**dask_options)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        try:
            threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
            partitions = bag_kwargs.get("npartitions") or max(MIN_PARTITIONS, 4 * threads)
            pipeline.replace_all(_overrides())
            translation = _Translation(client, partitions, bag_kwargs)
            pipeline.visit(translation)
            leaves = translation.leaves()
            # One graph, computed once: two compute calls would optimize (fuse) separately and run the
            # shared tasks, side effects included, twice.
            everything = client.compute(leaves + translation.metrics())
            futures, metric_futures = everything[:len(leaves)], everything[len(leaves):]
            del translation  # the persisted producers: released once the leaves that need them are submitted
        except BaseException:
            client.close()
            if cluster is not None:
                cluster.close()
            raise
        return DaskRunnerResult(client, futures, metric_futures, cluster)


def pipeline_options_for(beam_args):
    """(options, DaskRunner()) when the options name the Dask runner, else (options, None)."""
    from apache_beam.options.pipeline_options import StandardOptions

    options = PipelineOptions(list(beam_args))
    return options, (make() if is_dask(options.view_as(StandardOptions).runner) else None)


def make():
    """A DaskRunner, after checking that dask is installed and Beam is a version it is tested with."""
    check_version()
    return DaskRunner()
