"""Every stage as a library function with a frozen config (extract, train, render, retrain), and what they
share: media in and out, the record format, the manifest, tf.data, the training loop, exports. Imports
``models``; never ``jobs``. The map: docs/architecture.md."""
