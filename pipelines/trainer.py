"""The training loop of the film VAE: tf.data in, model out, in one resumable run folder.

``Trainer(config)`` holds the model, the data streams, the checkpoints and the writers of one run folder;
``fit()`` trains until the first budget is reached (steps, epochs, seconds) or a signal arrives, then
validates, draws the montages and exports. ``pipelines.training.train`` is the function that calls it.

Checkpoints (``RUN/checkpoints/ckpt-STEP``, ``pipelines.checkpoints``): weights, optimizer state (with the step),
the sampling noise generators and, when small enough, the input pipeline's position, so that a resumed run
sees the batches an uninterrupted one would. Written to temporary files, the pointer switched atomically.
"""
import dataclasses
import logging
import math
import os
import shlex
import signal
import shutil
import sys
import tempfile
import time
import warnings

from pipelines import atomic, checkpoints, report, tfdata
from pipelines import manifest as mf
from pipelines.errors import CadlError

log = logging.getLogger("cadl.train")

MODEL_FLAGS = ("arch", "widths", "blocks", "latent", "latent_channels", "hidden", "norm", "activation", "dropout",
               "loss", "beta", "beta_warmup")
EXACT_RESUME_BYTES = 128 * 2**20  # exact_resume "auto": save the data position when it is at most this big
HISTORY_MAX = 500  # loss points kept in summary.json
MONTAGE_IMAGES = 16  # the fixed validation batch shown in recon montages (two rows of originals/reconstructions)
LATENT_SAMPLES = 36  # z ~ N(0, I) decoded in latent montages (6 x 6)
SCORE_BATCHES = 4  # validation batches whose reconstructions get SSIM and the Laplacian ratio (a forward pass)
REPORT_SECONDS = 30.0  # RUN/report.html at a validation at most this often (it takes ~1 s on a long history)


def model_config(config, manifest, stored=None, base=None):
    """The model config: the stored one on resume (explicit conflicting flags are an error), else preset+flags;
    ``base`` (a warm start's config) stands in for the default preset when no model flag is given."""
    from models import vae

    shape = tfdata.image_shape(manifest)
    explicit = {k: list(v) if isinstance(v, tuple) else v for k in MODEL_FLAGS
                if (v := getattr(config, k)) is not None}
    if stored is not None:
        conflicts = {k: v for k, v in explicit.items() if stored.get(k) != v}
        if conflicts:
            raise CadlError(f"{os.path.join(config.out, 'config.json')}: run was built with "
                            + ", ".join(f"{k}={stored.get(k)!r}" for k in conflicts)
                            + f"; it cannot resume with {conflicts}; use a new --out folder")
        return vae.make_config(vae.upgrade_config(stored))
    from models import vaegan

    preset = {"default": {}, "tiny": vae.TINY, "course": vae.COURSE, "sharp": vaegan.VAE_PRESET}[config.preset]
    if base is not None and config.preset == "default" and not explicit:
        preset = {k: v for k, v in base.items() if k not in ("image_size", "channels", "fit", "seed")}
    model = dict(preset)
    if "latent" in explicit and "latent_channels" not in explicit:
        model["latent_channels"] = 0  # --latent N alone asks for a dense code of N numbers
    model.update(explicit)
    model.update(image_size=[shape[0], shape[1]], channels=shape[2], seed=config.seed,
                  fit=(manifest.get("image") or {}).get("fit", "crop"))
    try:
        return vae.make_config(model)
    except ValueError as e:
        raise CadlError(f"{config.data}: {e}") from None


def sharp_options(config):
    """The sharp preset's GAN knobs from the TrainConfig (None: models.vaegan.GAN_DEFAULTS)."""
    from models import vaegan

    return {k: getattr(config, k) for k in vaegan.GAN_DEFAULTS}


def check_compatible(config, manifest, where, data_dir):
    shape = tfdata.image_shape(manifest)
    want = (config["image_size"][0], config["image_size"][1], config["channels"])
    if tuple(want) != tuple(shape):
        raise CadlError(f"{where}: model is for {want[0]}x{want[1]}x{want[2]} images but {data_dir} holds "
                        f"{shape[0]}x{shape[1]}x{shape[2]}; use a new --out folder or matching data")


def pick_strategy(kind):
    import tensorflow as tf

    if kind == "multiworker":
        # Before anything that starts TensorFlow's runtime (listing logical devices does): collective ops are
        # configured once, at startup.
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise CadlError(f"--strategy multiworker: {_first_line(e)}; it must be the first TensorFlow work of "
                            "its process (run it as its own cadl train command)") from None
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class Stopper:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and leaves at the next step boundary."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def tb_scalar(name, value, step):
    """A TensorBoard scalar, written with TensorFlow's own op (the ``tensorboard`` package is not needed)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=meta)


def tb_image(name, image, step):
    """A TensorBoard image summary (the images plugin's [width, height, png] string tensor)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "images"
    meta.plugin_data.content = b""
    png = tf.io.encode_png(image).numpy()
    tensor = tf.constant([str(image.shape[1]).encode(), str(image.shape[0]).encode(), png])
    tf.summary.write(name, tensor, step=step, metadata=meta)


def lr_factor(schedule, fraction):
    """The multiplier of --lr once ``fraction`` (0..1) of the training budget is spent."""
    fraction = min(max(fraction, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * fraction))
    if schedule == "linear":
        return 1.0 - fraction
    return 1.0


def _first_line(e):
    text = str(getattr(e, "message", "") or e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class Trainer:
    """Holds the model, data, checkpoints and writers of one run folder; ``fit()`` trains."""

    def __init__(self, config):
        import keras
        import tensorflow as tf

        from models import vae

        self.args, self.tf, self.keras = config, tf, keras
        args = config
        self.t0 = time.time()
        # The strategy first: the multi-worker one must exist before any other TensorFlow work.
        self.strategy = pick_strategy(args.strategy)
        self.out = self.run_dir = os.path.abspath(args.out)
        self.multiworker, self.scratch, self._mean = args.strategy == "multiworker", None, None
        if self.multiworker and not self.strategy.extended.should_checkpoint:
            # Every worker saves and exports (collective ops need all of them), but only the chief writes RUN:
            # the others write into a scratch folder removed at the end, and restore the chief's checkpoints.
            self.scratch = self.out = tempfile.mkdtemp(prefix=f"cadl-worker-{self.strategy.cluster_resolver.task_id}-")
        self.manifest = tfdata.load_manifest(args.data)
        self.train_files = tfdata.split_files(args.data, self.manifest, "train")
        self.train_count = mf.split_count(self.manifest, "train")
        self.val_split = "validation" if mf.split_count(self.manifest, "validation") else (
            "test" if mf.split_count(self.manifest, "test") else "train")
        self.val_files = tfdata.split_files(args.data, self.manifest, self.val_split)
        self.skipped = []  # [{"file", "reason"}] shards left out under --skip-corrupt
        self._reported = 0.0  # when RUN/report.html was last written

        config_path = os.path.join(self.run_dir, "config.json")
        self.ckpt_dir = os.path.join(self.out, "checkpoints")
        stored = None
        if os.path.exists(config_path):
            try:
                stored = atomic.read_json(config_path)["model"]
            except (ValueError, KeyError, TypeError, OSError) as e:
                raise CadlError(f"{config_path}: unreadable run config ({_first_line(e)})") from None
            if not isinstance(stored, dict) or not isinstance(stored.get("image_size"), list):
                raise CadlError(f"{config_path}: \"model\" is not a model configuration (an object with "
                                "image_size, ...); use a new --out folder")
            check_compatible(stored, self.manifest, config_path, args.data)
        elif os.path.isdir(self.run_dir) and os.listdir(self.run_dir):
            if os.path.exists(os.path.join(self.run_dir, "checkpoints")):
                raise CadlError(f"{self.run_dir}: has checkpoints but no config.json; use a new --out folder")
        source = None
        if stored is None and args.init_from:  # a new run's warm start keeps the network it starts from
            from pipelines import export
            source = export.load_model(args.init_from)
        self.config = model_config(args, self.manifest, stored, source.config if source is not None else None)
        self.sharp = args.preset == "sharp"
        if stored is not None:
            was = atomic.read_json(config_path).get("sharp") is not None
            if was != self.sharp:
                raise CadlError(f"{config_path}: run was trained {'with' if was else 'without'} --preset sharp; "
                                "it resumes with the same preset; use a new --out folder")

        keras.utils.set_random_seed(args.seed)
        keras.mixed_precision.set_global_policy(args.precision)
        self.replicas = self.strategy.num_replicas_in_sync
        if args.batch_size % self.replicas:
            raise CadlError(f"--batch-size {args.batch_size} must divide by the {self.replicas} replicas")
        with self.strategy.scope():
            clip = {"global_clipnorm": args.clip_norm} if args.clip_norm else {}
            if self.sharp:
                from models import vaegan
                try:
                    self.model = vaegan.VAEGAN(self.config, gan=sharp_options(args), name="vae").build_all()
                except ValueError as e:
                    raise CadlError(f"{args.data}: {e}") from None
                # D: Adam with a short memory (beta_1 0.5), as GANs are usually trained
                self.model.set_d_optimizer(keras.optimizers.Adam(args.d_lr, beta_1=0.5, beta_2=0.9, **clip))
            else:
                self.model = vae.VAE(self.config, name="vae").build_all()
            self.model.compile(optimizer=keras.optimizers.Adam(args.lr, **clip), jit_compile=bool(args.jit),
                               steps_per_execution=args.steps_per_execution)
            self.optimizer = self.model.optimizer
            self.optimizer.build(getattr(self.model, "generator_variables", self.model.trainable_variables))
        # The data stream: its position is part of the checkpoint when small enough (exact resume).
        self.exact = self._exact_resume()
        self.iterator = self.train_stream(resume_step=None)
        self._make_manager()
        self.resumed_from = None
        latest = self.checkpoints.latest if self.scratch is None else tf.train.latest_checkpoint(
            os.path.join(self.run_dir, "checkpoints"))  # a worker other than the chief resumes from the chief's
        if latest:
            # Without its data position when it has none, or when the input pipeline changed shape (other batch
            # size, files...): then all but the position is restored.
            restored = self.checkpoints.restore(latest, optional=("data",))
            self.resumed_from = self.step
            if "data" not in restored:  # the position in the data was not restored: a fresh order for this step
                self.iterator = self.train_stream(resume_step=self.step)
                self._make_manager()
            log.info("resumed from step %d", self.step)
        elif args.init_from:
            self._warm_start(args.init_from, source)
        report.truncate_history(self.out, self.step)  # a resumed run redoes the steps after its checkpoint
        atomic.write_json(os.path.join(self.out, "config.json"), {
            "model": self.config, "image_size": self.config["image_size"], "channels": self.config["channels"],
            "fit": self.config["fit"], "data": os.path.abspath(args.data) if "://" not in args.data else args.data,
            "training": {k: v for k, v in dataclasses.asdict(args).items()
                         if k not in ("data", "out", "settings") + MODEL_FLAGS},
            "settings": args.settings,  # the flags as resolved from the command line and --config
            "sharp": self.model.gan if self.sharp else None,  # the sharp preset's discriminator and loss weights
        })

    @property
    def step(self):
        return int(self.optimizer.iterations.numpy())

    def _warm_start(self, path, source=None):
        """Start from the weights of the model at ``path`` (``source``: that model, when already loaded)."""
        from pipelines import export

        if source is None:
            source = export.load_model(path)
        check_compatible(source.config, self.manifest, path, self.args.data)
        arch = ("arch", "widths", "blocks", "latent", "latent_channels", "hidden", "norm")
        if any(source.config[k] != self.config[k] for k in arch):
            # Warm start is only meaningful for the same network (without model flags the run adopted it).
            raise CadlError(f"{path}: model architecture {[source.config[k] for k in arch]} differs from "
                            f"this run's {[self.config[k] for k in arch]}; drop the conflicting model flags")
        self.model.set_weights(source.get_weights())
        log.info("warm start from %s", path)

    # -- data --

    def _exact_resume(self):
        """Save the input pipeline's position (cache + shuffle buffer) in checkpoints when that stays small."""
        if self.args.exact_resume != "auto":
            return self.args.exact_resume == "yes"
        h, w, c = tfdata.image_shape(self.manifest)
        buffer = min(self.args.shuffle_buffer or tfdata.SHUFFLE_BYTES // (h * w * c), self.train_count)
        cached = self.args.cache == "yes" or (self.args.cache == "auto" and
                                              self.train_count * h * w * c <= tfdata.CACHE_AUTO_BYTES)
        state = (buffer + (self.train_count if cached else 0)) * h * w * c
        return state <= EXACT_RESUME_BYTES

    def _make_manager(self):
        """The run's checkpoints: weights, optimizer (with the step), noise generators, and the data position
        when it is small enough and can be saved."""
        objects = checkpoints.keras_objects(self.model)
        if self.sharp:  # both networks and both optimizers: a resumed sharp run continues exactly
            objects.update(discriminator=self.model.discriminator, d_optimizer=self.model.d_optimizer)
        if self.exact and self.iterator_checkpointable:
            objects["data"] = self.iterator
        self.checkpoints = checkpoints.Checkpoints(self.ckpt_dir, self.args.keep, run=self.out, unit="step",
                                                   advice="try a lower --lr", **objects)

    def train_stream(self, resume_step=None):
        """An iterator over training batches. ``resume_step``: the position was not restored, so draw a
        fresh order seeded by the step (reproducible, though not the uninterrupted run's order)."""
        seed = self.args.seed if resume_step is None else self.args.seed * 1000003 + resume_step
        prefetch = None
        if self.replicas == 1 and self.tf.config.list_logical_devices("GPU"):
            prefetch = "/gpu:0"
        # Distributed iterators and device prefetch cannot be saved: those runs resume with a fresh order.
        self.iterator_checkpointable = self.replicas == 1 and prefetch is None
        files = [f for f in self.train_files if f not in {s["file"] for s in self.skipped}]
        ds = tfdata.make_dataset(self.args.data, "train", self.args.batch_size, manifest=self.manifest,
                                  files=files, training=True, augment=self.args.augment,
                                  cache={"auto": "auto", "yes": True, "no": False}[self.args.cache],
                                  shuffle_buffer=self.args.shuffle_buffer, deterministic=self.args.deterministic,
                                  seed=seed, prefetch_device=prefetch)
        if self.replicas > 1:
            return iter(self.strategy.experimental_distribute_dataset(ds))
        return iter(ds)

    def val_dataset(self):
        files = [f for f in self.val_files if f not in {s["file"] for s in self.skipped}]
        ds = tfdata.make_dataset(self.args.data, self.val_split, self.args.batch_size, manifest=self.manifest,
                                  files=files, training=False)
        return ds.take(self.args.validation_batches)

    def data_error(self, error, files):
        """A pipeline op failed: find the corrupt shard; skip it (--skip-corrupt) or stop naming it."""
        bad = tfdata.find_corrupt([f for f in files if f not in {s["file"] for s in self.skipped}],
                                   self.manifest)
        if not bad:
            raise error
        if not self.args.skip_corrupt:
            path, reason = bad[0]
            raise CadlError(f"{path}: corrupt shard ({reason}); rerun with --skip-corrupt to skip it")
        for path, reason in bad:
            log.warning("skipping corrupt shard %s (%s)", path, reason)
            self.skipped.append({"file": path, "reason": reason})
        if not [f for f in self.train_files if f not in {s["file"] for s in self.skipped}]:
            raise CadlError(f"{self.args.data}: every training shard is corrupt")

    # -- evaluation and pictures --

    def validate(self):
        while True:
            try:
                if self.multiworker:
                    return self._validate_locally()
                with warnings.catch_warnings():  # Keras warns that a finite dataset "ran out": it is meant to
                    warnings.simplefilter("ignore", UserWarning)
                    results = self.model.evaluate(self.val_dataset(), verbose=0, return_dict=True)
                return {**{k: float(v) for k, v in results.items()}, **self.sharpness()}
            except (self.tf.errors.DataLossError, self.tf.errors.InvalidArgumentError) as e:
                self.data_error(e, self.val_files)

    def sharpness(self):
        """SSIM and the Laplacian-variance ratio (detail kept, 1 = the source's) of the reconstructions of the
        first SCORE_BATCHES validation batches (z = the mean), by ``pipelines.metrics``."""
        from models.vae import to_uint8
        from pipelines import metrics

        scorer = metrics.Scorer()
        for batch in self.val_dataset().take(SCORE_BATCHES):
            scorer.update(batch.numpy(), to_uint8(self.model(batch, training=False)).numpy())
        figures = scorer.result()
        return {k: figures[k] for k in ("ssim", "laplacian_ratio") if figures[k] is not None}

    def _validate_locally(self):
        """Validation with several workers: each worker alone over the whole validation set, so no collective
        op (Keras' ``evaluate`` all-reduces a uint8 batch, which collectives refuse, and reduces its scalars as
        ``strategy.reduce(..., axis=0)`` does not allow); the weights being the same, so are the figures."""
        from models import vae

        terms = self.tf.function(lambda x: self.model.compute_terms(vae.to_float(x), training=False),
                                 reduce_retracing=True)
        sums, count = {}, 0
        for batch in self.val_dataset():
            n = int(batch.shape[0])
            for k, v in terms(batch).items():  # per-batch means, weighted by the batch size as Keras' Mean does
                sums[k] = sums.get(k, 0.0) + float(v) * n
            count += n
        return {k: v / max(count, 1) for k, v in sums.items()}

    def _multiworker_train_function(self):
        """The training step with several workers. Keras 3 reduces a step's outputs across workers with
        ``strategy.reduce(MEAN, value, axis=0)``, which fails on the VAE's scalar metrics (tensorflow#72388):
        here each is reduced whole (``axis=None``), the mean over the workers, the same on each of them."""
        tf, strategy, model = self.tf, self.strategy, self.model

        @tf.function(jit_compile=bool(self.args.jit), reduce_retracing=True)
        def one_step(batch):
            outputs = strategy.run(model.train_step, args=(batch,))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in outputs.items()}

        def train_function(iterator):
            for _ in range(self.args.steps_per_execution):
                logs = one_step(next(iterator))
            return logs
        return train_function

    def _agree(self, *values):
        """Decisions taken from the clock or a signal, the same on every worker (each must take part in every
        step's collective ops): each value's mean over the workers; the values themselves with one worker."""
        if not self.multiworker:
            return values
        tf, strategy = self.tf, self.strategy
        if self._mean is None:
            self._mean = tf.function(lambda v: strategy.reduce("MEAN", strategy.run(tf.identity, args=(v,)),
                                                               axis=None))
        return tuple(float(v) for v in self._mean(tf.constant(values, tf.float32)).numpy())

    def fixed_batches(self):
        import numpy as np

        files = [f for f in self.val_files if f not in {s["file"] for s in self.skipped}]
        images = tfdata.load_images(self.args.data, self.val_split, MONTAGE_IMAGES, self.manifest, files)
        rng = np.random.default_rng(self.args.seed)
        z = rng.standard_normal((LATENT_SAMPLES, self.config["latent"])).astype(np.float32)
        return images, z

    def montages(self, images, z, writers):
        """Write recon-STEP.png and latent-STEP.png, log them to TensorBoard, rebuild the GIF."""
        import numpy as np

        from pipelines import visual

        folder = os.path.join(self.out, "montages")
        step = self.step
        recon = self.model(images, training=False).numpy() if len(images) else images
        n = len(images)
        cols = max(1, min(8, n))
        rows = []
        for i in range(0, n, cols):  # originals row over their reconstructions row
            rows += [visual.to_uint8(images[i:i + cols]), visual.to_uint8(recon[i:i + cols])]
        picture = visual.montage(np.concatenate(rows), cols=cols) if n else None
        samples = visual.montage(self.model.decoder(z, training=False).numpy())
        if picture is not None:
            visual.write_png(os.path.join(folder, f"recon-{step:07d}.png"), picture)
        visual.write_png(os.path.join(folder, f"latent-{step:07d}.png"), samples)
        with writers["validation"].as_default():
            if picture is not None:
                tb_image("reconstructions", picture, step)
            tb_image("latent_samples", samples, step)
        self.write_gif()

    def write_gif(self):
        from pipelines import visual

        folder = os.path.join(self.out, "montages")
        frames = sorted(f for f in os.listdir(folder) if f.startswith("recon-") and f.endswith(".png"))
        if len(frames) > 200:  # keep the GIF light: an even subsample, always with the last frame
            frames = [frames[round(i * (len(frames) - 1) / 199)] for i in range(200)]
        if frames:
            import imageio.v2 as imageio
            visual.write_gif(os.path.join(folder, "reconstructions.gif"),
                             [imageio.imread(os.path.join(folder, f)) for f in frames], fps=4)

    # -- export --

    def export(self):
        """export/model.keras and export/saved_model/, each appearing complete."""
        from pipelines import export

        model = self.model
        if self.sharp:  # the encoder and decoder only: render and retrain load a plain VAE
            from models import vaegan
            model = vaegan.export_vae(self.model)
        return export.export(model, os.path.join(self.out, "export"), export.vae_endpoints(model))

    def _previous_history(self):
        """The loss history of earlier invocations of this run (a resumed run continues the curve)."""
        if self.resumed_from is None:
            return []
        try:
            previous = atomic.read_json(os.path.join(self.run_dir, "summary.json")).get("history", [])
        except (OSError, ValueError):
            return []
        return [h for h in previous if isinstance(h, dict) and h.get("step", 1e18) <= self.step]

    def _export_is_current(self):  # the chief's run folder decides, on every worker (export has collective ops)
        try:
            previous = atomic.read_json(os.path.join(self.run_dir, "summary.json"))
        except (OSError, ValueError):
            return False
        return (previous.get("step") == self.step and bool(previous.get("export"))
                and os.path.exists(os.path.join(self.run_dir, "export", "model.keras"))
                and os.path.exists(os.path.join(self.run_dir, "export", "saved_model", "saved_model.pb")))

    def save_checkpoint(self):
        """Save unless the weights went non-finite (then stop: the previous checkpoint stays the last good one)."""
        return self.checkpoints.save(self.step)

    # -- the loop --

    def fit(self):
        """Train to the first budget reached, validate, export; returns the summary (also summary.json)."""
        try:
            return self._fit()
        except self.tf.errors.UnavailableError:
            if not self.multiworker:
                raise
            # A worker died or cannot be reached (in any collective op: a step, a checkpoint, an agreement):
            # every worker stops; the chief's last checkpoint is where they all resume.
            good = self.tf.train.latest_checkpoint(os.path.join(self.run_dir, "checkpoints"))
            raise CadlError(f"{self.run_dir}: another worker stopped answering at step {self.step}; restart "
                            f"every worker with the same command to resume from {good or 'the start'}") from None
        finally:
            if self.scratch is not None:  # a worker other than the chief: its copy of the outputs goes
                shutil.rmtree(self.scratch, ignore_errors=True)

    def _fit(self):
        import numpy as np
        from tqdm import tqdm

        tf, args = self.tf, self.args
        target = args.max_steps
        if args.epochs is not None:
            epoch_steps = math.ceil(args.epochs * self.train_count / args.batch_size)
            target = epoch_steps if target is None else min(target, epoch_steps)
        if target is None and args.max_seconds is None:
            target = math.ceil(10 * self.train_count / args.batch_size)
        writers = {name: tf.summary.create_file_writer(os.path.join(self.out, "logs", name))
                   for name in ("train", "validation")}
        images, z = self.fixed_batches()
        start_step, start_time = self.step, time.time()
        train_seconds, train_steps = 0.0, 0
        history, train_logs, stop_reason = self._previous_history(), {}, None
        last_ckpt_step, last_ckpt_time = self.step, time.time()
        window_seconds, window_steps = 0.0, 0
        if self.step == 0:
            self.montages(images, z, writers)
        it = self.iterator
        if self.multiworker:
            self.model.train_function = self._multiworker_train_function()
        self.model.make_train_function()
        # No bar when asked, or when stderr is not a terminal (cron, CI, a log file): a log line per validation.
        bar = tqdm(total=target, initial=self.step, unit="step", disable=None if args.progress else True,
                   dynamic_ncols=True, desc="train", file=sys.stderr)
        with Stopper() as stopper:
            while True:
                if target is not None and self.step >= target:
                    stop_reason = "max_steps" if args.epochs is None or target == args.max_steps else "epochs"
                    break
                time_up, signalled, spent = self._agree(
                    args.max_seconds is not None and time.time() - start_time >= args.max_seconds,
                    stopper.signal is not None, (time.time() - start_time) / args.max_seconds if args.max_seconds
                    else 0.0)
                if time_up:
                    stop_reason = "max_seconds"
                    break
                if signalled:
                    stop_reason = "interrupted"
                    break
                if args.lr_schedule != "constant":
                    fraction = max(self.step / target if target else 0.0, spent)
                    self.optimizer.learning_rate.assign(args.lr * lr_factor(args.lr_schedule, fraction))
                t = time.time()
                try:
                    logs = self.model.train_function(it)
                except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                    self.data_error(e, self.train_files)
                    it = self.iterator = self.train_stream(resume_step=self.step)
                    self._make_manager()
                    continue
                loss = float(logs["loss"])
                dt = time.time() - t
                done = self.step - start_step - train_steps
                train_seconds, train_steps = train_seconds + dt, train_steps + done
                window_steps += done
                window_seconds += dt
                bar.update(done)
                if not math.isfinite(loss):
                    bar.close()
                    good = self.checkpoints.latest
                    raise CadlError(f"{self.out}: loss became {loss} at step {self.step}; stopped "
                                    f"(last good checkpoint: {good or 'none'}); try a lower --lr or --precision "
                                    "float32")
                step = self.step
                if step % args.log_every < done or window_steps >= args.log_every:
                    rate = window_steps * args.batch_size / max(window_seconds, 1e-9)  # training time only
                    train_logs = {k: float(v) for k, v in logs.items()}
                    history.append({"step": step, **train_logs})
                    if len(history) > HISTORY_MAX:  # keep summary.json small on long runs: every other point
                        history = history[:1] + history[2::2]
                    bar.set_postfix(loss=f"{loss:.1f}", psnr=f"{train_logs['psnr']:.1f}", img_s=f"{rate:.0f}")
                    with writers["train"].as_default():
                        for k, v in train_logs.items():
                            tb_scalar(k, v, step)
                        tb_scalar("learning_rate", float(np.asarray(self.optimizer.learning_rate)), step)
                        tb_scalar("images_per_s", rate, step)
                    report.record(self.out, "train", step, train_logs, images_per_s=rate)
                    self.model.reset_metrics()  # train figures are means over the last window
                    window_seconds, window_steps = 0.0, 0
                if args.validate_every and step % args.validate_every < done:
                    val = self._validate_and_log(writers)
                    self._report({"step": step, "epochs": step * args.batch_size / max(self.train_count, 1),
                                  "images_per_s": train_steps * args.batch_size / max(train_seconds, 1e-9),
                                  "train": train_logs, "validation": val, "validation_split": self.val_split,
                                  "wall_time_s": time.time() - self.t0})
                    if bar.disable:
                        log.info("step %d%s: train loss %.2f, PSNR %.2f dB; validation loss %.2f, PSNR %.2f dB, "
                                 "Laplacian ratio %.2f; %.0f images/s", step, f"/{target}" if target else "",
                                 train_logs.get("loss", loss), train_logs.get("psnr", float("nan")),
                                 val.get("loss", float("nan")), val.get("psnr", float("nan")),
                                 val.get("laplacian_ratio", float("nan")),
                                 train_steps * args.batch_size / max(train_seconds, 1e-9))
                if args.montage_every and step % args.montage_every < done:
                    self.montages(images, z, writers)
                if self._agree(step - last_ckpt_step >= args.checkpoint_every
                               or time.time() - last_ckpt_time >= args.checkpoint_seconds)[0]:
                    self.save_checkpoint()
                    last_ckpt_step, last_ckpt_time = step, time.time()
        bar.close()
        if not train_logs and train_steps:
            train_logs = {k: float(v.result()) for k, v in zip([m.name for m in self.model.metrics],
                                                               self.model.metrics)}
        if self.step != last_ckpt_step or not self.checkpoints.latest:
            self.save_checkpoint()
        if stop_reason == "interrupted":
            log.info("%s at step %d: checkpoint saved; rerun the same command to resume", stopper.signal, self.step)
            self._write_summary(stop_reason, train_logs, {}, history, start_step, train_steps, train_seconds)
            raise KeyboardInterrupt
        val = self._validate_and_log(writers)
        if train_steps == 0 and self._export_is_current():
            export = os.path.join(self.out, "export")  # a rerun after the target: nothing new to write
        else:
            self.montages(images, z, writers)
            export = self.export()
        for w in writers.values():
            w.flush()
        return self._write_summary(stop_reason, train_logs, val, history, start_step, train_steps,
                                   train_seconds, export)

    def _validate_and_log(self, writers):
        val = self.validate()
        with writers["validation"].as_default():
            for k, v in val.items():
                tb_scalar(k, v, self.step)
        report.record(self.out, "validation", self.step, val)
        return val

    def _report(self, figures, final=False):
        """Rewrite RUN/report.html (and its plots) from ``figures``: summary.json's keys, as far as known.
        During training at most every REPORT_SECONDS; ``final`` (the summary) always."""
        if not final and time.time() - self._reported < REPORT_SECONDS:
            return
        self._reported = time.time()
        settings = self.args.settings or {}
        command = f"cadl {settings['job']} {shlex.join(settings['argv'])}" if settings.get("argv") is not None \
            else None
        report.write_run_report(self.out, figures, self.config, command, settings)

    def _write_summary(self, stop_reason, train_logs, val, history, start_step, train_steps, train_seconds,
                       export=None):
        summary = {
            "step": self.step,
            "epochs": self.step * self.args.batch_size / max(self.train_count, 1),
            "resumed_from": self.resumed_from,
            "steps_this_run": train_steps,
            "stopped": stop_reason,
            "train": train_logs,
            "validation": val,
            "validation_split": self.val_split,
            "validation_psnr": val.get("psnr"),
            "validation_laplacian_ratio": val.get("laplacian_ratio"),
            "images_per_s": train_steps * self.args.batch_size / train_seconds if train_seconds else None,
            "wall_time_s": time.time() - self.t0,
            "history": history,
            "skipped_shards": self.skipped,
            "checkpoint": self.checkpoints.latest,
            "export": export,
            "montages": os.path.join(self.out, "montages"),
            "gif": os.path.join(self.out, "montages", "reconstructions.gif"),
            "precision": self.args.precision,
            "replicas": self.replicas,
            "batch_size": self.args.batch_size,
            "train_count": self.train_count,
            "config": self.config,
            "settings": self.args.settings,
            "report": os.path.join(self.out, "report.html"),
        }
        atomic.write_json(os.path.join(self.out, "summary.json"), summary)
        self._report(summary, final=True)
        return summary
