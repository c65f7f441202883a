"""Evaluate a Whisper model on data_prep datasets with JAX (own plain-JAX Whisper, jit-compiled once, data parallel).

Same flags, data loading, normalisation and result files as evaluate/evaluate_on_custom_dataset.py;
result files are named <model>__<dataset>__jax.txt/.json and also record compile_seconds (the
one-off jit compilation, kept out of wall_seconds and RTFx). PyTorch weights are loaded directly
(no Flax needed), so Hub models, local folders, our trainer's checkpoints and LoRA adapters work.
Batches are padded to --batch_size (rounded up to a multiple of the device count), so the last
batch does not recompile. --half_precision True computes in bfloat16. --device all decodes on
every local GPU/TPU in parallel (--device -1: every CPU device;
XLA_FLAGS=--xla_force_host_platform_device_count=N makes N).

examples:
  python3 evaluate/jax_evaluate_on_custom_dataset.py --hf_model openai/whisper-base --language hi \\
    --eval_datasets output_data_directory/eval_dataset_1 output_data_directory/eval_dataset_2 --device 0 \\
    --batch_size 16 --output_dir jax_predictions_dir --half_precision True
  python3 evaluate/jax_evaluate_on_custom_dataset.py --is_public_repo False --ckpt_dir op_dir/checkpoint-394 \\
    --language hi --eval_datasets data/eval --device -1 --output_dir jax_predictions_dir
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.evaluator_main(__doc__, custom=True, argv=argv, backend="jax")


if __name__ == "__main__":
    cli.run(main)
