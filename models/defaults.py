"""The models' default knobs, without Keras or TensorFlow: a job's ``--help`` lists them and starts at once.
``models.vae`` and ``models.vaegan`` build from them (and re-export them)."""

# Every knob, with its units and valid choices. Run folders store the full dict, so changing a default here
# never changes a trained model.
DEFAULTS = {
    "image_size": [64, 64],     # [H, W] pixels; both must divide by 2**len(widths)
    "channels": 3,              # 3 (RGB) or 1 (grey)
    "fit": "crop",              # how frames of another aspect were fitted (crop|pad|stretch), for render
    "arch": "resnet",           # "resnet" (ours) | "course" (the lesson's network, the baseline)
    "widths": [16, 64, 128],    # channels per resolution level; depth = len(widths) stride-2 steps (a thin
                                # first level: full-resolution convs dominate CPU time)
    "blocks": 1,                # residual blocks per level (resnet)
    "latent": 128,              # size of z with a dense code; with latent_channels derived: cells x channels
    "latent_channels": 4,       # N: z is a spatial code, N numbers per cell of the lowest resolution (1x1
                                # convs, flattened: 8x8 cells x 4 = 256 at 64x64); 0: z from a dense layer
                                # over all features (the grid trains better: README, "Benchmarks")
    "hidden": 0,                # dense units between conv features and z (0: none; the course uses 250)
    "norm": "none",             # "group" | "batch" | "none" (none: best on CPU budgets in
                                # benchmarks/quality_bench.py; "group" for long GPU runs if training wobbles)
    "activation": "silu",       # "silu" | "relu" | "sigmoid" | "elu"
    "dropout": 0.0,             # drop rate after each conv (the course's keep_prob 0.8 is 0.2)
    "loss": "sse",              # reconstruction: "sse" summed squared error | "l1" summed absolute error
                                # | "mix" (sse + l1 / 10)
    "beta": 0.01,               # KL weight: loss = reconstruction + beta * KL (per image); larger betas
                                # spend the loss on KL and cost held-out PSNR (README, "Benchmarks")
    "beta_warmup": 500,         # steps over which beta ramps linearly from 0 (0: none)
    "seed": 0,                  # sampling noise seed
}


# The sharp preset's knobs (the trainer's TrainConfig fields of the same names override them).
GAN_DEFAULTS = {
    "disc_widths": [32, 64, 128],  # channels of D's 4x4 stride-2 convs; the patch each logit sees grows with them
    "feature_weight": 0.05,        # weight of the feature-matching (learned similarity) term
    "adv_weight": 0.2,             # factor on the adaptive weight of the hinge adversarial term (0: off)
    "gan_start": 150,              # optimizer steps of pixel-only training before features + adversarial
    "d_floor": 0.3,                # balance: D is not updated while its hinge loss is below this (0: always)
    "ms_ssim_weight": 0.0,         # > 0: pixel loss += weight * P * (1 - MS-SSIM) at the scales that fit
    "spectral_weight": 0.0,        # > 0: pixel loss += weight * the squared error of the tiles' amplitude spectra
    "spectral_tile": 16,           # side of those tiles (pixels; must divide the image's sides)
}
