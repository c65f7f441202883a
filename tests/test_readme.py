"""The README is what a newcomer follows from a fresh clone, so every command in it runs here and every
link in it resolves.

* The walk-through's commands run as written, in a scratch folder holding links to the repository's
  scripts, with one substitution: ``openai/whisper-tiny.en`` becomes the tiny random English-only
  Whisper (the tests never reach the Hub). Every other command of the README (one per task section)
  continues on the walk-through's folders, as the README says, in the slow tier.
* The set-up commands (install, test) are the ones ``.ci/run`` runs.
* Relative links and ``#anchors`` resolve (anchors as GitHub makes them, which ``mkdocs.yml`` makes the
  site's too); the site's front page repeats the walk-through word for word; no flag table is left in
  the README (they are on the reference pages, generated from the option dataclasses by
  ``docs/flag_tables.py``).
"""
import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
SETUP = "Set-up"
WALKTHROUGH = "The whole job on `sample_data/`"
HUB_MODEL = "openai/whisper-tiny.en"
# Outputs a user may have left in the repository root: never linked into the scratch folder.
OUTPUTS = re.compile(r"^(data|site|docs|tests|op_dir.*|predictions.*|jax_predictions.*|embeddings.*|exports|temp|"
                     r"report\.html|.*\.srt)$")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def command_blocks(text):
    """``[(heading, [command, ...]), ...]`` for every fenced ``bash`` block, continuation lines joined and
    comments left out; ``heading`` is the nearest heading above the block."""
    blocks, heading, block = [], None, None
    for line in text.splitlines():
        if block is not None:
            if line.startswith("```"):
                joined = "\n".join(block).replace("\\\n", " ")
                blocks.append((heading, [c.strip() for c in joined.splitlines()
                                         if c.strip() and not c.strip().startswith("#")]))
                block = None
            else:
                block.append(line)
        elif line.startswith("```bash"):
            block = []
        elif re.match(r"^#{1,6} ", line):
            heading = line.lstrip("#").strip()
    return blocks


def readme_commands(which):
    return [c for heading, commands in command_blocks(read(README)) if which(heading) for c in commands]


def test_readme_is_short_and_has_no_flag_tables():
    text = read(README)
    assert len(text.splitlines()) <= 400
    assert not re.search(r"^\| `--", text, flags=re.M), "flag tables belong on docs/reference/ pages"
    assert len(readme_commands(lambda h: h == WALKTHROUGH)) == 4


def test_setup_commands_are_the_ones_ci_runs():
    ci_lines = [shlex.split(line) for line in read(os.path.join(REPO_ROOT, ".ci", "run")).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def in_order(needle, hay):
        it = iter(hay)
        return all(token in it for token in needle)

    setup = [part.strip() for c in readme_commands(lambda h: h == SETUP) for part in c.split("&&")]
    assert any(c.startswith("pip install") for c in setup) and any("pytest" in c for c in setup)
    for command in setup:
        assert any(in_order(shlex.split(command), line) for line in ci_lines), f".ci/run does not run: {command}"


def test_site_front_page_repeats_the_walkthrough():
    page = [c for heading, commands in command_blocks(read(os.path.join(REPO_ROOT, "docs", "index.md")))
            if heading == WALKTHROUGH for c in commands]
    assert page == readme_commands(lambda h: h == WALKTHROUGH)


def github_slugs(text):
    """The anchors GitHub gives a Markdown file's headings (``pymdownx.slugs.slugify(case="lower")``, the
    site's, makes the same): lower case, characters other than letters, digits, ``_``, ``-`` and spaces
    dropped, each space a ``-``; a repeated heading gets ``-1``, ``-2``..."""
    slugs, seen, fence = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"^#{1,6} (.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def markdown_links(text):
    """Link targets outside code: ``[text](target)`` and images."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_links_and_anchors_resolve():
    text = read(README)
    links = markdown_links(text)
    assert len(links) > 20
    for target in links:
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(REPO_ROOT, path)) if path else README
        assert os.path.exists(file), f"README links to a missing file: {target}"
        if anchor:
            assert file.endswith(".md"), target
            assert anchor in github_slugs(read(file)), f"README links to a missing anchor: {target}"


def test_every_flag_table_is_on_a_page_and_every_marker_has_a_table():
    spec = importlib.util.spec_from_file_location("flag_tables", os.path.join(REPO_ROOT, "docs", "flag_tables.py"))
    flag_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flag_tables)
    used = set()
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "docs")):
        for name in files:
            if name.endswith(".md"):
                used |= set(re.findall(r"^<!-- flags: (\w+)", read(os.path.join(folder, name)), flags=re.M))
    assert used == set(flag_tables.TABLES)
    filled = flag_tables.fill("# Fine-tuning scripts\n\n<!-- flags: train -->\n")
    assert "<!-- flags:" not in filled and "| `--resume_from_ckpt` | `None` |" in filled
    with pytest.raises(ValueError, match="unknown flag table 'nope'"):
        flag_tables.fill("<!-- flags: nope -->\n", "x.md")


def scratch_folder(root):
    """A folder in which the README's relative paths work as in the repository root: links to the scripts,
    the library and sample_data, none of the outputs."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(REPO_ROOT):
        if not name.startswith(".") and not OUTPUTS.match(name):
            os.symlink(os.path.join(REPO_ROOT, name), os.path.join(root, name))
    return root


def argv(command, model):
    words = shlex.split(command)
    launcher = {"python3": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[words[0]]
    return launcher + [model if word == HUB_MODEL else word for word in words[1:]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_serving(args, cwd, timeout=300):
    """Start a command that serves a page (demo.py), wait until the page answers, stop it."""
    port = free_port()
    server = subprocess.Popen(args + ["--server_port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        server.kill()
        pytest.fail(f"{' '.join(args)} served nothing:\n{server.communicate()[0][-3000:]}")
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=60)


def run_commands(commands, cwd, model):
    for command in commands:
        args = argv(command, model)
        if os.path.basename(args[1]) == "demo.py":
            run_serving(args, cwd)
            continue
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.mark.slow  # minutes: the second tier
def test_walkthrough_then_every_task_command_runs_as_written(tiny_en_model_dir, tmp_path):
    # One test, as the README reads: the task commands go on in the walk-through's folders, so a second
    # test would run the walk-through again.
    walked_through = scratch_folder(str(tmp_path / "clone"))
    run_commands(readme_commands(lambda h: h == WALKTHROUGH), walked_through, tiny_en_model_dir)
    assert os.path.exists(os.path.join(walked_through, "op_dir_sample", "model.safetensors"))
    results = os.listdir(os.path.join(walked_through, "predictions_dir"))
    assert any(name.endswith(".json") for name in results) and "report.html" in results

    tasks = readme_commands(lambda h: h not in (SETUP, WALKTHROUGH))
    scripts = {shlex.split(c)[1] if shlex.split(c)[0] == "python3" else shlex.split(c)[3] for c in tasks}
    assert {"custom_data/data_prep.py", "train/fine-tune_on_custom_dataset.py", "export_model.py", "demo.py",
            "evaluate/jax_evaluate_on_custom_dataset.py", "extract_embeddings.py", "evaluate/report.py"} <= scripts
    run_commands(tasks, walked_through, tiny_en_model_dir)
    for written in ("op_dir_lora/adapter", "op_dir_held/model.safetensors", "sample_0000.srt", "report.html",
                    "exports/op_dir_sample/export_report.json", "embeddings/sample/manifest.json",
                    "op_dir_2proc/model.safetensors"):
        assert os.path.exists(os.path.join(walked_through, written)), written
