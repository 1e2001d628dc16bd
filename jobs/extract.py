"""``cadl extract``: films, CelebA and image folders -> sharded TFRecords, with an Apache Beam pipeline.

    cadl extract --input films/ --input stills/ --output data/ --size 72x128
    cadl extract --input ~/celeba --output celeba64/ --size 64x64 --crop-factor 0.8
    cadl extract --input new.mp4 --output data/ --incremental          # add only what is new
    cadl extract --input gs://b/films/ --output gs://b/data --runner DataflowRunner \\
        --project P --region R --temp_location gs://b/tmp --setup_file ./setup.py
    cadl extract --input /shared/films --output /shared/data --runner FlinkRunner \\
        --flink_master host:8081 --environment_type PROCESS --setup_file ./setup.py

Inputs and output are local paths or URLs of any filesystem Apache Beam knows (gs://, s3://, hdfs://, ...;
its extra must be installed, e.g. apache-beam[gcp]). With a remote runner, local paths must be on a
filesystem that the driver and every worker share. A remote film is copied to a local file by the worker
that decodes it (ffmpeg seeks in it); everything written goes through Beam's FileSystems (temp file, then
rename).

Options this job does not know are Beam pipeline options and pass straight through (``--runner``,
``--temp_location``, ``--setup_file``, ``--flink_master``, ...). Without ``--runner`` the pipeline runs on
Beam's FnApiRunner on this machine with one worker per core: Beam's "DirectRunner" would first try the Prism
runner, which downloads a binary and so fails (slowly) without internet.

Writes into the output folder: the shards, ``manifest.json`` (see ``pipelines.manifest``), ``mean.png`` and
``std.png`` (per-pixel mean and standard deviation of every record), ``moments.npz``, ``summary.json`` and the
``.cadl`` marker. A later run's files carry its tag (``r0002-mean.png``) and the manifest's switch publishes
them (see ``pipelines.manifest``); a local output is locked (``.cadl-lock``) for the run: a second extract
into it exits 75 touching nothing.

The summary (also returned by ``run``) has these keys:
    output, manifest             the dataset folder and its manifest file
    inputs_found                 inputs that the --input values name (files, CelebA roots)
    inputs_new                   inputs processed by this run (not already extracted)
    inputs_already_extracted     inputs skipped because the manifest has them with the same size and mtime
                                 (only with --incremental; 0 otherwise)
    inputs_extracted             new inputs that gave at least one record
    inputs_bad                   new inputs skipped as unreadable, empty, truncated to nothing or not media
    records_new                  records written by this run;  records_total: in the dataset after it
    splits_new, splits           records per split written by this run / in the dataset after it
    shards_new                   shard files written by this run (names relative to the output folder)
    skipped                      [{"input", "reason"}] for this run's bad inputs
    runner, seconds              the Beam runner used and the job's wall time
A run with --incremental and nothing new succeeds with inputs_new 0 and writes no shard.
"""
import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid

import jobs
from pipelines import geometry, owned, schema, sources, storage
from pipelines.errors import CadlError, no_space
from pipelines.lock import folder_lock

log = logging.getLogger("cadl.extract")
TMP_PREFIX = ".cadl-extract-"  # of the run's work folder in the output (Settings.tmp_dir): Beam's parts, the report


def build_parser():
    p = argparse.ArgumentParser(
        prog="cadl extract", allow_abbrev=False,
        description="Turn films, CelebA and image folders into sharded TFRecords (one tf.train.Example per "
                    "picture, see pipelines/schema.py) with an Apache Beam pipeline. Unknown options are Beam "
                    "pipeline options (--runner, --temp_location, --setup_file, ...) and pass through.",
        epilog="Without --runner the pipeline runs here on Beam's FnApiRunner with one worker per core "
               "(--direct_num_workers N, --direct_running_mode multi_threading|multi_processing to change); "
               "Beam's DirectRunner would first try the Prism runner, which downloads a binary.")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a film, an image, a folder (searched recursively for films and jpg/png/webp/bmp "
                        "images), a glob (quote it), or a CelebA root (holding img_align_celeba/ or "
                        "img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt); a local path or a "
                        "URL such as gs://bucket/films/ (any filesystem Beam knows); repeatable")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="dataset folder (local or a URL such as gs://bucket/data): shards, manifest.json, "
                        "mean.png, std.png, moments.npz, summary.json")
    g = p.add_argument_group("geometry")
    g.add_argument("--size", default="64x64", metavar="HxW",
                   help="picture size of every record, height x width in pixels, e.g. 64x64, 72x128 (16:9), "
                        "144x256 (default: %(default)s)")
    g.add_argument("--fit", default="crop", choices=geometry.FITS,
                   help="how other aspect ratios fit: crop = cover then centre-crop, pad = fit inside with "
                        "black bars, stretch = distort (default: %(default)s)")
    g.add_argument("--crop-factor", type=float, default=None, metavar="F",
                   help="stills only: keep the central F of each side before fitting; default 0.8 for CelebA "
                        "(the course's choice, mostly face) and 1.0 for image folders")
    g = p.add_argument_group("sampling (films)")
    s = g.add_mutually_exclusive_group()
    s.add_argument("--every", type=int, default=1, metavar="N",
                   help="keep every Nth frame, counted from --start (default: every frame)")
    s.add_argument("--fps", type=float, default=None, metavar="F",
                   help="keep about F frames per second of film: the first frame of each 1/F s, like "
                        "ffmpeg -r (default: every frame)")
    g.add_argument("--start", type=float, default=0.0, metavar="SECONDS",
                   help="skip the first SECONDS of each film (default: 0)")
    g.add_argument("--end", type=float, default=None, metavar="SECONDS",
                   help="stop at SECONDS into each film (default: its end)")
    g.add_argument("--keep-fields", action="store_true",
                   help="interlaced films: keep each frame's two fields woven together as stored (default: "
                        "deinterlace them with ffmpeg's bwdif, one frame per frame)")
    g.add_argument("--stall-seconds", type=float, default=120.0, metavar="SECONDS",
                   help="stop an ffmpeg process whose output has not moved for SECONDS and skip what it was "
                        "reading, reported as one line (default: %(default)s)")
    g.add_argument("--segment-seconds", type=float, default=10.0, metavar="SECONDS",
                   help="least length of the pieces a film is cut into (each starts right after a keyframe, "
                        "where decoding is cheap); each is a separate work item, so one long film keeps every "
                        "worker busy (default: %(default)s)")
    g = p.add_argument_group("encoding and shards")
    g.add_argument("--format", default="png", choices=("png", "jpeg"),
                   help="picture encoding in the records: png is lossless (default: %(default)s)")
    g.add_argument("--quality", type=int, default=95, metavar="Q",
                   help="JPEG quality 1..100, with --format jpeg (default: %(default)s)")
    g.add_argument("--compression", default="none", choices=("none", "gzip"),
                   help="compress shards with GZIP (.tfrecord.gz); PNG hardly shrinks (default: %(default)s)")
    g.add_argument("--shard-mb", type=float, default=100.0, metavar="MB",
                   help="target shard size in MiB when --num-shards is not given; TensorFlow advises >= 10 MB, "
                        "ideally 100 MB or more (default: %(default)s)")
    g.add_argument("--num-shards", type=int, default=0, metavar="N",
                   help="write (at most) N shards per split instead, records sorted within each; this "
                        "shuffles every record, so the local runner holds them all in memory (default: by "
                        "size)")
    g = p.add_argument_group("splits")
    g.add_argument("--validation-fraction", type=float, default=0.05, metavar="F",
                   help="share of films (in whole blocks) and of image-folder stills that goes to validation; "
                        "CelebA keeps its official partition (default: %(default)s)")
    g.add_argument("--validation-block", type=float, default=4.0, metavar="SECONDS",
                   help="films go to validation in contiguous blocks this long, chosen by a hash of (film, "
                        "block), so validation frames are not near-copies of training frames; a film of two "
                        "or more blocks always gives at least one (default: %(default)s)")
    p.add_argument("--incremental", action="store_true",
                   help="keep the dataset already in --output: skip inputs its manifest lists with the same "
                        "size and modification time, add new shards (tagged rNNNN-) and merge the manifest")
    return p


def _settings(args, output):
    from pipelines import extract

    try:
        size = geometry.parse_size(args.size)
    except ValueError as e:
        raise CadlError(f"--size: {e}") from None
    checks = [(args.every >= 1, "--every must be >= 1"), (args.fps is None or args.fps > 0, "--fps must be > 0"),
              (args.start >= 0, "--start must be >= 0"),
              (args.end is None or args.end > args.start, "--end must be after --start"),
              (1 <= args.quality <= 100, "--quality must be in 1..100"),
              (0 <= args.validation_fraction <= 1, "--validation-fraction must be in 0..1"),
              (args.validation_block > 0, "--validation-block must be > 0"),
              (args.segment_seconds > 0, "--segment-seconds must be > 0"),
              (args.stall_seconds > 0, "--stall-seconds must be > 0"),
              (args.shard_mb > 0, "--shard-mb must be > 0"), (args.num_shards >= 0, "--num-shards must be >= 0"),
              (args.crop_factor is None or 0 < args.crop_factor <= 1, "--crop-factor must be in (0, 1]")]
    for ok, message in checks:
        if not ok:
            raise CadlError(message)
    return extract.Settings(
        size=size, fit=args.fit, fmt=args.format, quality=args.quality, crop_factor=args.crop_factor,
        every=args.every, fps=args.fps, start=args.start, end=args.end,
        validation_fraction=args.validation_fraction, validation_block=args.validation_block,
        segment_seconds=args.segment_seconds, compression="GZIP" if args.compression == "gzip" else "",
        shard_bytes=int(args.shard_mb * 2 ** 20), num_shards=args.num_shards,
        deinterlace="off" if args.keep_fields else "auto", stall_seconds=args.stall_seconds,
        tmp_dir=storage.join(output, f".cadl-extract-{uuid.uuid4().hex[:12]}"))


def _options_record(args, settings):
    """The options that shaped the records (stored in the manifest; no paths, no run-specific values)."""
    return {"size": list(settings.size), "fit": settings.fit, "format": settings.fmt,
            "quality": settings.quality if settings.fmt == "jpeg" else None, "crop_factor": settings.crop_factor,
            "every": settings.every, "fps": settings.fps, "start": settings.start, "end": settings.end,
            "segment_seconds": settings.segment_seconds, "compression": settings.compression,
            "shard_mb": args.shard_mb, "num_shards": settings.num_shards,
            "validation_fraction": settings.validation_fraction, "validation_block": settings.validation_block,
            "deinterlace": settings.deinterlace}


def _check_output(output):
    if storage.is_url(output):
        _check_remote_output(output)
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise CadlError(f"{output}: the output exists and is not a folder")
    try:
        os.makedirs(output, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cadl-write-test-", dir=output)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CadlError(f"{output}: the output folder is not writable ({e.strerror or e})") from None


def _check_remote_output(output):
    """A URL output: not an existing file, and writable (checked by writing and deleting a small file)."""
    try:
        is_file = storage.isfile(output)
    except Exception as e:  # the client library's own: no credentials, no such bucket, ...
        raise CadlError(f"{output}: cannot reach the output ({e})") from None
    if is_file:
        raise CadlError(f"{output}: the output exists and is not a folder")
    probe = storage.join(output, f".cadl-write-test-{uuid.uuid4().hex[:12]}")
    try:
        storage.makedirs(output)
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except Exception as e:  # BeamIOError, or the client library's own (permission denied, no such bucket)
        raise CadlError(f"{output}: the output folder is not writable ({e})") from None


def pipeline_options(beam_args):
    """Beam options from the pass-through flags, and the runner to use (None: the one the options name).

    Without --runner: the FnApiRunner (what DirectRunner uses for batch, minus the Prism attempt) with one
    worker per core. On up to 4 cores the workers are threads: decoding runs in ffmpeg processes and OpenCV's
    encoders release the GIL, and worker processes would each pay Beam's start-up (measured on 2 cores:
    threads were faster, start-up included). On more cores, the ~0.1 ms of Python per frame that holds the
    GIL would cap threads near what ~4 ffmpeg decoders deliver, so the workers are processes.
    """
    from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions,
                                                      WorkerOptions)

    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner:
        return options, None
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


def run(argv=None):
    started = time.time()
    args, beam_args = build_parser().parse_known_args(argv)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    urls = [path for path in args.input + [args.output] if storage.is_url(path)]
    if urls:
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        # Filesystems read their settings (--hdfs_host, --s3_region_name, ...) from the pipeline options; the
        # driver lists inputs and writes the output before the pipeline exists.
        FileSystems.set_options(PipelineOptions(beam_args))
        for url in urls:
            storage.check(url)
    output = storage.normalize(args.output)
    settings = _settings(args, output)
    _check_output(output)
    # A local output is locked for the whole run: a second extract into it exits 75 and touches nothing.
    try:
        with contextlib.nullcontext() if storage.is_url(output) else folder_lock(output, "extract into this folder"):
            if not storage.is_url(output):
                _sweep_temp(output)
            return _extract(args, beam_args, output, settings, started)
    except Exception as e:
        if not no_space(e):
            raise
        raise CadlError(f"{output}: no space left on device; the dataset there is as it was before this run "
                        "(free some space and run again)") from None


def _sweep_temp(output):
    """Remove work folders that killed runs left (with the lock held, no other run is using one)."""
    for name in sorted(os.listdir(output)):
        if name.startswith(TMP_PREFIX) and os.path.isdir(os.path.join(output, name)):
            log.info("%s: removing %s, left by an interrupted run", output, name)
            storage.remove_tree(os.path.join(output, name))


def _extract(args, beam_args, output, settings, started):
    from pipelines import manifest as mf

    old = mf.read(output)
    inputs, problems = sources.discover(args.input, exclude=[output])
    skipped = [{"input": spec, "reason": reason} for spec, reason in problems]
    for entry in skipped:
        log.warning("skipping %s: %s", entry["input"], entry["reason"])
    if not inputs:
        raise CadlError(f"{', '.join(args.input)}: no films, images or CelebA found")
    image = {"height": settings.size[0], "width": settings.size[1], "channels": 3, "format": settings.fmt,
             "fit": settings.fit}
    header = {"schema_version": schema.SCHEMA_VERSION, "image": image, "compression": settings.compression}
    if args.incremental and old:
        mf.check_compatible(old, header, output)
        new, done, changed = mf.already_extracted(old, inputs)
        log.info("skipping %d already extracted", len(done))
        for item in changed:
            log.warning("%s changed since it was extracted: its records are added again and the old ones "
                        "stay (extract without --incremental to rebuild the dataset)", item.path)
    else:
        new, done = inputs, []
    if old and not args.incremental:
        log.info("%s: replacing the dataset there (use --incremental to add to it)", output)

    summary = {"output": output, "manifest": mf.path(output), "inputs_found": len(inputs),
               "inputs_new": len(new), "inputs_already_extracted": len(done), "inputs_extracted": 0,
               "inputs_bad": 0, "records_new": 0, "splits_new": {}, "shards_new": [], "skipped": skipped}
    if not new:
        summary.update(records_total=mf.counts(old)["total"], splits=_splits(old), runner=None,
                       seconds=round(time.time() - started, 3))
        _write_summary(output, summary)
        log.info("nothing new to extract into %s", output)
        return summary

    new, celebas, bad_roots = _load_celeba(new, (old or {}).get("attribute_names") if args.incremental else None)
    skipped += bad_roots
    if not new:
        raise CadlError(f"{output}: no records: every input was skipped ({len(bad_roots)} bad; reasons above)")
    _check_space(output, settings, new, celebas)
    result = _run_pipeline(settings, new, celebas, beam_args)
    # Published as one unit (see pipelines.manifest): shards and moments under new names, then the manifest's
    # switch. A failure before it removes what this run wrote (``written``) and leaves the old dataset as it was.
    written = []
    try:
        manifest, moments, run_skipped, new_files = _finalize(args, settings, header, old, new, result, output,
                                                              skipped, written)
    except BaseException:
        for path in written:  # only this run's files, under names no old file has
            with contextlib.suppress(Exception):
                storage.delete(path)
        raise
    finally:
        storage.remove_tree(settings.tmp_dir)
    skipped += run_skipped
    splits_new = {}
    for f in new_files:
        splits_new[f["split"]] = splits_new.get(f["split"], 0) + f["count"]
    summary.update(
        inputs_extracted=sum(1 for i in new if i.path in manifest["sources"]),
        inputs_bad=len(bad_roots) + len([s for s in run_skipped if s["input"] in {i.path for i in new}]),
        records_new=sum(splits_new.values()), splits_new=splits_new,
        shards_new=[f["name"] for f in new_files], skipped=skipped,
        records_total=mf.counts(manifest)["total"], splits=_splits(manifest), runner=result["runner"],
        seconds=round(time.time() - started, 3))
    _write_summary(output, summary)
    log.info("%s: %d new records (%s) from %d inputs in %.1f s; %d skipped", output, summary["records_new"],
             ", ".join(f"{k} {v}" for k, v in splits_new.items()), summary["inputs_extracted"],
             summary["seconds"], summary["inputs_bad"])
    return summary


def _check_space(output, settings, new, celebas):
    """Refuse up front when the records whose number is known before decoding (stills, CelebA pictures;
    a film's frames are only counted by the workers) clearly will not fit: estimated at half the raw pixels
    for PNG and a sixteenth for JPEG, so only a run that cannot fit is refused."""
    if storage.is_url(output):
        return
    count = sum(1 for i in new if i.kind == "image") + sum(len(d.names) for d in celebas.values())
    h, w = settings.size
    need = count * h * w * 3 // (2 if settings.fmt == "png" else 16)
    free = shutil.disk_usage(output).free
    if need > free:
        raise CadlError(f"{output}: not enough space: {count} records at {h}x{w} need about {need / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free; nothing was written")


def _splits(manifest):
    from pipelines import manifest as mf

    return {k: v for k, v in mf.counts(manifest).items() if k != "total"}


def _write_summary(output, summary):
    storage.write_json(storage.join(output, "summary.json"), summary)


def _load_celeba(new, known_attributes):
    """Read the text files of each new CelebA root now, so a broken one is skipped like any bad input.
    Returns (inputs still to extract, {root: CelebA}, [skipped entries])."""
    from pipelines.celeba import CelebA

    keep, datasets, bad = [], {}, []
    attribute_names = list(known_attributes or [])
    for item in new:
        if item.kind != "celeba":
            keep.append(item)
            continue
        try:
            dataset = CelebA(item.path)
            if not dataset.names:
                raise CadlError(f"{dataset.store}: no images")
            names = dataset.attribute_names
            _ = dataset.partition
        except CadlError as e:
            reason = str(e)
        else:
            if names and attribute_names and names != attribute_names:
                reason = "its attribute names differ from the dataset's (or another CelebA root's)"
            else:
                attribute_names = attribute_names or names
                datasets[item.path] = dataset
                keep.append(item)
                continue
        log.warning("skipping %s: %s", item.path, reason)
        bad.append({"input": item.path, "reason": reason})
    return keep, datasets, bad


def _run_pipeline(settings, new, celebas, beam_args):
    import apache_beam as beam

    from pipelines import extract

    films = [i for i in new if i.kind == "film"]
    images = [i for i in new if i.kind == "image"]
    batches, attribute_names = [], []
    for item in (i for i in new if i.kind == "celeba"):
        dataset = celebas[item.path]
        attribute_names = attribute_names or dataset.attribute_names
        batches += extract.celeba_batches(dataset)
    log.info("extracting %d films, %d images, %d CelebA roots at %s (%s)", len(films), len(images),
             len(new) - len(films) - len(images), geometry.format_size(settings.size), settings.fit)
    options, runner = pipeline_options(beam_args)
    # A worker's failure comes back as the exception raised here; Beam's own log and print of it (a
    # traceback per bundle, hundreds of lines) only say it again: its error records are dropped, its prints
    # held back and shown unless the failure is one that becomes a single line (a full disk).
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(_drop_beam_errors)
    printed = io.StringIO()
    extract.CANCELLED.clear()
    try:  # from the work folder's creation on: an interrupt while Beam builds the graph cleans up too
        storage.makedirs(settings.tmp_dir)
        pipeline = beam.Pipeline(runner=runner, options=options)
        records = pipeline | "Extract" >> extract.ExtractRecords(settings, films, images, batches)
        _ = records | "Write" >> extract.WriteDataset(settings)
        with contextlib.redirect_stderr(printed):
            state = pipeline.run().wait_until_finish()
    except BaseException as e:  # Ctrl-C and SIGTERM too: no run leaves its work folder behind
        extract.CANCELLED.set()
        # Beam's worker threads, still tearing down, print their tracebacks straight to sys.stderr: from
        # now on only this thread speaks there (its one line about what went wrong).
        sys.stderr = _MainThreadOnly(sys.stderr)
        _remove_settled(settings.tmp_dir)
        if not (no_space(e) or isinstance(e, KeyboardInterrupt)):  # (workers' tracebacks of the teardown)
            sys.stderr.write(printed.getvalue())
        raise
    else:
        sys.stderr.write(printed.getvalue())
    finally:
        if not extract.CANCELLED.is_set():  # interrupted: workers still tearing down would log their errors
            for handler in handlers:
                handler.removeFilter(_drop_beam_errors)
        storage.films.clear()  # copies of remote films made by workers in this process
    report, moments = extract.read_results(settings.tmp_dir, settings.size)
    return {"report": report, "moments": moments, "attribute_names": attribute_names, "state": str(state),
            "runner": type(runner).__name__ if runner else options.get_all_options()["runner"]}


class _MainThreadOnly:
    """A text stream that passes on what the main thread writes and drops what other threads write."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _remove_settled(folder, quiet=1.5, limit=10.0):
    """Remove ``folder`` until it has stayed gone for ``quiet`` seconds (a worker thread finishing its bundle
    may create it again once), for at most ``limit`` seconds."""
    deadline, gone_since = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        if storage.exists(folder):
            storage.remove_tree(folder)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= quiet:
            return
        time.sleep(0.05)


def _drop_beam_errors(record):
    from pipelines import extract

    if record.name.startswith("apache_beam") and extract.CANCELLED.is_set():
        return False  # an interrupted run's workers tearing down: their complaints say nothing new
    return not (record.name.startswith("apache_beam") and record.levelno >= logging.ERROR)


def _finalize(args, settings, header, old, new, result, output, problems, written):
    """Rename the parts into shards, build and write the manifest, mean/std images. Returns
    (manifest, moments, skipped this run, [new file dicts])."""
    from pipelines import extract
    from pipelines import manifest as mf
    from pipelines import schema

    facts, counts, bad, partial, parts, lost = {}, {}, {}, {}, {}, {}
    for entry in result["report"]:
        kind = entry[0]
        if kind == "facts":
            facts[entry[1]] = entry[2]
        elif kind == "count":
            counts[entry[1]] = counts.get(entry[1], 0) + entry[2]
        elif kind == "skip":
            bad.setdefault(entry[1], entry[2])
        elif kind == "segment_error":
            partial.setdefault(entry[1], entry[2])
        elif kind == "lost":
            lost[entry[1]] = extract.merge_lost(lost.get(entry[1]), entry[2])
        elif kind == "part":
            parts.setdefault(entry[1], []).append(entry[2])
    if not any(counts.values()):
        raise CadlError(f"{output}: no records: every input was skipped ({len(bad) + len(partial)} bad; "
                        "reasons above)")

    incremental = bool(args.incremental and old)
    # Names no file of the old dataset has: until the manifest switches, the old dataset stays as it was.
    tag = mf.run_tag(old, storage.listdir(output) if old else ())
    compressed = settings.compression == "GZIP"
    new_files, splits = [], {}
    for split in schema.SPLITS:
        group = sorted(parts.get(split, []), key=lambda p: (p.get("shard", 0), p["first_key"] or "", p["path"]))
        group = [p for p in group if p["count"]]
        for i, part in enumerate(group):
            name = schema.shard_name(split, i, len(group), compressed=compressed, tag=tag)
            storage.rename(part["path"], storage.join(output, name))
            written.append(storage.join(output, name))
            new_files.append({"name": name, "split": split, "count": part["count"], "bytes": part["bytes"]})
        if group:
            splits[split] = {"count": sum(p["count"] for p in group), "files": [f["name"] for f in new_files
                                                                            if f["split"] == split]}

    sources_entry, skipped = {}, []
    for item in new:
        n = counts.get(item.path, 0)
        if n:
            entry = {"kind": item.kind, "size": item.size, "mtime": item.mtime, "count": n}
            entry.update({k: v for k, v in facts.get(item.path, {}).items() if k not in entry})
            if item.path in lost:
                # Damage is reported once per film: where, and how much, whatever the segments saw.
                entry["lost_frames"] = lost[item.path]
                entry["damaged"] = partial.get(item.path) or "frames that could not be decoded"
                log.warning("%s: damaged: %d frames between %.3f s and %.3f s are missing or cannot be decoded; "
                            "kept the %d records it has", item.path, lost[item.path]["frames"], lost[item.path]["from"],
                            lost[item.path]["to"], n)
            elif item.path in partial:
                entry["damaged"] = partial[item.path]
                log.warning("%s: kept the %d frames it has (%s)", item.path, n, partial[item.path])
            sources_entry[item.path] = entry
        elif item.kind != "celeba" or item.path in bad:
            reason = bad.get(item.path) or partial.get(item.path) or "gave no records"
            skipped.append({"input": item.path, "reason": reason})
    # Bad pictures inside a CelebA root are named "<root>/<name>": listed, but the root is the input.
    new_paths = {i.path for i in new}
    skipped += [{"input": k, "reason": v} for k, v in sorted(bad.items()) if k not in new_paths]
    if skipped:
        log.warning("skipped %d bad inputs", len(skipped))

    moments = {"count": result["moments"]["count"], "sum": result["moments"]["sum"].astype("int64"),
               "sumsq": result["moments"]["sumsq"].astype("int64")}
    for f in new_files:
        f["bytes"] = _size(storage.join(output, f["name"]), f["bytes"])
    manifest = dict(header)
    manifest.update(splits=splits, sources=sources_entry,
                    skipped=sorted(problems + skipped, key=lambda s: s["input"]),
                    attribute_names=result["attribute_names"], bytes=sum(f["bytes"] for f in new_files),
                    options=_options_record(args, settings),
                    runs=[{"tag": tag, "inputs": len(new), "records": sum(f["count"] for f in new_files)}],
                    shards={f["name"]: {"count": f["count"], "bytes": f["bytes"]} for f in new_files})
    if incremental:
        moments = mf.add_moments(mf.read_moments(output, *settings.size, manifest=old), moments)
        manifest = mf.merge(old, manifest)
    manifest.update(mf.write_moments(output, moments, tag, written))
    mf.write(output, manifest)  # the switch: the one step that changes what the folder holds
    written.clear()
    owned.mark(output, "dataset")
    if old:
        # The new manifest is in place: files only the old one named are garbage now.
        _delete_unlisted(output, old, manifest)
    return manifest, moments, skipped, new_files



def _delete_unlisted(output, old, manifest):
    """Delete the files only the old manifest names, each only when it lies inside the dataset folder: a
    manifest is data (a folder may come from someone else) and must not be able to delete anything else."""
    from pipelines import manifest as mf

    keep = set(mf.listed_files(manifest)) | set(mf.moment_files(manifest))
    for name in mf.listed_files(old) + mf.moment_files(old):
        if name in keep:
            continue
        path = owned.member(output, name)
        if path is None:
            log.warning("%s: not deleting %r, which the old manifest lists: it is not a file inside the dataset "
                        "folder", mf.path(output), name)
        elif storage.isfile(path):
            storage.delete(path)


def _size(path, fallback):
    try:
        return storage.size(path)
    except OSError:
        return fallback


if __name__ == "__main__":
    sys.exit(jobs.main(run))
