"""Make docs/demo.png from a finished ``cadl demo`` folder: frame 240 of the training film, of the second film
and of its re-rendering, over the last training montage.

    python docs/make_demo_picture.py cadl-demo [docs/demo.png]
"""
import glob
import os
import sys

from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipelines import media  # noqa: E402

GAP = 2


def frame(path, index=240):
    for _, _, image in media.read_frames(path, start=index, stop=index + 1):
        return Image.fromarray(image)
    raise SystemExit(f"{path}: no frame {index}")


def main(demo, out):
    panels = [(frame(os.path.join(demo, "films", "source.mp4")), "training film (testsrc2)"),
              (frame(os.path.join(demo, "films", "target.mp4")), "second film (mandelbrot)"),
              (frame(os.path.join(demo, "target-autoencoded.mp4")), "re-rendered through the VAE")]
    w, h = panels[0][0].size
    width = len(panels) * w + (len(panels) - 1) * GAP
    top = Image.new("RGB", (width, h), "white")
    for k, (image, label) in enumerate(panels):
        draw = ImageDraw.Draw(image)
        draw.text((5, 3), label, fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255))
        top.paste(image, (k * (w + GAP), 0))
    montage = Image.open(sorted(glob.glob(os.path.join(demo, "run", "montages", "recon-*.png")))[-1]).convert("RGB")
    montage = montage.resize((width, round(montage.height * width / montage.width)), Image.LANCZOS)
    picture = Image.new("RGB", (width, h + 2 * GAP + montage.height), "white")
    picture.paste(top, (0, 0))
    picture.paste(montage, (0, h + 2 * GAP))
    picture.save(out, optimize=True)
    print(f"{out}: {picture.size[0]}x{picture.size[1]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "demo.png"))
