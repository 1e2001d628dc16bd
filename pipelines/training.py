"""Train the film VAE on extracted shards: ``train(TrainConfig(data=..., out=...)) -> summary``.

The run folder is self-describing and resumable:

    RUN/config.json            the model config (image_size, channels, fit, widths, latent, ...) + training options
    RUN/checkpoints/           weights, optimizer state, step and sampling RNG; the last ``keep`` of them
    RUN/logs/{train,validation}  TensorBoard: losses, learning rate, images/s, montages
    RUN/montages/              recon-STEP.png (a fixed validation batch: originals over reconstructions),
                               latent-STEP.png (decodings of a fixed sample of z), reconstructions.gif
    RUN/export/model.keras     the trained VAE (Keras 3 format: what Beam's RunInference handler loads)
    RUN/export/saved_model/    a TensorFlow SavedModel with encode / decode / reconstruct signatures
    RUN/summary.json           step, epochs, train and validation losses, validation PSNR, images/s, wall time
    RUN/report.html            the same figures as a page with plots and the latest montages (pipelines.report),
                               rewritten at every validation; RUN/report/ holds its plots and history.jsonl

Calling ``train`` again with the same folder resumes from the latest checkpoint ("resumed from step N");
``max_steps`` is the global target, so a resumed run ends where an uninterrupted one would. SIGINT/SIGTERM
save a checkpoint before leaving (KeyboardInterrupt); a ``kill -9`` loses at most the steps since the last.

GPU: ``precision="mixed_bfloat16"|"mixed_float16"`` (float16 with dynamic loss scaling), ``jit`` (XLA), and
every visible GPU through ``tf.distribute.MirroredStrategy`` (``batch_size`` is the global batch). Several
machines: set ``TF_CONFIG`` on each worker, give every worker the same config with ``strategy="multiworker"``,
a shared ``data`` (e.g. gs://) and ``out``; worker 0 (the chief) writes RUN, the others a scratch folder in their
temp dir (removed at the end) and resume from the chief's checkpoints.
"""
import dataclasses
import json
import logging
import os
from typing import Optional

from pipelines import owned
from pipelines.errors import CadlError
from pipelines.lock import LOCK_NAME, folder_lock

log = logging.getLogger("cadl.train")

PRESETS = ("default", "tiny", "course", "sharp")
LR_SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Model fields left None take the preset's value (models.vae.DEFAULTS for
    "default"); a resumed run keeps the model it was built with."""
    data: str                               # dataset folder (manifest.json + shards); local or gs://...
    out: str                                # run folder: created, or resumed when it holds checkpoints
    # when to stop: the first reached; none given: 10 epochs
    max_steps: Optional[int] = None         # global step target (a resumed run stops at the same step)
    max_seconds: Optional[float] = None     # wall-clock budget of this call, seconds
    epochs: Optional[float] = None          # passes over the training split (global, like max_steps)
    # the model (stored in RUN/config.json)
    preset: str = "default"                 # PRESETS: default (ours), tiny (tests), course (the lesson's),
                                            # sharp (the VAE + a PatchGAN discriminator: models/vaegan.py)
    arch: Optional[str] = None              # "resnet" | "course"
    widths: Optional[tuple] = None          # channels per level; depth = their count
    blocks: Optional[int] = None            # residual blocks per level
    latent: Optional[int] = None            # size of z as a dense code (given alone: latent_channels 0)
    latent_channels: Optional[int] = None   # > 0: a spatial code of N numbers per cell; 0: dense
    hidden: Optional[int] = None            # dense units between conv features and z (0: none)
    norm: Optional[str] = None              # "group" | "batch" | "none"
    activation: Optional[str] = None        # "silu" | "relu" | "sigmoid" | "elu"
    dropout: Optional[float] = None         # dropout rate after convolutions (0: none)
    loss: Optional[str] = None              # "sse" | "l1" | "mix": reconstruction loss summed over pixels
    beta: Optional[float] = None            # KL weight
    beta_warmup: Optional[int] = None       # steps over which beta ramps up from 0
    seed: int = 0                           # weights, sampling noise and data order
    init_from: Optional[str] = None         # warm start: weights (and network) of this model
    # the sharp preset's discriminator and losses (None: models.vaegan.GAN_DEFAULTS; ignored by other presets)
    disc_widths: Optional[tuple] = None     # channels of D's 4x4 stride-2 spectral-norm convs
    feature_weight: Optional[float] = None  # weight of feature matching on D's layers (learned similarity)
    adv_weight: Optional[float] = None      # factor on the adaptive (VQGAN) weight of the hinge term
    gan_start: Optional[int] = None         # steps of pixel-only training before features + adversarial
    d_floor: Optional[float] = None         # balance: D waits while its hinge loss is below this
    ms_ssim_weight: Optional[float] = None  # > 0: pixel loss += weight x (1 - MS-SSIM) per pixel
    spectral_weight: Optional[float] = None # > 0: pixel loss += weight x squared error of tiles' amplitude spectra
    spectral_tile: Optional[int] = None     # side of those tiles in pixels
    d_lr: float = 5e-4                      # the discriminator's Adam learning rate (sharp)
    # optimisation
    batch_size: int = 32                    # images per step (global, over all replicas)
    lr: float = 1e-3                        # Adam learning rate
    lr_schedule: str = "constant"           # LR_SCHEDULES: constant, or decay to 0 over the budget
    clip_norm: Optional[float] = None       # clip each step's gradients to this global norm (None: no clip)
    # input pipeline
    augment: bool = False                   # random horizontal flips
    cache: str = "auto"                     # "auto" (when <= 1 GiB) | "yes" | "no": decoded images in memory
    shuffle_buffer: int = 0                 # images in the shuffle buffer (0: ~256 MiB)
    deterministic: bool = False             # reproducible input order (slower)
    exact_resume: str = "auto"              # "auto" | "yes" | "no": the data position in checkpoints
    skip_corrupt: bool = False              # skip (and count) unreadable shards instead of stopping
    validation_batches: int = 50            # at most this many batches per validation
    # outputs
    checkpoint_every: int = 500             # steps between checkpoints
    checkpoint_seconds: float = 120.0       # also checkpoint after this many seconds
    keep: int = 3                           # checkpoints kept
    montage_every: int = 50                 # steps between montages (0: only at the start and the end)
    validate_every: int = 250               # steps between validation passes (0: only at the end)
    log_every: int = 10                     # steps between TensorBoard scalars
    progress: bool = True                   # a progress bar on a terminal (else a log line per validation)
    # accelerators
    precision: str = "float32"              # "float32" | "mixed_bfloat16" | "mixed_float16"
    jit: bool = False                       # compile the training step with XLA
    strategy: str = "auto"                  # "auto" | "default" | "mirrored" | "multiworker"
    steps_per_execution: int = 1            # training steps per tf.function call
    # the record of how the run was asked for (RUN/config.json, summary.json, report.html)
    settings: Optional[dict] = dataclasses.field(default=None, compare=False)  # {"job", "argv", "config_file",
    # "flags"} from jobs.config_file: how the run was asked for, so that it can be repeated exactly

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "keep", "log_every", "checkpoint_every", "steps_per_execution",
                     "validation_batches"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "max_steps" else 1):
                raise CadlError(f"--{name.replace('_', '-')} must be positive, not {value}")
        for name, choices in (("preset", PRESETS), ("lr_schedule", LR_SCHEDULES),
                              ("cache", ("auto", "yes", "no")), ("exact_resume", ("auto", "yes", "no")),
                              ("precision", ("float32", "mixed_bfloat16", "mixed_float16")),
                              ("strategy", ("auto", "default", "mirrored", "multiworker"))):
            if getattr(self, name) not in choices:
                raise CadlError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")

    BUDGET = ("max_steps", "max_seconds", "epochs")  # what may change when a run is resumed, with the cadence:
    CADENCE = ("checkpoint_every", "checkpoint_seconds", "keep", "montage_every", "log_every", "progress",
               "validation_batches", "skip_corrupt")

    def recipe(self):
        """What decides the model a run trains: every field but the folders, the budget and the cadence."""
        skip = ("data", "out", "settings") + self.BUDGET + self.CADENCE
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def train(config):
    """Train (or resume) the run in ``config.out``; returns the summary also written to RUN/summary.json."""
    out = os.path.abspath(config.out)
    if config.max_steps == 0 and not config.init_from and not os.path.isdir(os.path.join(out, "checkpoints")):
        raise CadlError(f"--max-steps 0 on a new run would export an untrained model ({out}); give a step "
                        "target, or --init-from MODEL to copy a model into a new run")
    owned.make_folder(out, "run folder")
    import keras

    # One writer per run folder (per worker with strategy multiworker, which share it): a second train
    # into it exits 75 before touching anything.
    with folder_lock(out, "train of this run folder", name=_lock_name(config.strategy)):
        owned.mark(out, "run")
        from pipelines.trainer import Trainer  # TensorFlow loads here, after the cheap checks

        try:
            summary = Trainer(config).fit()
        finally:
            keras.mixed_precision.set_global_policy("float32")  # a process-wide setting: leave it as found
    val = summary["validation"]
    log.info("step %d (%.2f epochs): train loss %.2f, validation loss %.2f, validation PSNR %.2f dB, "
             "Laplacian ratio %.2f, %.0f images/s; run folder %s", summary["step"], summary["epochs"],
             summary["train"].get("loss", float("nan")), val.get("loss", float("nan")),
             val.get("psnr", float("nan")), val.get("laplacian_ratio", float("nan")),
             summary["images_per_s"] or 0.0, config.out)
    return summary


def evaluate(model_path, data_dir, split="validation", batch_size=64, skip_corrupt=False, max_batches=None):
    """Loss terms and PSNR of the model at ``model_path`` on ``data_dir``'s ``split`` (deterministic: z = mean).

    Returns {"loss", "reconstruction", "kl", "psnr", "count"}; per-image means.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from pipelines import export, tfdata
    from pipelines.trainer import check_compatible

    manifest = tfdata.load_manifest(data_dir)
    model = export.load_model(model_path)
    check_compatible(model.config, manifest, model_path, data_dir)
    files = tfdata.split_files(data_dir, manifest, split)
    model.compile(optimizer=keras.optimizers.Adam())
    test_step = tf.function(model.test_step, reduce_retracing=True)
    skipped = []
    while True:
        model.reset_metrics()
        ds = tfdata.make_dataset(data_dir, split, batch_size, manifest=manifest, training=False,
                                  files=[f for f in files if f not in skipped])
        if max_batches:
            ds = ds.take(max_batches)
        count = 0
        try:
            for batch in ds:
                test_step(batch)
                count += int(batch.shape[0])
            break
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            bad = tfdata.find_corrupt([f for f in files if f not in skipped], manifest)
            if not bad:
                raise
            if not skip_corrupt:
                raise CadlError(f"{bad[0][0]}: corrupt shard ({bad[0][1]}); use skip_corrupt to skip it") from None
            skipped += [p for p, _ in bad]
    results = {m.name: float(np.asarray(m.result())) for m in model.metrics}
    return {"loss": results["loss"], "reconstruction": results["reconstruction"], "kl": results["kl"],
            "psnr": results["psnr"], "count": count}


def _lock_name(strategy):
    """``.cadl-lock``; with --strategy multiworker one per worker (``.cadl-lock-worker-1``), from TF_CONFIG."""
    if strategy != "multiworker":
        return LOCK_NAME
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    except ValueError:
        task = {}
    return f"{LOCK_NAME}-{task.get('type', 'worker')}-{task.get('index', 0)}"
