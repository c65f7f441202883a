"""Transcribe (or translate) one audio file of any format, sample rate and length with JAX; print the text.

Same flags and output as transcribe_audio.py, decoded by the project's own plain-JAX Whisper (no Flax;
PyTorch weights loaded directly, decoding jit-compiled once, data parallel over all local devices of
the chosen kind; greedy or --num_beams beam search).
Audio longer than 30 s is cut in pauses into pieces of at most 30 s (--search_seconds), decoded
--batch_size pieces at a time and joined into one transcript. --output FILE also writes txt, srt,
vtt or json (segments with start/end times), chosen by the file's extension. --half_precision True
computes in bfloat16; --device all uses every local GPU/TPU. --vad True works here too; --timestamps True and
the hallucination guards are transcribe_audio.py's (PyTorch) only.

examples:
  python3 jax_transcribe_audio.py --hf_model vasista22/whisper-tamil-base --path_to_audio /path/to/audio/file.wav \\
    --language ta --device 0 --half_precision True --batch_size 16
  python3 jax_transcribe_audio.py --hf_model openai/whisper-tiny.en --path_to_audio talk.flac --device -1 \\
    --batch_size 4 --output talk.srt
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.transcriber_main(__doc__, argv, backend="jax")


if __name__ == "__main__":
    cli.run(main)
