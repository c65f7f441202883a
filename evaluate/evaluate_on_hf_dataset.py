"""Evaluate a Whisper model on a Hugging Face dataset split (Hub or local): WER/CER, result files, RTFx.

Writes <model>__<dataset>_<config>_<split>.txt (WER/CER at the top, normaliser, then ID/REF/HYP per
utterance) and a .json with the same figures plus S/D/I counts, audio hours, wall time and RTFx,
then prints a summary table. The text column is auto-detected unless --text_column names it.

examples:
  python3 evaluate/evaluate_on_hf_dataset.py --is_public_repo False --ckpt_dir "op_dir_epoch/checkpoint-394" \\
    --temp_ckpt_folder "temp" --language gu --dataset "google/fleurs" --config gu_in --split test \\
    --device 0 --batch_size 16 --output_dir predictions_dir
  python3 evaluate/evaluate_on_hf_dataset.py --is_public_repo True --hf_model vasista22/whisper-kannada-small \\
    --language kn --dataset "google/fleurs" --config kn_in --split test --device 0 --batch_size 16 \\
    --output_dir predictions_dir
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.evaluator_main(__doc__, custom=False, argv=argv)


if __name__ == "__main__":
    cli.run(main)
