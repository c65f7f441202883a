"""A normal run prints progress and results only: no library warning reaches the terminal, and
``--verbose True`` brings them back (so the check below is not passing because there were none)."""
import re

import pytest
from conftest import run_script

# What library warnings on these paths look like (transformers' generate, datasets, torch, JAX).
WARNING = re.compile(r"warn|deprecat|will take precedence|attention mask|generation_config|os\.fork|available\.$",
                     re.IGNORECASE | re.MULTILINE)


def _warnings(stderr):
    return [line for line in stderr.splitlines() if WARNING.search(line)]


@pytest.mark.slow  # tens of seconds: the second tier
@pytest.mark.parametrize("verbose", [False, True])
def test_transcribe_and_evaluate_print_no_library_warnings(tiny_en_model_dir, tiny_dataset_dir, tmp_path, verbose):
    extra = ["--verbose", "True"] if verbose else []
    transcribed = run_script("transcribe_audio.py", "--hf_model", tiny_en_model_dir, "--path_to_audio",
                             "sample_data/audio/sample_0000.flac", "--max_new_tokens", "4", *extra)
    evaluated = run_script("evaluate/evaluate_on_custom_dataset.py", "--hf_model", tiny_en_model_dir,
                           "--eval_datasets", tiny_dataset_dir, "--max_new_tokens", "4", "--num_workers", "0",
                           "--output_dir", str(tmp_path / "results"), *extra)
    for run in (transcribed, evaluated):
        assert run.returncode == 0, run.stderr[-3000:]
        if verbose:
            assert _warnings(run.stderr), "the library warnings this test guards against no longer occur"
        else:
            assert _warnings(run.stderr) == []
    assert "WER" not in transcribed.stderr and "wer" in evaluated.stdout  # results on stdout
