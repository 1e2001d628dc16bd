"""The extract stage: films, CelebA and image folders -> a dataset folder of sharded TFRecords.

    from pipelines.extract import ExtractConfig, extract
    summary = extract(ExtractConfig(inputs=("films/",), output="data/", size=(72, 128)))

``extract`` does the driver's work around the Beam pipeline (``pipelines.extract_beam``): it checks the
output, locks a local one (``.cadl-lock``: a second extract into it exits 75 touching nothing), removes work
folders that killed runs left, skips what an incremental run already has, runs the pipeline into a work
folder in the output (removed however the run ends, Ctrl-C and SIGTERM included), then publishes the run as
one unit: shards renamed from the parts, mean/std images and moments, and the manifest's switch (see
``pipelines.manifest``). ``cadl extract`` (``jobs/extract.py``) is its flags.

The summary (returned, and written as summary.json) has these keys:
    output, manifest             the dataset folder and its manifest file
    inputs_found                 inputs that config.inputs name (files, CelebA roots)
    inputs_new                   inputs processed by this run (not already extracted)
    inputs_already_extracted     inputs skipped because the manifest has them with the same size and mtime
                                 (only with incremental; 0 otherwise)
    inputs_extracted             new inputs that gave at least one record
    inputs_bad                   new inputs skipped as unreadable, empty, truncated to nothing or not media
    records_new                  records written by this run;  records_total: in the dataset after it
    splits_new, splits           records per split written by this run / in the dataset after it
    shards_new                   shard files written by this run (names relative to the output folder)
    skipped                      [{"input", "reason"}] for this run's bad inputs
    runner, seconds              the Beam runner used and the job's wall time
    segments_per_worker          {"host:pid": film segments} of the worker processes that decoded them
Before the manifest is written, every shard is read back: it must hold the records its writer counted, and
they must be the records the decoders counted, per split and per source (``extract_beam.verify``).
An incremental run with nothing new succeeds with inputs_new 0 and writes no shard.

Inputs and output are local paths or URLs of any filesystem Apache Beam knows (gs://, s3://, hdfs://, ...).
"""
import contextlib
import dataclasses
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid

from pipelines import geometry, media, owned, schema, sources, storage
from pipelines import manifest as mf
from pipelines.errors import CadlError, no_space
from pipelines.lock import folder_lock

log = logging.getLogger("cadl.extract")
TMP_PREFIX = ".cadl-extract-"  # of the run's work folder in the output (Settings.tmp_dir): Beam's parts, the report


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Every knob of an extraction; the defaults are ``cadl extract``'s. Invalid values raise ``CadlError``
    (one line naming the flag) when the config is made."""
    inputs: tuple                  # films, images, folders, globs, CelebA roots: local paths or URLs
    output: str                    # the dataset folder, a local path or a URL
    size: tuple = (64, 64)         # (H, W) pixels of every record's picture, 1..geometry.MAX_SIDE each
    fit: str = "crop"              # geometry.FITS: "crop" (cover, centre-crop) | "pad" (black bars) | "stretch"
    crop_factor: float | None = None  # stills: central fraction (0, 1] of each side kept; None: 0.8 CelebA, 1 others
    every: int = 1                 # films: keep every Nth frame (>= 1), counted from ``start``
    fps: float | None = None       # films, instead: the first frame of each 1/fps seconds (> 0); None: every frame
    start: float = 0.0             # films: seconds skipped at the start of each (>= 0)
    end: float | None = None       # films: seconds into each where extraction stops (> start); None: its end
    deinterlace: str = "auto"      # media.DEINTERLACE: "auto" deinterlaces interlaced films, "off" keeps fields
    stall_seconds: float = media.STALL_SECONDS  # an ffmpeg process silent this long (> 0): its input is skipped
    segment_seconds: float | None = None  # least seconds of film per work item (> 0), each cut right after a
    # keyframe; None: sized by the work (frames x pixels) and the runner's workers (extract_decode.segment_seconds)
    format: str = "png"            # schema.IMAGE_FORMATS: "png" (lossless) | "jpeg"
    quality: int = 95              # JPEG quality 1..100 (format "jpeg" only)
    compression: str = "none"      # shards: "none" | "gzip" (.tfrecord.gz)
    shard_mb: float = 100.0        # target shard size in MiB (> 0) when num_shards is 0
    num_shards: int = 0            # > 0: at most this many shards per split, records sorted (a full shuffle)
    validation_fraction: float = 0.05  # 0..1: share of films (in blocks) and folder stills for validation
    validation_block: float = 4.0  # seconds (> 0): films go to validation in contiguous blocks this long
    incremental: bool = False      # keep the dataset in ``output``, add only inputs its manifest lacks
    beam_args: tuple = ()          # Beam pipeline options ("--runner=...", "--temp_location=...", ...)
    settings: dict = dataclasses.field(default=None, compare=False)  # {"job", "argv", "config_file",
    # "flags"}: how the command was asked for (jobs.config_file), recorded in the summary so it can be repeated

    def __post_init__(self):
        for name in ("inputs", "size", "beam_args"):  # tuples whatever sequence was given: hashable, picklable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        size = self.size
        checks = [
            (len(size) == 2 and all(isinstance(v, int) and 1 <= v <= geometry.MAX_SIDE for v in size),
             f"--size must be a height and a width of 1..{geometry.MAX_SIDE} pixels, not {size!r}"),
            (self.fit in geometry.FITS, f"--fit must be one of {', '.join(geometry.FITS)}"),
            (self.every >= 1, "--every must be >= 1"), (self.fps is None or self.fps > 0, "--fps must be > 0"),
            (self.start >= 0, "--start must be >= 0"),
            (self.end is None or self.end > self.start, "--end must be after --start"),
            (self.deinterlace in media.DEINTERLACE, f"deinterlace must be one of {', '.join(media.DEINTERLACE)}"),
            (self.format in schema.IMAGE_FORMATS, f"--format must be one of {', '.join(schema.IMAGE_FORMATS)}"),
            (1 <= self.quality <= 100, "--quality must be in 1..100"),
            (self.compression in ("none", "gzip"), "--compression must be none or gzip"),
            (0 <= self.validation_fraction <= 1, "--validation-fraction must be in 0..1"),
            (self.validation_block > 0, "--validation-block must be > 0"),
            (self.segment_seconds is None or self.segment_seconds > 0, "--segment-seconds must be > 0"),
            (self.stall_seconds > 0, "--stall-seconds must be > 0"),
            (self.shard_mb > 0, "--shard-mb must be > 0"), (self.num_shards >= 0, "--num-shards must be >= 0"),
            (self.crop_factor is None or 0 < self.crop_factor <= 1, "--crop-factor must be in (0, 1]")]
        for ok, message in checks:
            if not ok:
                raise CadlError(message)

    def options_record(self):
        """The options that shaped the records (stored in the manifest; no paths, no run-specific values)."""
        return {"size": list(self.size), "fit": self.fit, "format": self.format,
                "quality": self.quality if self.format == "jpeg" else None, "crop_factor": self.crop_factor,
                "every": self.every, "fps": self.fps, "start": self.start, "end": self.end,
                "segment_seconds": self.segment_seconds, "compression": _tf_compression(self),
                "shard_mb": self.shard_mb, "num_shards": self.num_shards,
                "validation_fraction": self.validation_fraction, "validation_block": self.validation_block,
                "deinterlace": self.deinterlace}


def _tf_compression(config):
    return "GZIP" if config.compression == "gzip" else ""


def extract(config):
    """Extract ``config.inputs`` into ``config.output``; returns the summary (also written as summary.json)."""
    started = time.time()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    urls = [path for path in config.inputs + (config.output,) if storage.is_url(path)]
    if urls:
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        # Filesystems read their settings (--hdfs_host, --s3_region_name, ...) from the pipeline options; the
        # driver lists inputs and writes the output before the pipeline exists.
        FileSystems.set_options(PipelineOptions(list(config.beam_args)))
        for url in urls:
            storage.check(url)
    output = storage.normalize(config.output)
    _check_output(output)
    # A local output is locked for the whole run: a second extract into it exits 75 and touches nothing.
    try:
        with contextlib.nullcontext() if storage.is_url(output) else folder_lock(output, "extract into this folder"):
            if not storage.is_url(output):
                _sweep_temp(output)
            return _extract(config, output, started)
    except Exception as e:
        if not no_space(e):
            raise
        raise CadlError(f"{output}: no space left on device; the dataset there is as it was before this run "
                        "(free some space and run again)") from None


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


def _sweep_temp(output):
    """Remove work folders that killed runs left (with the lock held, no other run is using one)."""
    for name in sorted(os.listdir(output)):
        if name.startswith(TMP_PREFIX) and os.path.isdir(os.path.join(output, name)):
            log.info("%s: removing %s, left by an interrupted run", output, name)
            storage.remove_tree(os.path.join(output, name))


def _extract(config, output, started):
    from pipelines.extract_decode import Settings

    settings = Settings(config, tmp_dir=storage.join(output, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}"))
    old = mf.read(output)
    inputs, problems = sources.discover(list(config.inputs), exclude=[output])
    skipped = [{"input": spec, "reason": reason} for spec, reason in problems]
    for entry in skipped:
        log.warning("skipping %s: %s", entry["input"], entry["reason"])
    if not inputs:
        raise CadlError(f"{', '.join(config.inputs)}: no films, images or CelebA found")
    image = {"height": config.size[0], "width": config.size[1], "channels": 3, "format": config.format,
             "fit": config.fit}
    header = {"schema_version": schema.SCHEMA_VERSION, "image": image, "compression": _tf_compression(config)}
    if config.incremental and old:
        mf.check_compatible(old, header, output)
        new, done, changed = mf.already_extracted(old, inputs)
        log.info("skipping %d already extracted", len(done))
        for item in changed:
            log.warning("%s changed since it was extracted: its records are added again and the old ones "
                        "stay (extract without --incremental to rebuild the dataset)", item.path)
    else:
        new, done = inputs, []
    if old and not config.incremental:
        log.info("%s: replacing the dataset there (use --incremental to add to it)", output)

    summary = {"output": output, "manifest": mf.path(output), "inputs_found": len(inputs),
               "inputs_new": len(new), "inputs_already_extracted": len(done), "inputs_extracted": 0,
               "inputs_bad": 0, "records_new": 0, "splits_new": {}, "shards_new": [], "skipped": skipped,
               "settings": config.settings}
    if not new:
        summary.update(records_total=mf.counts(old)["total"], splits=_splits(old), runner=None,
                       seconds=round(time.time() - started, 3))
        _write_summary(output, summary)
        log.info("nothing new to extract into %s", output)
        return summary

    new, celebas, bad_roots = _load_celeba(new, (old or {}).get("attribute_names") if config.incremental else None)
    skipped += bad_roots
    if not new:
        raise CadlError(f"{output}: no records: every input was skipped ({len(bad_roots)} bad; reasons above)")
    _check_space(output, config, new, celebas)
    result = _run_pipeline(settings, new, celebas)
    # Published as one unit (see pipelines.manifest): shards and moments under new names, then the manifest's
    # switch. A failure before it removes what this run wrote (``written``) and leaves the old dataset as it was.
    written = []
    try:
        manifest, run_skipped, new_files = _finalize(config, header, old, new, result, output, skipped, written)
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
        segments_per_worker=result["report"]["workers"], seconds=round(time.time() - started, 3))
    _write_summary(output, summary)
    log.info("%s: %d new records (%s) from %d inputs in %.1f s; %d skipped", output, summary["records_new"],
             ", ".join(f"{k} {v}" for k, v in splits_new.items()), summary["inputs_extracted"],
             summary["seconds"], summary["inputs_bad"])
    return summary


def _check_space(output, config, new, celebas):
    """Refuse up front when the records whose number is known before decoding (stills, CelebA pictures;
    a film's frames are only counted by the workers) clearly will not fit: estimated at half the raw pixels
    for PNG and a sixteenth for JPEG, so only a run that cannot fit is refused."""
    if storage.is_url(output):
        return
    count = sum(1 for i in new if i.kind == "image") + sum(len(d.names) for d in celebas.values())
    h, w = config.size
    need = count * h * w * 3 // (2 if config.format == "png" else 16)
    free = shutil.disk_usage(output).free
    if need > free:
        raise CadlError(f"{output}: not enough space: {count} records at {h}x{w} need about {need / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free; nothing was written")


def _splits(manifest):
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


def _run_pipeline(settings, new, celebas):
    from pipelines import extract_beam

    films = [i for i in new if i.kind == "film"]
    images = [i for i in new if i.kind == "image"]
    batches, attribute_names = [], []
    for item in (i for i in new if i.kind == "celeba"):
        dataset = celebas[item.path]
        attribute_names = attribute_names or dataset.attribute_names
        batches += extract_beam.celeba_batches(dataset)
    log.info("extracting %d films, %d images, %d CelebA roots at %s (%s)", len(films), len(images),
             len(new) - len(films) - len(images), geometry.format_size(settings.config.size), settings.config.fit)
    options, runner = extract_beam.pipeline_options(settings.config.beam_args)
    settings = dataclasses.replace(settings, workers=extract_beam.local_workers(options, runner))
    # A worker's failure comes back as the exception raised here; Beam's own log and print of it (a
    # traceback per bundle, hundreds of lines) only say it again: its error records are dropped, its prints
    # held back and shown unless the failure is one that becomes a single line (a full disk).
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(_drop_beam_errors)
    printed = io.StringIO()
    extract_beam.CANCELLED.clear()
    try:  # from the work folder's creation on: an interrupt while Beam builds the graph cleans up too
        storage.makedirs(settings.tmp_dir)
        pipeline = extract_beam.make_pipeline(runner, options)
        records = pipeline | "Extract" >> extract_beam.ExtractRecords(settings, films, images, batches)
        _ = records | "Write" >> extract_beam.WriteDataset(settings)
        with contextlib.redirect_stderr(printed):
            state = pipeline.run().wait_until_finish()
    except BaseException as e:  # Ctrl-C and SIGTERM too: no run leaves its work folder behind
        extract_beam.CANCELLED.set()
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
        if not extract_beam.CANCELLED.is_set():  # interrupted: workers still tearing down would log their errors
            for handler in handlers:
                handler.removeFilter(_drop_beam_errors)
        storage.films.clear()  # copies of remote films made by workers in this process
    report, moments = extract_beam.read_results(settings.tmp_dir, settings.config.size)
    return {"report": extract_beam.tally(report), "moments": moments, "attribute_names": attribute_names,
            "state": str(state), "runner": type(runner).__name__ if runner else options.get_all_options()["runner"]}


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
    from pipelines import extract_beam

    if record.name.startswith("apache_beam") and extract_beam.CANCELLED.is_set():
        return False  # an interrupted run's workers tearing down: their complaints say nothing new
    return not (record.name.startswith("apache_beam") and record.levelno >= logging.ERROR)


def _finalize(config, header, old, new, result, output, problems, written):
    """Rename the parts into shards, build and write the manifest, mean/std images. Returns
    (manifest, skipped this run, [new file dicts])."""
    report = result["report"]
    counts, bad, partial, lost = report["counts"], report["bad"], report["partial"], report["lost"]
    if not any(counts.values()):
        raise CadlError(f"{output}: no records: every input was skipped ({len(bad) + len(partial)} bad; "
                        "reasons above)")
    from pipelines import extract_beam
    extract_beam.verify(report, new, header["compression"], output)  # before anything is renamed

    # Names no file of the old dataset has: until the manifest switches, the old dataset stays as it was.
    tag = mf.run_tag(old, storage.listdir(output) if old else ())
    new_files = []
    for split in schema.SPLITS:
        group = sorted(report["parts"].get(split, []),
                       key=lambda p: (p.get("shard", 0), p["first_key"] or "", p["path"]))
        group = [p for p in group if p["count"]]
        for i, part in enumerate(group):
            name = schema.shard_name(split, i, len(group), compressed=header["compression"] == "GZIP", tag=tag)
            storage.rename(part["path"], storage.join(output, name))
            written.append(storage.join(output, name))
            new_files.append({"name": name, "split": split, "count": part["count"], "bytes": part["bytes"]})

    sources_entry, skipped = {}, []
    for item in new:
        n = counts.get(item.path, 0)
        if n:
            entry = mf.source_entry(item, n, report["facts"].get(item.path))
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
    manifest = mf.build(header, new_files, sources_entry, problems + skipped, result["attribute_names"],
                        config.options_record(), tag, len(new))
    if config.incremental and old:
        moments = mf.add_moments(mf.read_moments(output, *config.size, manifest=old), moments)
        manifest = mf.merge(old, manifest)
    manifest.update(mf.write_moments(output, moments, tag, written))
    mf.write(output, manifest)  # the switch: the one step that changes what the folder holds
    written.clear()
    owned.mark(output, "dataset")
    if old:
        # The new manifest is in place: files only the old one named are garbage now.
        mf.delete_unlisted(output, old, manifest)
    return manifest, skipped, new_files


def _size(path, fallback):
    try:
        return storage.size(path)
    except OSError:
        return fallback
