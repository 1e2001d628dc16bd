"""Make the README's "Exploring the latent space" pictures: docs/explore-{interpolate,walk,neighbours,attribute,
map}.png, one per ``cadl explore`` subcommand, from a tiny VAE trained here on generated CelebA-layout faces
(``Smiling`` is a warm disc, its absence a cool one; see tests/explore_data.py). A few minutes on a laptop CPU.

    python docs/make_explore_pictures.py [WORK_FOLDER] [OUT_FOLDER]

WORK_FOLDER (default: a temporary folder) keeps the faces, the dataset, the run and the full outputs.
"""
import os
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import explore_data  # noqa: E402
from pipelines import explore, media, visual  # noqa: E402
from pipelines import manifest as mf  # noqa: E402
from pipelines.synthetic import make_film  # noqa: E402

SIZE = "32x32"
STEPS = 800


def strip(film, count, zoom=2):
    """``count`` evenly spaced frames of ``film`` side by side, enlarged ``zoom`` times."""
    frames = [f for _, _, f in media.read_frames(film)]
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    tiles = np.stack([np.repeat(np.repeat(frames[i], zoom, 0), zoom, 1) for i in picks])
    return visual.montage(tiles, cols=count)


def save(image, path):
    """A palette PNG (256 colours): a few tens of kilobytes in the repository."""
    Image.fromarray(np.asarray(image)).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {Image.open(path).size[0]}x{Image.open(path).size[1]}, {os.path.getsize(path)} bytes")


def main(work, out):
    from jobs import extract
    from pipelines.training import TrainConfig, train

    data, run = os.path.join(work, "data"), os.path.join(work, "run")
    if not os.path.isdir(data):
        explore_data.write_celeba(os.path.join(work, "celeba"), n=400)
        extract.run(["--input", os.path.join(work, "celeba"), "--output", data, "--size", SIZE])
    train(TrainConfig(data=data, out=run, preset="tiny", max_steps=STEPS, lr=3e-3, progress=False,
                      montage_every=0, validate_every=0))

    # Two validation faces, one without the attribute and one with it, as image files.
    names = mf.read(data)["attribute_names"]
    records = mf.read_records(data, "validation")
    smiling = [r["attributes"][names.index("Smiling")] > 0 for r in records]
    ends = []
    for want in (False, True):
        record = records[smiling.index(want)]
        ends.append(os.path.join(work, f"face-{'smiling' if want else 'not'}.png"))
        with open(ends[-1], "wb") as f:
            f.write(record["image"])

    films = os.path.join(work, "out")
    explore.interpolate(explore.InterpolateConfig(model=run, start=ends[0], end=ends[1], frames=10,
                                                  output=os.path.join(films, "interpolate.mkv"), codec="ffv1",
                                                  size=None))
    save(strip(os.path.join(films, "interpolate.mkv"), 10), os.path.join(out, "explore-interpolate.png"))

    explore.walk(explore.WalkConfig(model=run, data=data, output=os.path.join(films, "walk.mkv"), seconds=4,
                                    fps="25", smoothness=0.8, codec="ffv1"))
    save(strip(os.path.join(films, "walk.mkv"), 10), os.path.join(out, "explore-walk.png"))

    film = make_film(os.path.join(work, "mandelbrot.mp4"), "mandelbrot", seconds=4, size=(64, 64), rate="25",
                     audio=False)
    explore.neighbours(explore.NeighboursConfig(model=run, data=data, input=film, k=5, samples=4, zoom=2,
                                                output=os.path.join(films, "neighbours.png")))
    explore.attribute(explore.AttributeConfig(model=run, data=data, attribute="Smiling", faces=4, steps=5,
                                              zoom=2, output=os.path.join(films, "attribute.png")))
    explore.map_dataset(explore.MapConfig(model=run, data=data, samples=100,
                                          output=os.path.join(films, "map.png")))
    for name in ("neighbours", "attribute", "map"):
        save(np.asarray(Image.open(os.path.join(films, f"{name}.png"))), os.path.join(out, f"explore-{name}.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="cadl-explore-"),
         sys.argv[2] if len(sys.argv) > 2 else HERE)
