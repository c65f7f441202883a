"""Benchmark fine-tuning speed: our trainer against a plain Seq2SeqTrainer set up like transformers' example.

Both runs train the same model on the same data_prep dataset for --steps optimizer steps at the same
batch size, learning rate and warm-up (AdamW, linear decay, fp32, no weight decay, clipping 1.0), each
in its own child process, one after the other; the parent samples the peak RSS and anonymous memory
of each child's process tree.

  (a) baseline  bench/baseline_seq2seq_trainer.py: features precomputed with Dataset.map into float32
                lists, the example's DataCollatorSpeechSeq2SeqWithPadding, dataloader_num_workers=0,
                random batches, no evaluation, no checkpoints
  (b) ours      train/fine-tune_on_custom_dataset.py with its defaults for everything not listed above
                (extra flags with --our_args); it always evaluates and saves, so it runs a single
                evaluation at the last step (--eval_steps = --save_steps = --steps) on --eval_samples
                clips with --eval_max_new_tokens, and that evaluation time is subtracted
  (c) ours_dynamic  (b) with --dynamic_audio_context True: each batch cut to its 2 s bucket, a quarter
                of the steps at 30 s (same data, same steps)

"train_s" is the training loop only: the Trainer's train_runtime (minus ours' evaluation, checkpoint
writing and best-model reloading, which the baseline does not do); featurisation and model
loading are outside it and in "wall_s" (the whole child). samples/s = steps x batch / train_s.
"final_loss" is the last logged training loss (mean over the last --logging_steps steps), "mean_loss"
the Trainer's train_loss (mean over the run). The table ends with ratio (b)/(a) of samples/s and the
loss difference (b) - (a), and ratio (c)/(b) when both ran.

example:
  python3 bench/train_speed.py --model ../shared/models/whisper-tiny.en --data data/espeak_en_train \\
      --steps 60 --batch_size 8 --learning_rate 1e-4 --warmup 10 --out bench/out/train_speed.json
"""
import json
import os
import shlex
import shutil
import sys
import tempfile

from common import REPO_ROOT, failure_line, machine_facts, print_table, run_measured, table_columns, write_json

from whisper_finetune import cli  # noqa: E402
from whisper_finetune.data.schema import is_saved_dataset  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

SYSTEMS = ("baseline", "ours", "ours_dynamic")
DESCRIPTIONS = {"baseline": "(a) plain Seq2SeqTrainer (HF example)", "ours": "(b) ours (fine-tune_on_custom_dataset)",
                "ours_dynamic": "(c) ours, --dynamic_audio_context True"}
COLUMNS = ["system", "steps", "batch", "train_s", "samples_per_s", "final_loss", "mean_loss", "wall_s",
           "peak_rss_gb", "peak_anon_gb", "error"]


def baseline_command(args, folder):
    """Command line of the baseline child; it writes ``result.json`` into ``folder``."""
    command = [sys.executable, os.path.join(REPO_ROOT, "bench", "baseline_seq2seq_trainer.py"), "--model", args.model,
               "--data", args.data, "--output_dir", folder, "--result_json", os.path.join(folder, "result.json"),
               "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--learning_rate",
               str(args.learning_rate), "--warmup", str(args.warmup), "--logging_steps", str(args.logging_steps),
               "--seed", str(args.seed), "--precision", args.precision]
    return command + (["--language", args.language] if args.language else [])


def ours_command(args, folder, dynamic=False):
    """Command line of our training script with the baseline's settings and one evaluation at the end."""
    command = [sys.executable, os.path.join(REPO_ROOT, "train", "fine-tune_on_custom_dataset.py"),
               "--model_name", args.model, "--train_datasets", args.data, "--eval_datasets", args.eval_data or args.data,
               "--output_dir", folder, "--num_steps", str(args.steps), "--train_batchsize", str(args.batch_size),
               "--learning_rate", str(args.learning_rate), "--warmup", str(args.warmup), "--lr_scheduler_type",
               "linear", "--weight_decay", "0", "--max_grad_norm", "1.0", "--mixed_precision", args.precision,
               "--eval_steps", str(args.steps), "--save_steps", str(args.steps), "--max_eval_samples",
               str(args.eval_samples), "--generation_max_new_tokens", str(args.eval_max_new_tokens),
               "--logging_steps", str(args.logging_steps), "--seed", str(args.seed), "--report_to", "none"]
    if args.language:
        command += ["--language", args.language]
    if dynamic:
        command += ["--dynamic_audio_context", "True"]
    return command + shlex.split(args.our_args)


def read_baseline(folder):
    """(train seconds, final logged loss, mean loss, peak GPU GB or None) from the baseline's result file."""
    with open(os.path.join(folder, "result.json"), encoding="utf-8") as f:
        result = json.load(f)
    return result["train_runtime"], result["final_logged_loss"], result["train_loss"], result.get("peak_gpu_gb")


def read_ours(folder):
    """(train seconds, final logged loss, mean loss, peak GPU GB or None) from our run's trainer_state.json
    and training_summary.json."""
    with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    with open(os.path.join(folder, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    runtime = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    # the Trainer's own evaluation, checkpoint writing and best-model reloading are left out, like the
    # baseline, which neither evaluates nor saves
    train_s = runtime - summary["eval_seconds"] - summary["checkpoint_seconds"]
    return train_s, losses[-1] if losses else None, summary["train_loss"], summary["peak_gpu_gb"]


def measure(args, system, work):
    """Run one system in a child process; returns its table row (an error row when it fails)."""
    folder = os.path.join(work, system)
    os.makedirs(folder, exist_ok=True)
    command = baseline_command(args, folder) if system == "baseline" else \
        ours_command(args, folder, dynamic=system == "ours_dynamic")
    label = DESCRIPTIONS[system] + (f" {args.our_args}" if system != "baseline" and args.our_args else "")
    row = {"system": label, "system_key": system, "steps": args.steps, "batch": args.batch_size}
    try:
        wall, memory, _ = run_measured(command, env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        train_s, final_loss, mean_loss, peak_gpu = (read_baseline if system == "baseline" else read_ours)(folder)
    except (RuntimeError, OSError, KeyError, StopIteration) as exc:
        print(f"{system}: FAILED:\n{exc}", file=sys.stderr)
        return {**row, "error": failure_line(exc)}
    print(f"{system}: {train_s:.1f} s training, final loss {final_loss}", file=sys.stderr)
    return {**row, "train_s": train_s, "samples_per_s": args.steps * args.batch_size / train_s,
            "final_loss": final_loss, "mean_loss": mean_loss, "wall_s": wall, **memory, "peak_gpu_gb": peak_gpu,
            "error": "",
            "command": " ".join(shlex.quote(c) for c in command)}


def comparison(rows):
    """Ratio (b)/(a) of samples/s and loss differences (b) - (a), ratio (c)/(b), or ``None`` when a run of a
    pair failed or did not run."""
    by_system = {row["system_key"]: row for row in rows if not row.get("error")}
    compared = {}
    if "baseline" in by_system and "ours" in by_system:
        baseline, ours = by_system["baseline"], by_system["ours"]
        difference = {key: ours[key] - baseline[key] if ours[key] is not None and baseline[key] is not None
                      else None for key in ("final_loss", "mean_loss")}
        compared.update(samples_per_s_ratio=ours["samples_per_s"] / baseline["samples_per_s"],
                        final_loss_difference=difference["final_loss"], mean_loss_difference=difference["mean_loss"])
    if "ours" in by_system and "ours_dynamic" in by_system:
        compared["dynamic_samples_per_s_ratio"] = by_system["ours_dynamic"]["samples_per_s"] / \
            by_system["ours"]["samples_per_s"]
    return compared or None


def check_args(args):
    """Validate flags before any long work."""
    for flag in ("steps", "batch_size", "eval_samples", "eval_max_new_tokens", "logging_steps"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.warmup < 0:
        raise UserError(f"--warmup {args.warmup}: must not be negative")
    if args.learning_rate <= 0:
        raise UserError(f"--learning_rate {args.learning_rate}: must be positive")
    if not os.path.exists(os.path.join(args.model, "config.json")):
        raise UserError(f"--model {args.model}: not a Whisper checkpoint folder (no config.json)")
    for flag in ("data", "eval_data"):
        value = getattr(args, flag)
        if value is not None and not is_saved_dataset(value):
            raise UserError(f"--{flag} {value}: not a data_prep output folder (make one with custom_data/data_prep.py)")
    try:
        shlex.split(args.our_args)
    except ValueError as exc:
        raise UserError(f"--our_args {args.our_args!r}: {exc}") from exc


def build_parser():
    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, help="transformers-format Whisper checkpoint folder")
    parser.add_argument("--data", required=True, help="training data: a data_prep output folder")
    parser.add_argument("--eval_data", default=None, help="data_prep folder for our trainer's one evaluation "
                        "(default: --data)")
    parser.add_argument("--language", default=None, help="language of multilingual models (e.g. hindi); none for .en")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps, every run")
    parser.add_argument("--batch_size", type=int, default=8, help="training batch size, every run")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate, every run")
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps (then linear decay), every run")
    parser.add_argument("--logging_steps", type=int, default=10, help="log the training loss every N steps")
    parser.add_argument("--seed", type=int, default=42, help="random seed, every run")
    parser.add_argument("--eval_samples", type=int, default=8, help="clips in our trainer's single evaluation "
                        "(its time is subtracted)")
    parser.add_argument("--eval_max_new_tokens", type=int, default=32, help="token limit of that evaluation")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="every run: fp32, "
                        "or bf16/fp16 mixed precision (the Trainer's --bf16/--fp16; fp16 needs a GPU)")
    parser.add_argument("--our_args", default="", help="extra flags for our training script, in one quoted string, "
                        "e.g. \"--num_workers 2\"")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS, help="runs to do (default: all)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "out", "train_speed.json"),
                        help="JSON file for the figures (machine, versions, settings, rows, comparison, table)")
    parser.add_argument("--work_dir", default=None, help="folder for the runs' outputs (default: a temporary "
                        "folder, removed at the end)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    check_args(args)
    keep_work = args.work_dir is not None
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="bench-train-speed-"))
    try:
        rows = [measure(args, system, work) for system in args.systems]
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    gpu = machine_facts()["gpu"]
    columns = table_columns(COLUMNS, gpu is not None)
    for row in rows:
        for column in columns:
            row.setdefault(column, "-")
    # --our_args comes last on our command line, so a --mixed_precision there overrides --precision.
    precision = args.precision + (f" (ours with {args.our_args})" if args.our_args else "")
    print(f"\n{args.steps} steps x batch {args.batch_size}, lr {args.learning_rate:g}, warm-up {args.warmup}, "
          f"{precision}, {gpu or 'CPU'}")
    table = print_table(rows, columns)
    compared = comparison(rows)
    lines = []
    if compared and "samples_per_s_ratio" in compared:
        line = f"ours/baseline samples/s: {compared['samples_per_s_ratio']:.2f}x"
        if compared["final_loss_difference"] is not None:
            line += f"; final loss difference (ours - baseline): {compared['final_loss_difference']:+.4f}"
        lines.append(line)
    if compared and "dynamic_samples_per_s_ratio" in compared:
        lines.append(f"dynamic/padded samples/s (ours): {compared['dynamic_samples_per_s_ratio']:.2f}x")
    for line in lines:
        print(line)
        table += "\n" + line
    write_json(args.out, {"benchmark": "train_speed", "settings": vars(args), "rows": rows, "comparison": compared,
                          "table": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
