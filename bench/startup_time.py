"""How long each script takes to answer ``-h``, a mistyped flag, a bad value and a folder that is not there, beside
the imports it avoids.

A user's first contact with a script is ``-h`` or an error about a flag, its value or a path; each should come back
at once, not after the seconds torch, transformers and datasets take to import. Each row runs the command in a
fresh Python process ``--repeats`` times, one after another, and reports the fastest and the median
wall time (the process's start and exit included). The ``import ...`` rows time a bare
``python -c "import X"`` for comparison: what a script would pay if it imported that library first.

example:
  python3 bench/startup_time.py --repeats 5
"""
import argparse
import statistics
import subprocess
import sys
import time

from common import REPO_ROOT, print_table, write_json

SCRIPTS = ("custom_data/data_prep.py", "train/fine-tune_on_custom_dataset.py", "train/fine-tune_on_hf_dataset.py",
           "evaluate/evaluate_on_custom_dataset.py", "evaluate/evaluate_on_hf_dataset.py",
           "evaluate/jax_evaluate_on_custom_dataset.py", "evaluate/report.py", "transcribe_audio.py",
           "jax_transcribe_audio.py", "export_model.py", "extract_embeddings.py", "demo.py")
LIBRARIES = ("torch", "transformers", "datasets")
BAD_FLAG = ("--no_such_flag", "1")  # argparse refuses it with exit status 2
CLIP = "sample_data/audio/sample_0000.flac"  # an audio file that exists, for the scripts that check one
TRAIN = ("--model_name", "m", "--train_datasets", "d", "--eval_datasets", "e", "--output_dir", "o")
EVAL = ("--hf_model", "m", "--output_dir", "o")
# Per script, flags whose last value no run could use (refused with exit status 2); the other flags are
# what the script requires, named but never opened.
BAD_VALUE = {
    "custom_data/data_prep.py": ("--source_data_dir", "sample_data", "--output_data_dir", "o", "--sampling_rate", "0"),
    "train/fine-tune_on_custom_dataset.py": TRAIN + ("--merge_ratio", "2"),
    "train/fine-tune_on_hf_dataset.py": TRAIN + ("--merge_ratio", "2"),
    "evaluate/evaluate_on_custom_dataset.py": EVAL + ("--eval_datasets", "e", "--num_beams", "0"),
    "evaluate/evaluate_on_hf_dataset.py": EVAL + ("--dataset", "d", "--num_beams", "0"),
    "evaluate/jax_evaluate_on_custom_dataset.py": EVAL + ("--eval_datasets", "e", "--num_beams", "0"),
    "evaluate/report.py": ("r", "--output", "o.html", "--max_embedded_audio_mb", "-1"),
    "transcribe_audio.py": ("--hf_model", "m", "--path_to_audio", CLIP, "--output", "talk.docx"),
    "jax_transcribe_audio.py": ("--hf_model", "m", "--path_to_audio", CLIP, "--search_seconds", "20"),
    "export_model.py": ("--model", "m", "--format", "ggml", "--output_dir", "o", "--quantization", "q4_0"),
    "extract_embeddings.py": ("--model", "m", "--path_to_audio", CLIP, "--output_dir", "o", "--embeddings",
                              "encoder_hidden_states"),
    "demo.py": ("--hf_model", "m", "--server_port", "70000"),
}
# Per script, the same run with a folder that is not there as its last flag's value (a mistyped model or dataset
# path; refused with exit status 2 from the file system alone).
MISSING = "no/such/folder"
MISSING_FOLDER = {
    "custom_data/data_prep.py": ("--output_data_dir", "o", "--source_data_dir", MISSING),
    "train/fine-tune_on_custom_dataset.py": TRAIN + ("--train_datasets", MISSING),
    "train/fine-tune_on_hf_dataset.py": TRAIN + ("--model_name", MISSING),
    "evaluate/evaluate_on_custom_dataset.py": EVAL + ("--eval_datasets", MISSING),
    "evaluate/evaluate_on_hf_dataset.py": ("--output_dir", "o", "--dataset", "d", "--hf_model", MISSING),
    "evaluate/jax_evaluate_on_custom_dataset.py": EVAL + ("--eval_datasets", MISSING),
    "transcribe_audio.py": ("--path_to_audio", CLIP, "--hf_model", MISSING),
    "jax_transcribe_audio.py": ("--path_to_audio", CLIP, "--hf_model", MISSING),
    "export_model.py": ("--format", "ggml", "--output_dir", "o", "--model", MISSING),
    "extract_embeddings.py": ("--model", "m", "--output_dir", "o", "--eval_datasets", MISSING),
    "demo.py": ("--hf_model", MISSING),
}
COLUMNS = ["row", "exit", "best_s", "median_s"]


def timed(command, repeats):
    """``(exit status, [wall seconds of each run])`` of ``command`` run ``repeats`` times in a row."""
    seconds, codes = [], set()
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
        codes.add(done.returncode)
    return ",".join(str(c) for c in sorted(codes)), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (fastest and median reported)")
    parser.add_argument("--scripts", nargs="+", default=SCRIPTS, help="scripts to time, relative to the repository")
    parser.add_argument("--out", default=f"{REPO_ROOT}/bench/out/startup_time.json", help="JSON file of the figures")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be 1 or more")

    commands = [(f"import {name}", [sys.executable, "-c", f"import {name}"]) for name in LIBRARIES]
    for script in args.scripts:
        commands.append((f"{script} -h", [sys.executable, script, "-h"]))
        commands.append((f"{script} {' '.join(BAD_FLAG)}", [sys.executable, script, *BAD_FLAG]))
        if script in BAD_VALUE:
            bad = BAD_VALUE[script][-2:]
            commands.append((f"{script} ... {' '.join(bad)}", [sys.executable, script, *BAD_VALUE[script]]))
        if script in MISSING_FOLDER:
            missing = MISSING_FOLDER[script][-2:]
            commands.append((f"{script} ... {' '.join(missing)}", [sys.executable, script, *MISSING_FOLDER[script]]))
    rows = []
    for name, command in commands:
        code, seconds = timed(command, args.repeats)
        rows.append({"row": name, "exit": code, "best_s": min(seconds), "median_s": statistics.median(seconds),
                     "runs_s": seconds})
    print_table(rows, COLUMNS)
    write_json(args.out, {"settings": {"repeats": args.repeats, "python": sys.executable}, "rows": rows})


if __name__ == "__main__":
    main()
