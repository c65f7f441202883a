"""Fine-tune Whisper on data_prep datasets (custom_data/data_prep.py output folders).

Several --train_datasets (and --eval_datasets) are concatenated and shuffled. Checkpoints and
evaluation (WER/CER with generation) every --eval_steps; at the end the best model by eval WER,
its processor and generation config (language and task set) are in --output_dir, beside
training_curve.png, training_summary.json and TensorBoard logs (runs/).

examples:
  python3 train/fine-tune_on_custom_dataset.py --model_name openai/whisper-base --language Hindi \
    --train_datasets data/train --eval_datasets data/eval --train_strategy steps --num_steps 60 \
    --train_batchsize 8 --output_dir op_dir
  torchrun --nproc_per_node=2 train/fine-tune_on_custom_dataset.py ...   (several GPUs, or CPU processes)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.train_main(__doc__, hf=False, argv=argv)


if __name__ == "__main__":
    cli.run(main)
