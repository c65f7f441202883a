"""Fine-tune Whisper on Hugging Face datasets (Hub ids, or local folders load_dataset reads).

Each --train_datasets entry takes a config, split and text column from the parallel lists
(--train_dataset_configs, --train_dataset_splits, --train_dataset_text_columns; the same for eval);
local audiofolder/parquet folders and save_to_disk folders work offline. Datasets are concatenated
and shuffled, audio resampled to --sampling_rate. At the end the best model by eval WER, its
processor and generation config are in --output_dir, beside training_curve.png,
training_summary.json and TensorBoard logs (runs/).

examples:
  python3 train/fine-tune_on_hf_dataset.py --model_name openai/whisper-base --language Hindi \
    --train_datasets mozilla-foundation/common_voice_11_0 --train_dataset_configs hi \
    --train_dataset_splits train --eval_datasets google/fleurs --eval_dataset_configs hi_in \
    --eval_dataset_splits test --eval_dataset_text_columns transcription --output_dir op_dir
  torchrun --nproc_per_node=2 train/fine-tune_on_hf_dataset.py ...   (several GPUs, or CPU processes)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.train_main(__doc__, hf=True, argv=argv)


if __name__ == "__main__":
    cli.run(main)
