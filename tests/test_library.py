"""The stages as a Python user calls them, and the direction of imports that keeps them a library.

    jobs/ -> pipelines/ -> models/      (never back up: a Beam worker or a notebook imports no command)
"""
import ast
import dataclasses
import os

import pytest

from pipelines import media
from pipelines.synthetic import make_film

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
LAYERS = {"models": 0, "pipelines": 1, "jobs": 2}


def _imports(path):
    """Top-level packages of this project that the module at ``path`` imports, anywhere in it."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def test_imports_only_point_down():
    wrong = []
    for package, level in LAYERS.items():
        folder = os.path.join(ROOT, package)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                for target in _imports(os.path.join(folder, name)):
                    if LAYERS[target] > level:
                        wrong.append(f"{package}/{name} imports {target}")
    assert wrong == []


def test_job_modules_are_thin():
    sizes = {name: sum(1 for _ in open(os.path.join(ROOT, "jobs", name)))
             for name in os.listdir(os.path.join(ROOT, "jobs")) if name.endswith(".py")}
    assert {name: n for name, n in sizes.items() if n > 300} == {}


def test_the_readme_configs_name_real_fields():
    from pipelines.extract import ExtractConfig
    from pipelines.render import RenderConfig
    from pipelines.training import TrainConfig

    classes = {c.__name__: c for c in (ExtractConfig, TrainConfig, RenderConfig)}
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    calls = [node for node in ast.walk(ast.parse(block))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) in classes]
    assert sorted(node.func.id for node in calls) == sorted(classes)
    for node in calls:
        cls = classes[node.func.id]
        config = cls(**{k.arg: ast.literal_eval(k.value) for k in node.keywords})
        assert dataclasses.is_dataclass(config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, dataclasses.fields(cls)[0].name, None)


@pytest.mark.slow
def test_extract_train_render_from_python_without_a_command_line(tmp_path):
    from pipelines.extract import ExtractConfig, extract
    from pipelines.render import RenderConfig, render
    from pipelines.training import TrainConfig, train

    film = make_film(str(tmp_path / "film.mp4"), seconds=6.0, size=(64, 48), rate="10")
    frames = media.probe(film).num_frames
    data = str(tmp_path / "data")
    extracted = extract(ExtractConfig(inputs=(film,), output=data, size=(16, 16), validation_block=3.0))
    assert extracted["records_total"] == frames and extracted["inputs_extracted"] == 1
    assert extracted["splits"]["train"] > 0 and extracted["splits"]["validation"] > 0

    run = str(tmp_path / "run")
    trained = train(TrainConfig(data=data, out=run, preset="tiny", max_steps=4, batch_size=8, progress=False,
                                montage_every=0))
    assert trained["step"] == 4 and os.path.isfile(os.path.join(run, "export", "model.keras"))

    out = str(tmp_path / "out.mp4")
    rendered = render(RenderConfig(model=run, input=film, output=out))
    assert rendered["frames"] == frames == media.probe(out).num_frames
    assert os.path.isfile(out + ".summary.json")
