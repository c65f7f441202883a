"""Evaluate a Whisper model on one or more data_prep datasets: WER/CER, result files, real-time factor.

Writes, per dataset, <model>__<dataset>.txt (WER/CER at the top, normaliser, then ID/REF/HYP per
utterance) and a .json with the same figures plus S/D/I counts, audio hours, wall time and RTFx,
then prints a summary table. Utterances are decoded in length-sorted batches; audio is decoded and
featurised in DataLoader workers. --backend ctranslate2 converts the model once (cached beside it).

examples:
  python3 evaluate/evaluate_on_custom_dataset.py --is_public_repo False --ckpt_dir "op_dir_epoch/checkpoint-394" \\
    --temp_ckpt_folder "temp" --language gu --eval_datasets output_data_directory/eval_dataset_1 \\
    output_data_directory/eval_dataset_2 --device 0 --batch_size 16 --output_dir predictions_dir
  python3 evaluate/evaluate_on_custom_dataset.py --hf_model openai/whisper-tiny.en --eval_datasets data/eval \\
    --device -1 --backend ctranslate2 --compute_type int8 --output_dir predictions_dir
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.evaluator_main(__doc__, custom=True, argv=argv)


if __name__ == "__main__":
    cli.run(main)
