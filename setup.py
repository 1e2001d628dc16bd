"""cadl: films, CelebA and image folders -> TFRecords (Beam) -> a convolutional VAE (TensorFlow) -> films.

The same file ships the code to Beam workers: ``cadl extract ... --setup_file ./setup.py``.
"""
from setuptools import find_packages, setup

DASK = ["apache-beam[dask]>=2.77,<2.78", "dask[bag]>=2024.1", "distributed>=2024.1"]

setup(
    name="cadl",
    version="0.1.0",
    description="Batch pipeline: films and image datasets to TFRecords, a convolutional VAE, re-rendered films",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines", "pipelines.*", "models", "models.*", "jobs", "jobs.*"]),
    install_requires=[
        "tensorflow>=2.16",            # Keras 3 is the Keras of TF >= 2.16
        "apache-beam>=2.60",
        "google-crc32c",               # TFRecord checksums in C; without it Beam falls back to pure Python
        "numpy",
        "pillow",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",          # ships an ffmpeg binary: no system ffmpeg needed
        "opencv-python-headless",       # cv2 without GUI libraries: imports on servers and Beam workers
        "tqdm",
        "tensorboard>=2.16",           # the viewer of RUN/logs: TensorFlow 2.21 no longer installs it
        "matplotlib>=3.7",             # RUN/report.html's plots (Agg backend: no display needed)
    ],
    extras_require={
        # A Dask cluster through Beam (pipelines/dask_runner.py): pinned to the Beam it is tested with.
        "dask": DASK,
        "test": ["pytest>=7"] + DASK,
    },
    entry_points={"console_scripts": ["cadl=jobs.cli:console"]},
)
