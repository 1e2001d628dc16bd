"""The course's classifiers (session 3): softmax regression and a small convolutional network, on one-hot
labels with cross-entropy, as functional Keras models (they save and load as ``.keras`` with no custom code).

``linear_classifier``: flatten -> ``Dense(n_classes, softmax)``; the lesson's ``Y_pred = softmax(XW + b)``
with ``cross_entropy = -sum(Y * log(Y_pred))``, Adam 0.001, batches of 50.

``conv_classifier``: two 5x5 stride-2 convolutions of 32 and 64 filters (ReLU), a 128-unit ReLU layer and a
softmax, as in the lesson. Improvements are options, each off by default so the lesson's network stays what
you get unless you ask:

    init="he_normal"      He initialisation for the ReLU layers (the lesson's is Glorot/Xavier)
    batch_norm=True       batch normalisation after each convolution and the hidden layer
    dropout=0.3           dropout before the softmax layer
    augment=0.1           random translations by up to that fraction of the image while training

``improved=True`` in ``build`` (``cadl classifier --improved``) turns on what measurably helped on digits:
dropout 0.3 and shifts of up to 10% (``benchmarks/course_classifiers.py``; the figures are in the README,
"Benchmarks"); on centred garments (Fashion-MNIST) none of it helped, so the lesson's network stays the default.
"""
import keras

MODELS = ("linear", "conv")
IMPROVED = {"dropout": 0.3, "augment": 0.1}  # what the benchmark showed to help (see the module docstring)


def _inputs(image_shape):
    return keras.Input(shape=tuple(int(s) for s in image_shape), name="images")  # floats in [0, 1]


def linear_classifier(image_shape=(28, 28, 1), n_classes=10, name="linear"):
    """Softmax regression: (batch, H, W, C) -> (batch, n_classes) probabilities."""
    inputs = _inputs(image_shape)
    x = keras.layers.Flatten(name="flatten")(inputs)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def conv_classifier(image_shape=(28, 28, 1), n_classes=10, filters=(32, 64), kernel_size=5, strides=2,
                    hidden=128, init="glorot_uniform", batch_norm=False, dropout=0.0, augment=0.0, seed=None,
                    name="conv"):
    """The lesson's convolutional classifier; see the module docstring for the options.

    MNIST: (28, 28, 1) -> (14, 14, 32) -> (7, 7, 64) -> 3136 -> 128 -> 10.
    """
    inputs = _inputs(image_shape)
    x = inputs
    if augment:
        x = keras.layers.RandomTranslation(augment, augment, fill_mode="constant", seed=seed, name="augment")(x)
    for i, f in enumerate(filters):
        x = keras.layers.Conv2D(f, kernel_size, strides=strides, padding="same", kernel_initializer=init,
                                use_bias=not batch_norm, name=f"conv{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"conv{i + 1}_bn")(x)
        x = keras.layers.Activation("relu", name=f"conv{i + 1}_relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hidden, kernel_initializer=init, use_bias=not batch_norm, name="hidden")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="hidden_bn")(x)
    x = keras.layers.Activation("relu", name="hidden_relu")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def build(kind, image_shape, n_classes, improved=False, seed=None, **options):
    """The job's ``--model`` -> a model; ``options`` (init, batch_norm, dropout, augment) refine ``conv``."""
    if kind == "linear":
        if options and any(options.values()):
            raise ValueError(f"the linear classifier takes no options, got {sorted(options)}")
        return linear_classifier(image_shape, n_classes)
    if kind == "conv":
        settings = dict(IMPROVED) if improved else {}
        settings.update({k: v for k, v in options.items() if v is not None})
        return conv_classifier(image_shape, n_classes, seed=seed, **settings)
    raise ValueError(f"model must be one of {MODELS}, not {kind!r}")


def compile_classifier(model, learning_rate=1e-3):
    """Adam and categorical cross-entropy on one-hot labels, with accuracy, as in the lesson."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(), metrics=[keras.metrics.CategoricalAccuracy(
                      name="accuracy")])
    return model


def conv_kernels(model):
    """[(name, (kh, kw, in, out) kernel)] of the model's convolution layers, first to last."""
    return [(layer.name, keras.ops.convert_to_numpy(layer.kernel)) for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)]


def linear_weights(model, image_shape):
    """The softmax layer's weights of a linear classifier as (n_classes, H, W, C) images."""
    layer = model.get_layer("softmax")
    w = keras.ops.convert_to_numpy(layer.kernel)  # (H*W*C, n_classes)
    return w.T.reshape((w.shape[1],) + tuple(image_shape))
