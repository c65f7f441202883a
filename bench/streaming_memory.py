"""Streaming training: peak memory against corpus size, and samples/s of streaming against map-style.

For each --clips N, writes a local parquet dataset of N synthetic clips (1-3 s, written in row
groups of 100 so the writer's own memory is flat), then trains the tiny random Whisper (or --model)
for --steps steps with ``train/fine-tune_on_hf_dataset.py --streaming True`` (shuffle buffer
--shuffle_buffer_size, the one thing held in memory that grows with its setting), each run in its own
child whose process tree's peak RSS and anonymous memory are sampled. With --map_style True the
smallest set is also trained map-style (features computed up front) for the samples/s comparison;
samples/s is the summary's ``train_samples_per_second_excluding_eval`` (the training loop, which for
streaming includes decoding and featurising on the fly).

example (about 2-4 minutes on 2 CPU cores):
  python3 bench/streaming_memory.py --clips 500 2000 --steps 50 --batch_size 4 --shuffle_buffer_size 100 \\
      --out bench/out/streaming_memory.json
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO_ROOT, print_table, run_measured, write_json  # noqa: E402

SCRIPT = os.path.join(REPO_ROOT, "train", "fine-tune_on_hf_dataset.py")
WORDS = "the cat sat on a mat while birds sing in the morning rain".split()


def write_parquet(folder, n, seed=0):
    """``n`` synthetic clips as ``folder/data.parquet`` (audio bytes + transcription), 100 rows per group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from whisper_finetune.audio import encode_wav
    from whisper_finetune.testing import synthetic_speech

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    schema = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("transcription", pa.string())])
    with pq.ParquetWriter(os.path.join(folder, "data.parquet"), schema) as writer:
        for start in range(0, n, 100):
            rows = range(start, min(n, start + 100))
            audio = [{"bytes": encode_wav(synthetic_speech(1 + 2 * rng.random(), seed=i % 50), 16000),
                      "path": f"clip{i}.wav"} for i in rows]
            text = [" ".join(rng.choice(WORDS, 6)) for _ in rows]
            writer.write_table(pa.table({"audio": audio, "transcription": text}, schema=schema))
    return folder


def run(model, data, eval_data, out, args, streaming):
    command = [sys.executable, SCRIPT, "--model_name", model, "--language", "en", "--train_datasets", data,
               "--train_dataset_splits", "train", "--eval_datasets", eval_data, "--eval_dataset_splits", "train",
               "--streaming", str(streaming), "--num_steps", str(args.steps), "--eval_steps", str(args.steps),
               "--train_batchsize", str(args.batch_size), "--eval_batchsize", "4", "--max_eval_samples", "4",
               "--generation_max_new_tokens", "4", "--report_to", "none", "--logging_steps", "10",
               "--shuffle_buffer_size", str(args.shuffle_buffer_size), "--output_dir", out]
    wall, memory, _ = run_measured(command, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    with open(os.path.join(out, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    return {"mode": "streaming" if streaming else "map-style", "wall_s": wall, **memory,
            "samples_per_s": summary["train_samples_per_second_excluding_eval"], "steps": summary["global_step"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, nargs="+", default=[500, 2000], help="corpus sizes to stream")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    p.add_argument("--batch_size", type=int, default=4, help="training batch size")
    p.add_argument("--shuffle_buffer_size", type=int, default=100, help="streaming shuffle buffer (examples held "
                   "in memory; keep it below the smallest --clips so the buffer is full in every run)")
    p.add_argument("--repeats", type=int, default=1, help="streaming runs per corpus size (memory peaks of one "
                   "run vary by tens of MB; several runs separate a trend from that noise)")
    p.add_argument("--model", default=None, help="model folder (default: a tiny random Whisper built offline)")
    p.add_argument("--map_style", default="True", help="also train the smallest set map-style (True/False)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "out", "streaming_memory.json"),
                   help="JSON result file")
    args = p.parse_args()
    from whisper_finetune.testing import build_tiny_whisper

    rows = []
    with tempfile.TemporaryDirectory() as work:
        model = args.model or build_tiny_whisper(os.path.join(work, "tiny"), multilingual=False)
        eval_data = write_parquet(os.path.join(work, "eval"), 8, seed=1)
        for n in sorted(set(args.clips)):
            data = write_parquet(os.path.join(work, f"clips{n}"), n)
            for repeat in range(args.repeats):
                out = os.path.join(work, f"out{n}_{repeat}")
                rows.append({"clips": n, "run": repeat + 1, **run(model, data, eval_data, out, args, True)})
            if args.map_style.lower() == "true" and n == min(args.clips):
                rows.append({"clips": n, "run": 1, **run(model, data, eval_data, os.path.join(work, f"map{n}"), args,
                                                          False)})
    table = print_table(rows, ["clips", "mode", "run", "steps", "samples_per_s", "peak_rss_gb", "peak_anon_gb",
                               "wall_s"])
    summary = print_table(summarise(rows), ["clips", "mode", "runs", "peak_anon_gb_min", "peak_anon_gb_mean",
                                            "peak_anon_gb_max", "samples_per_s_mean"])
    write_json(args.out, {"settings": vars(args), "rows": rows, "table": table, "summary": summary})


def summarise(rows):
    """Per (clips, mode): number of runs and the min/mean/max of the anonymous-memory peak."""
    groups = {}
    for row in rows:
        groups.setdefault((row["clips"], row["mode"]), []).append(row)
    out = []
    for (clips, mode), group in groups.items():
        anon = [r["peak_anon_gb"] for r in group]
        out.append({"clips": clips, "mode": mode, "runs": len(group), "peak_anon_gb_min": min(anon),
                    "peak_anon_gb_mean": sum(anon) / len(anon), "peak_anon_gb_max": max(anon),
                    "samples_per_s_mean": sum(r["samples_per_s"] for r in group) / len(group)})
    return out


if __name__ == "__main__":
    main()
