"""One idempotent scheduled retraining step — extract what is new, warm-start, evaluate, promote:
``retrain(RetrainConfig(inputs=..., work=..., train=TrainConfig(...)))`` (``cadl retrain`` is its flags).

1. ``extract`` (incremental) adds only inputs not yet in ``WORKDIR/data`` ("skipping N already
   extracted"). When nothing is new and the promoted model has already seen all of the data, the run says
   "nothing new" and exits 0 without training (``force`` trains anyway).
2. ``train`` warm-starts from the promoted model (``init_from``; from scratch the first time) on
   all shards, old and new, for the given budget, into a candidate folder with a temporary name.
3. The candidate and the promoted model are evaluated on the same validation split with the same metrics
   (validation loss and PSNR, ``pipelines.training.evaluate``).
4. The candidate is promoted when it is not worse than the promoted model within the tolerances: it is
   renamed to the next version ``WORKDIR/models/vNNNN`` and ``WORKDIR/models/LATEST`` is switched to it
   atomically. A rejected candidate is kept in ``WORKDIR/candidates/`` for inspection.

WORKDIR layout:

    data/                      the dataset (manifest.json + shards), grown by each run
    models/v0001/, v0002/ ...  promoted run folders (cadl train's layout + retrain.json: the decision)
    models/LATEST -> v0002     relative symlink to the promoted version; `cadl render --model` takes it
    candidates/RUN_ID/         rejected candidates (+ retrain.json saying why), RUN_ID-failed/ for a run that
                               failed while training or evaluating; the newest --keep-rejected are kept
    candidates/.partial-RUN_ID a candidate being trained; never promoted until complete
    summary.json               the last run's summary;  history.jsonl: one line per run, newest last
    report.html                a page of the versions and every run's metrics and decision (pipelines.report)
    state.json                 what the last completed run trained on (decides "nothing new")
    retrain.lock               pid lock while a run is active

Safety: ``LATEST`` only ever moves by an atomic rename, after the candidate is complete, evaluated and
renamed into place; a failure at any step leaves ``LATEST`` and every version untouched. A run killed
mid-training leaves its ``.partial-*`` folder and a stale lock; the next run takes the lock over, resumes
that candidate from its last checkpoint when the data and options are unchanged (or discards it), and
finishes a promotion that was cut off between its two renames.

Exit codes: 0 done (promoted, rejected or nothing new), 75 (EX_TEMPFAIL) another retrain holds the lock
(nothing was touched; try later), 2 a user error (one line naming the file), 130 interrupted.
"""
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import time
from typing import Optional

from pipelines import atomic
from pipelines import manifest as mf
from pipelines.errors import CadlError
from pipelines.lock import PidLock
from pipelines.training import TrainConfig

VERSION_RE = re.compile(r"^v(\d{4,})$")
LATEST = "LATEST"
PARTIAL = ".partial-"
DECISION = "retrain.json"      # in every candidate: its recipe (key "plan"), metrics and the decision


def _say(message):
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """One scheduled step. The extraction fields left None keep the dataset's own (cadl extract's defaults on
    the first run); ``train`` is the candidate's training config, whose ``data``, ``out`` and ``init_from``
    retrain sets itself."""
    inputs: tuple                               # films, folders, globs or CelebA roots (as extract takes)
    work: str                                   # WORKDIR: data/, models/, candidates/, summaries
    train: TrainConfig = TrainConfig(data="", out="")
    force: bool = False                         # train and evaluate a candidate even when nothing is new
    size: Optional[tuple] = None                # (H, W) of the dataset's pictures; fixed by the first run
    fit: Optional[str] = None                   # "crop" | "pad" | "stretch"
    every: Optional[int] = None                 # keep every Nth frame of a film
    fps: Optional[float] = None                 # keep about F frames per second of film
    validation_fraction: Optional[float] = None  # share of each film held out, in whole blocks
    validation_block: Optional[float] = None    # length of those blocks, seconds
    loss_tolerance: float = 0.01                # the candidate's loss may exceed the promoted one's by this fraction
    psnr_tolerance: float = 0.1                 # ... and its PSNR be this many dB below (negative: must improve)
    keep_rejected: int = 10                     # rejected or failed candidates kept in candidates/
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # {"job", "argv", "config_file",
    # "flags"}: how the command was asked for (jobs.config_file), recorded in the summary so it can be repeated

    def __post_init__(self):
        if self.keep_rejected < 0:
            raise CadlError(f"--keep-rejected must be 0 or more, not {self.keep_rejected}")


def retrain(config):
    """Run one step with WORKDIR's lock held; returns the summary (also WORKDIR/summary.json). A busy lock
    raises ``LockBusy`` (exit 75) before anything is touched."""
    from pipelines import owned

    work = os.path.abspath(config.work)
    owned.make_folder(work, "work folder")
    lock = PidLock(os.path.join(work, "retrain.lock"), what="retrain")
    lock.acquire()
    try:
        if lock.recovered is not None:
            _say(f"recovered a stale lock left by pid {lock.recovered.get('pid')} (that process is gone)")
        return Retrain(config, stale_lock=lock.recovered).run()
    finally:
        lock.release()


def extract_config(config, data, manifest):
    """The incremental extraction into ``data``: a later run keeps the dataset's own options unless the
    config says otherwise, so the same short command works every time (extract would otherwise apply its
    defaults and refuse a dataset of another size)."""
    from pipelines.extract import ExtractConfig

    stored = dict((manifest or {}).get("options") or {})
    image = (manifest or {}).get("image") or {}
    if "height" in image:
        stored.update(size=(image["height"], image["width"]), fit=image.get("fit"))
    if config.every is not None or config.fps is not None:
        stored.pop("every", None), stored.pop("fps", None)  # one sampling rule, the one given
    fields = {}
    for name in ("size", "fit", "every", "fps", "validation_fraction", "validation_block"):
        value = getattr(config, name)
        value = stored.get(name) if value is None else value
        if value is not None:
            fields[name] = tuple(value) if name == "size" else value
    if stored.get("deinterlace") == "off":
        fields["deinterlace"] = "off"
    return ExtractConfig(inputs=tuple(config.inputs), output=data, incremental=True, **fields)


class Workdir:
    """The paths of a WORKDIR and the operations that move models between them."""

    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "data")
        self.models = os.path.join(root, "models")
        self.candidates = os.path.join(root, "candidates")
        self.latest = os.path.join(self.models, LATEST)
        self.summary = os.path.join(root, "summary.json")
        self.history = os.path.join(root, "history.jsonl")
        self.state = os.path.join(root, "state.json")

    def versions(self):
        """Version folder names, oldest first."""
        if not os.path.isdir(self.models):
            return []
        names = [n for n in os.listdir(self.models)
                 if VERSION_RE.match(n) and os.path.isdir(os.path.join(self.models, n))]
        return sorted(names, key=lambda n: int(n[1:]))

    def next_version(self):
        versions = self.versions()
        return f"v{(int(versions[-1][1:]) + 1 if versions else 1):04d}"

    def current(self):
        """The promoted version's name, or None before the first promotion."""
        if not os.path.lexists(self.latest):
            return None
        if not os.path.islink(self.latest):
            raise CadlError(f"{self.latest}: expected a symlink to a version folder")
        target = os.readlink(self.latest)
        if not VERSION_RE.match(target) or not os.path.isdir(os.path.join(self.models, target)):
            raise CadlError(f"{self.latest}: points to {target!r}, which is not a version folder here")
        return target

    def point_latest(self, version):
        """Switch LATEST to ``version`` atomically: a new symlink under a temporary name, then rename."""
        tmp = os.path.join(self.models, f".{LATEST}.{os.getpid()}.tmp")
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(version, tmp)  # relative: the WORKDIR may be moved or mounted elsewhere
        os.replace(tmp, self.latest)
        _fsync_dir(self.models)

    def partials(self):
        if not os.path.isdir(self.candidates):
            return []
        return sorted(os.path.join(self.candidates, n) for n in os.listdir(self.candidates)
                      if n.startswith(PARTIAL))

    def rejected(self):
        """Kept rejected and failed candidates, oldest first (names start with the sortable run id)."""
        if not os.path.isdir(self.candidates):
            return []
        return sorted(n for n in os.listdir(self.candidates)
                      if not n.startswith(".") and os.path.isdir(os.path.join(self.candidates, n)))


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM back for a few system calls (a kill -9 is covered by recovery instead)."""
    signals = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_id(workdir):
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_id, n = stamp, 1
    while (os.path.exists(os.path.join(workdir.candidates, run_id))
           or os.path.exists(os.path.join(workdir.candidates, PARTIAL + run_id))):
        n += 1
        run_id = f"{stamp}-{n}"
    return run_id


def data_fingerprint(manifest):
    """A digest of what a dataset holds: every source with its size, mtime and record count, and the
    split counts. Equal fingerprints mean a model trained on one has seen all of the other."""
    if manifest is None:
        return None
    sources = {path: [info.get("size"), info.get("mtime"), info.get("count")]
               for path, info in (manifest.get("sources") or {}).items()}
    splits = {name: split.get("count") for name, split in (manifest.get("splits") or {}).items()}
    blob = json.dumps({"sources": sources, "splits": splits, "image": manifest.get("image")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def decide(candidate, current, loss_tolerance=0.01, psnr_tolerance=0.1):
    """Promote the candidate? Returns ``(promoted, reason)``.

    ``candidate`` and ``current`` are ``pipelines.training.evaluate`` results (``loss``, ``psnr``) on the same
    validation set; ``current`` is None before the first promotion. The candidate passes when its loss is
    at most ``current loss + loss_tolerance * |current loss|`` and its PSNR at least
    ``current PSNR - psnr_tolerance`` dB. Negative tolerances demand an improvement.
    """
    loss, psnr = float(candidate["loss"]), float(candidate["psnr"])
    if not (math.isfinite(loss) and not math.isnan(psnr)):
        return False, f"the candidate's validation metrics are not finite (loss {loss}, PSNR {psnr})"
    if current is None:
        return True, "first model: there is no promoted model to compare with"
    cur_loss, cur_psnr = float(current["loss"]), float(current["psnr"])
    if not math.isfinite(cur_loss):
        return True, f"the promoted model's validation loss is not finite ({cur_loss})"
    loss_limit = cur_loss + loss_tolerance * abs(cur_loss)
    psnr_floor = cur_psnr - psnr_tolerance
    figures = (f"validation loss {loss:.6g} vs {cur_loss:.6g} (limit {loss_limit:.6g}), "
               f"PSNR {psnr:.3f} dB vs {cur_psnr:.3f} dB (floor {psnr_floor:.3f} dB)")
    failed = []
    if loss > loss_limit:
        failed.append("validation loss is worse")
    if psnr < psnr_floor:
        failed.append("PSNR is worse")
    if failed:
        return False, f"{' and '.join(failed)} than the promoted model beyond tolerance: {figures}"
    return True, f"not worse than the promoted model within tolerance: {figures}"


class Retrain:
    """One run of the scheduled step, with the lock held."""

    def __init__(self, config, stale_lock=None):
        self.config = config
        work = os.path.abspath(config.work)
        self.wd = Workdir(work)
        self.started = time.time()
        self.run_id = _run_id(self.wd)
        self.summary = {
            "run_id": self.run_id, "workdir": work, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running", "trained": False,
            "promoted": False, "reason": None, "recovered": {"stale_lock": stale_lock},
            "tolerance": {"loss_fraction": config.loss_tolerance, "psnr_db": config.psnr_tolerance},
            "seconds": {}, "settings": config.settings,
        }
        self.stage = "start"

    # ----------------------------------------------------------------------------------------------
    def run(self):
        try:
            self._finish_cut_off_promotion()
            current = self.wd.current()
            self.summary["current"] = {"version": current} if current else None
            manifest = self._extract()
            recipe = self._recipe(manifest, current)
            if not self._needs_training(manifest, current):
                return self._done("nothing new")
            candidate = self._train(recipe)
            metrics = self._evaluate(candidate, current)
            return self._promote_or_reject(candidate, recipe, metrics, current)
        except KeyboardInterrupt:
            self._done("interrupted", error=f"interrupted during {self.stage}", quiet=True)
            raise
        except CadlError as e:
            self._failed(str(e))
            raise
        except Exception as e:
            self._failed(f"{type(e).__name__}: {e}")
            raise CadlError(f"{self.wd.root}: retrain failed during {self.stage}: {type(e).__name__}: {e}; "
                            f"models/LATEST -> {self.summary.get('latest')}") from e

    def _failed(self, error):
        """A failed candidate is moved aside for inspection (a Ctrl-C'd or killed one stays to be resumed:
        a failure may well repeat, e.g. a diverging loss, so it is not resumed)."""
        path = (self.summary.get("candidate") or {}).get("path")
        if path and os.path.basename(path).startswith(PARTIAL) and os.path.isdir(path):
            kept = os.path.join(self.wd.candidates, f"{self.run_id}-failed")
            try:
                os.rename(path, kept)
                self.summary["candidate"]["path"] = kept
                self._prune_rejected()
            except OSError:
                pass
        self._done("failed", error=error, quiet=True)

    # ----------------------------------------------------------------------------------------------
    def _finish_cut_off_promotion(self):
        """A run killed between renaming its candidate to vNNNN and switching LATEST left a complete,
        accepted version that LATEST does not point to: finish that promotion now.

        A finished promotion is recorded in state.json; when the newest version's run is recorded there,
        LATEST points elsewhere on purpose (someone rolled it back) and is left alone."""
        self.stage = "recovery"
        versions = self.wd.versions()
        if not versions:
            return
        newest = versions[-1]
        current = self.wd.current()
        if current == newest:
            return
        decision = _read_decision(os.path.join(self.wd.models, newest))
        if not decision or not decision.get("promoted"):
            return
        state = _read_json_or_none(self.wd.state) or {}
        if state.get("run_id") == decision.get("run_id"):
            self.summary["rolled_back"] = {"latest": current, "newest": newest}
            _say(f"models/LATEST points to {current}, not the newest version {newest}: kept (a rollback)")
            return
        _say(f"recovery: finishing the promotion of {newest} that an earlier run left half done")
        self.wd.point_latest(newest)
        self._write_state(decision.get("data_fingerprint"), decision.get("run_id"))
        self.summary["recovered"]["finished_promotion"] = newest

    def _extract(self):
        self.stage = "extract"
        from pipelines.extract import extract  # late: Beam takes seconds to import

        before = mf.read(self.wd.data)
        _say(f"[1/4] extract (incremental) into {self.wd.data}")
        t = time.time()
        extracted = extract(extract_config(self.config, self.wd.data, before))
        self.summary["seconds"]["extract"] = time.time() - t
        after = mf.read(self.wd.data)
        if after is None:
            raise CadlError(f"{self.wd.data}: cadl extract wrote no manifest.json")

        old = (before or {}).get("sources") or {}
        new_sources = sorted(path for path, info in (after.get("sources") or {}).items()
                             if old.get(path) != info)
        # "new" is what the dataset gained (an unreadable input is tried again each run but adds nothing).
        already = int(extracted.get("inputs_already_extracted", 0))
        seen = int(extracted.get("inputs_found", already + len(new_sources)))
        _say(f"inputs: {seen} seen, {len(new_sources)} new; skipping {already} already extracted")
        counts_before, counts_after = mf.counts(before), mf.counts(after)
        self.summary["inputs"] = {
            "given": list(self.config.inputs), "seen": seen, "new": len(new_sources),
            "already_extracted": already, "bad": int(extracted.get("inputs_bad", 0)), "new_paths": new_sources,
            "skipped": [s for s in (after.get("skipped") or []) if isinstance(s, dict)],
        }
        self.summary["records"] = dict(counts_after, new=counts_after["total"] - counts_before["total"])
        self.summary["extract"] = extracted
        self.summary["data_fingerprint"] = data_fingerprint(after)
        return after

    def _recipe(self, manifest, current):
        """What a candidate is trained from: the data, the warm start and the training config minus its
        budget and cadence. A partial candidate with the same recipe can resume; one with another is stale."""
        return {
            "data_fingerprint": data_fingerprint(manifest),
            "init_from": current,
            "train_options": json.loads(json.dumps(self.config.train.recipe(), sort_keys=True)),  # as stored
        }

    def _needs_training(self, manifest, current):
        state = _read_json_or_none(self.wd.state) or {}
        fingerprint = data_fingerprint(manifest)
        if self.config.force:
            self.summary["why_trained"] = "--force"
            return True
        if current is None:
            self.summary["why_trained"] = "no promoted model yet"
            return True
        if self.summary["inputs"]["new"]:
            self.summary["why_trained"] = f"{self.summary['inputs']['new']} new input(s)"
            return True
        if state.get("data_fingerprint") != fingerprint:
            # extracted by an earlier run that did not finish training on it (killed, failed)
            self.summary["why_trained"] = "data extracted by an earlier run that did not finish"
            return True
        _say(f"nothing new: every input is extracted and {current} was trained on all of it "
             "(--force trains anyway)")
        return False

    def _train(self, recipe):
        self.stage = "train"
        from pipelines.training import train

        os.makedirs(self.wd.candidates, exist_ok=True)
        candidate = self._resumable_partial(recipe) or os.path.join(self.wd.candidates, PARTIAL + self.run_id)
        resumed = os.path.isdir(candidate)
        if not resumed:
            os.makedirs(candidate)
            atomic.write_json(os.path.join(candidate, DECISION), {"run_id": self.run_id, "plan": recipe})
        init_from = os.path.join(self.wd.models, recipe["init_from"]) if recipe["init_from"] else None
        config = dataclasses.replace(self.config.train, data=self.wd.data, out=candidate, init_from=init_from)
        start = f"warm start from {recipe['init_from']}" if recipe["init_from"] else "from scratch"
        _say(f"[2/4] train the candidate ({start}{', resuming its interrupted run' if resumed else ''}) "
             f"into {candidate}")
        self.summary["candidate"] = {"path": candidate, "init_from": recipe["init_from"], "resumed": resumed,
                                     "train_config": dataclasses.asdict(config)}
        t = time.time()
        trained = train(config)
        self.summary["seconds"]["train"] = time.time() - t
        self.summary["trained"] = True
        self.summary["candidate"]["train"] = trained
        if isinstance(trained, dict) and trained.get("stopped") == "interrupted":
            raise KeyboardInterrupt  # stopped early on a signal: not a finished candidate
        return candidate

    def _resumable_partial(self, recipe):
        """Resume the partial candidate an interrupted run left, if it was started with the same recipe;
        discard any other partial candidate (it can never be finished)."""
        keep = None
        for partial in self.wd.partials():
            decision = _read_decision(partial) or {}
            if keep is None and _same_recipe(decision.get("plan"), recipe):
                keep = partial
                self.summary["recovered"]["resumed_candidate"] = partial
                _say(f"recovery: resuming the candidate an interrupted run left in {partial}")
            else:
                _say(f"recovery: discarding the stale partial candidate {partial} (its data or options differ)")
                self.summary["recovered"].setdefault("discarded_candidates", []).append(partial)
                shutil.rmtree(partial)
        return keep

    def _evaluate(self, candidate, current):
        self.stage = "evaluate"
        from pipelines.training import evaluate

        # One fixed set for both models: the dataset's validation split (test, then train, when a tiny
        # dataset has none: the same fallback cadl train uses for its own validation).
        counts = self.summary["records"]
        split = next((s for s in ("validation", "test") if counts.get(s)), "train")
        self.summary["gate_split"] = split
        _say(f"[3/4] evaluate the candidate and the promoted model on the same {split} set "
             f"({counts.get(split, 0)} images)")
        t = time.time()
        metrics = {"candidate": _metrics(evaluate(candidate, self.wd.data, split=split))}
        if current:
            metrics["current"] = _metrics(evaluate(os.path.join(self.wd.models, current),
                                                         self.wd.data, split=split))
        self.summary["seconds"]["evaluate"] = time.time() - t
        for who, m in metrics.items():
            _say(f"  {who:<9} validation loss {m['loss']:.6g}  PSNR {m['psnr']:.3f} dB  ({m.get('count')} images)")
        return metrics

    def _promote_or_reject(self, candidate, recipe, metrics, current):
        self.stage = "promote"
        promoted, reason = decide(metrics["candidate"], metrics.get("current"),
                                  self.config.loss_tolerance, self.config.psnr_tolerance)
        self.summary["candidate"]["metrics"] = metrics["candidate"]
        if current:
            self.summary["current"]["metrics"] = metrics["current"]
        self.summary["promoted"], self.summary["reason"] = promoted, reason
        decision = {"run_id": self.run_id, "plan": recipe, "promoted": promoted, "reason": reason,
                    "metrics": metrics, "previous": current, "data_fingerprint": recipe["data_fingerprint"],
                    "records": self.summary.get("records"), "decided": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if promoted:
            version = self.wd.next_version()
            decision["version"] = version
            atomic.write_json(os.path.join(candidate, DECISION), decision)
            os.makedirs(self.wd.models, exist_ok=True)
            final = os.path.join(self.wd.models, version)
            with _signals_deferred():  # a SIGTERM between the two renames waits for both to be done
                os.rename(candidate, final)      # complete and decided: now a version
                _fsync_dir(self.wd.models)
                self.wd.point_latest(version)    # the only moment LATEST moves
            self.summary["version"] = version
            self.summary["candidate"]["path"] = final
            _say(f"[4/4] promoted {version}: {reason}")
        else:
            atomic.write_json(os.path.join(candidate, DECISION), decision)
            final = os.path.join(self.wd.candidates, self.run_id)
            os.rename(candidate, final)
            self.summary["candidate"]["path"] = final
            kept = f"kept {current}" if current else "no model promoted"
            _say(f"[4/4] {kept}: candidate rejected ({reason}); it is kept in {final}")
            self._prune_rejected()
        self._write_state(recipe["data_fingerprint"], self.run_id)
        return self._done("promoted" if promoted else "rejected")

    def _prune_rejected(self):
        rejected = self.wd.rejected()
        for name in rejected[:max(0, len(rejected) - self.config.keep_rejected)]:
            shutil.rmtree(os.path.join(self.wd.candidates, name), ignore_errors=True)

    def _write_state(self, fingerprint, run_id):
        atomic.write_json(self.wd.state, {"data_fingerprint": fingerprint, "run_id": run_id,
                                          "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def _done(self, status, error=None, quiet=False):
        s = self.summary
        s["status"] = status
        if error:
            s["error"], s["stage"] = error, self.stage
            if s["reason"] is None:
                s["reason"] = error
        if status == "nothing new":
            s["reason"] = "nothing new"
        try:
            s["latest"] = self.wd.current()
        except CadlError:
            s["latest"] = None
        s["seconds"]["total"] = time.time() - self.started
        s["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            atomic.write_json(self.wd.summary, s)
            _append_history(self.wd.history, s)
            _write_report(self.wd)
        except OSError as e:
            if not quiet:
                raise CadlError(f"{self.wd.summary}: cannot write the run summary ({e.strerror})") from None
        return s


def _append_history(path, summary):
    """One compact line per run; a single O_APPEND write, so concurrent readers never see half a line."""
    line = {k: summary.get(k) for k in ("run_id", "status", "started", "finished", "promoted", "reason",
                                        "version", "latest", "error")}
    line["inputs_new"] = (summary.get("inputs") or {}).get("new")
    line["records"] = (summary.get("records") or {}).get("total")
    for who in ("candidate", "current"):
        metrics = (summary.get(who) or {}).get("metrics")
        if metrics:
            line[who] = {"loss": metrics.get("loss"), "psnr": metrics.get("psnr")}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True, default=str) + "\n").encode())
    finally:
        os.close(fd)


def _write_report(wd):
    """WORKDIR/report.html from history.jsonl and every version's decision (pipelines.report)."""
    from pipelines import report

    history = []
    with open(wd.history) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                history.append(json.loads(line))
    versions = {v: _read_decision(os.path.join(wd.models, v)) or {} for v in wd.versions()}
    report.write_retrain_report(wd.root, history, versions)


def _same_recipe(old, new):
    keys = ("data_fingerprint", "init_from", "train_options")
    return isinstance(old, dict) and all(old.get(k) == new[k] for k in keys)


def _metrics(result):
    return {k: (float(v) if isinstance(v, (int, float)) and k != "count" else v) for k, v in dict(result).items()}


def _read_decision(folder):
    return _read_json_or_none(os.path.join(folder, DECISION))


def _read_json_or_none(path):
    try:
        return atomic.read_json(path)
    except (OSError, ValueError):
        return None


