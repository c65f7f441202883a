"""Shared fixtures: a tiny random Whisper built offline, synthetic corpora, real models from env vars.

Real-model tests read these variables (``.ci/run`` sets them from ``../shared``) and skip cleanly
when they are unset:

* ``WHISPER_FT_TEST_MODEL``: English-only model folder (``whisper-tiny.en``)
* ``WHISPER_FT_TEST_MULTILINGUAL_MODEL``: multilingual model folder (``whisper-base``)
* ``WHISPER_FT_TEST_DATA``: the shared speech sets (``../shared/data``)
"""
import os
import subprocess
import sys

# pytest-xdist's N test processes would each start a thread per core (torch, OpenBLAS, the scripts they
# launch): N x cores threads spinning on cores cores. Each process gets its share instead; set before
# numpy and torch are imported, as both read it once.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

# Tests never reach the Hugging Face Hub; set before transformers/datasets are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "birds sing in the morning",
             "we walked to the river", "she reads a long book", "rain fell all night",
             "the sun is warm today", "he plays the old guitar"]


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test leaves ``os.environ`` as it found it, so a variable a library sets in-process (e.g.
    ``TrainingArguments(bf16=True)`` sets ``ACCELERATE_MIXED_PRECISION``) never reaches a later test's
    child processes: that one made a later fp32 training run train under bf16, ten times slower."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_script(script, *args, timeout=600, env=None):
    """Run a repository script as a user would (``python3 script args``) from the repository root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def write_corpus(folder, n=8, seconds=1.0, sampling_rate=16000, channels=1, fmt="wav", relative=True,
                 sentences=SENTENCES):
    """Write a Kaldi-style corpus of ``n`` synthetic clips into ``folder``; returns the folder."""
    from whisper_finetune.testing import synthetic_speech

    audio_dir = os.path.join(folder, "audio")
    os.makedirs(audio_dir, exist_ok=True)
    text_lines, path_lines = [], []
    for i in range(n):
        uid = f"utt{i:04d}"
        path = os.path.join(audio_dir, f"{uid}.{fmt}")
        sf.write(path, synthetic_speech(seconds + 0.1 * i, sampling_rate, seed=i, channels=channels), sampling_rate)
        text_lines.append(f"{uid} {sentences[i % len(sentences)]}")
        path_lines.append(f"{uid} {os.path.relpath(path, folder) if relative else path}")
    with open(os.path.join(folder, "text"), "w", encoding="utf-8") as f:
        f.write("\n".join(text_lines) + "\n")
    with open(os.path.join(folder, "audio_paths"), "w", encoding="utf-8") as f:
        f.write("\n".join(path_lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random multilingual Whisper checkpoint (model, processor, generation config)."""
    from whisper_finetune.testing import build_tiny_whisper

    return build_tiny_whisper(str(tmp_path_factory.mktemp("tiny-whisper")), multilingual=True)


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its matrices redrawn at std 0.2: at the default std 0.02 every input decodes
    to the same tokens, which would make comparisons between backends or batches vacuous."""
    import shutil

    import torch

    from whisper_finetune.model.loading import load_model

    folder = str(tmp_path_factory.mktemp("tiny-sharp"))
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model = load_model(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.2)
    model.save_pretrained(folder)
    return folder


def prepared_for(model_dir, language=None, options=None, **fields):
    """The :class:`PreparedModel` every decoder takes, for a local model folder and decoding options
    (a ``DecodingOptions`` or its fields)."""
    from whisper_finetune.model import loading, sources
    from whisper_finetune.decode.options import DecodingOptions

    return loading.prepare_source(sources.resolve_model(model_dir), language, options or DecodingOptions(**fields))


@pytest.fixture(scope="session")
def tiny_en_model_dir(tmp_path_factory):
    """A tiny random English-only (``.en``-style) Whisper checkpoint."""
    from whisper_finetune.testing import build_tiny_whisper

    return build_tiny_whisper(str(tmp_path_factory.mktemp("tiny-whisper-en")), multilingual=False)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory):
    """A data_prep dataset of 8 synthetic clips (1.0-1.7 s) with short English sentences."""
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    source = write_corpus(str(root / "src"))
    out = str(root / "prepared")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=out))
    return out


def _env_path(name):
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set (see tests/conftest.py; .ci/run sets it from ../shared)")
    if not os.path.exists(value):
        pytest.skip(f"{name}={value} does not exist")
    return value


@pytest.fixture(scope="session")
def real_model_dir():
    """The prepared English-only model (whisper-tiny.en) from ``WHISPER_FT_TEST_MODEL``."""
    return _env_path("WHISPER_FT_TEST_MODEL")


@pytest.fixture(scope="session")
def real_multilingual_model_dir():
    """The prepared multilingual model (whisper-base) from ``WHISPER_FT_TEST_MULTILINGUAL_MODEL``."""
    return _env_path("WHISPER_FT_TEST_MULTILINGUAL_MODEL")


@pytest.fixture(scope="session")
def shared_data_dir():
    """The shared speech sets (espeak_en, espeak_hi, formats, longform) from ``WHISPER_FT_TEST_DATA``."""
    return _env_path("WHISPER_FT_TEST_DATA")


@pytest.fixture(scope="session")
def prepared_shared(shared_data_dir, tmp_path_factory):
    """A function ``name -> data_prep folder`` for the shared sets (e.g. ``espeak_en/eval``), cached per session."""
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    cache = {}
    root = tmp_path_factory.mktemp("shared-prepared")

    def prepare(name):
        if name not in cache:
            out = str(root / name.replace("/", "_"))
            # One process: this runs inside the test worker, which may have started JAX's threads in an earlier
            # test, and forking a process with threads risks a deadlock (Python warns of it). test_data_prep
            # covers --num_proc 2.
            prepare_dataset(DataPrepConfig(source_data_dir=os.path.join(shared_data_dir, name), output_data_dir=out,
                                           num_proc=1))
            cache[name] = out
        return cache[name]

    return prepare


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def decoded_rows(dataset):
    """The rows of a data_prep dataset with ``audio`` as ``{"array", "sampling_rate"}``, decoded by our own
    soundfile code: ``datasets`` 4+ decodes audio only through torchcodec and FFmpeg, which the project
    does not need."""
    import datasets

    from whisper_finetune.audio import decode_example_audio

    rate = dataset.features["audio"].sampling_rate
    rows = []
    for row in dataset.cast_column("audio", datasets.Audio(decode=False)):
        row["audio"] = {"array": decode_example_audio(row["audio"], rate), "sampling_rate": rate}
        rows.append(row)
    return rows
