"""Every ``cadl`` command line in README.md parses with that job's own parser, exactly as written."""
import importlib
import os
import re
import shlex

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def readme_blocks():
    """(language, text) of every fenced block."""
    blocks, language, lines = [], None, []
    for line in open(README).read().splitlines():
        if line.strip().startswith("```"):
            if language is None:
                language, lines = line.strip()[3:].strip() or "text", []
            else:
                blocks.append((language, "\n".join(lines)))
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def readme_commands():
    """Every ``cadl <job> ...`` in shell, cron, systemd and Airflow snippets, as argv words from the job name on."""
    commands = []
    for language, text in readme_blocks():
        if language == "python":  # the Airflow task's shell command
            text = "\n".join(re.findall(r'bash_command="([^"]+)"', text))
        elif language not in ("bash", "sh", "cron", "ini"):
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).removeprefix("ExecStart=")  # comments out
            for part in re.split(r"&&|;|\||>>", line):
                words = shlex.split(part) if part.strip() else []
                at = [i for i, w in enumerate(words) if w == "cadl" or w.endswith("/cadl")]
                if at and len(words) > at[0] + 1 and not words[at[0] + 1].startswith("-"):
                    commands.append(words[at[0]:])
    return commands


def test_the_readme_opens_with_the_two_commands():
    text = open(README).read()
    assert "pip install . && cadl demo" in text
    assert "pip install '.[test]' && pytest" in text


def test_the_readme_shows_every_job():
    jobs_seen = {words[1] for words in readme_commands()}
    assert {"extract", "train", "render", "retrain", "autoencoder", "classifier", "demo"} <= jobs_seen


@pytest.mark.parametrize("words", readme_commands(), ids=lambda w: " ".join(w)[:80])
def test_readme_command_parses(words):
    module = importlib.import_module(f"jobs.{words[1]}")
    parser = module.build_parser()
    if words[1] in ("extract", "render"):  # Beam pipeline options pass through to Beam
        _, rest = parser.parse_known_args(words[2:])
        from apache_beam.options.pipeline_options import PipelineOptions
        PipelineOptions(rest).get_all_options(retain_unknown_options=False)
    else:
        parser.parse_args(words[2:])
