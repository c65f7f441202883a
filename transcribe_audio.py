"""Transcribe (or translate) one audio file of any format, sample rate and length; print the text.

Audio longer than 30 s is transcribed whole: it is cut into pieces of at most 30 s at the quietest
moments (pauses) and the pieces are decoded in batches. --output FILE also writes txt, srt, vtt or json (segments with
start/end times), chosen by the file's extension. --timestamps True decodes sequentially on the timestamps Whisper
predicts instead (one cue per spoken segment; --word_timestamps True adds word times to the json); --vad True removes
non-speech first; the hallucination guards are Whisper's (their defaults are in each flag's help).

examples:
  python3 transcribe_audio.py --is_public_repo True --hf_model vasista22/whisper-tamil-base \\
    --path_to_audio /path/to/audio/file.wav --language ta --device 0
  python3 transcribe_audio.py --hf_model openai/whisper-base --path_to_audio talk.mp3 --language hi \\
    --task translate --num_beams 5 --output talk.srt
  python3 transcribe_audio.py --hf_model openai/whisper-tiny.en --path_to_audio talk.flac --timestamps True \\
    --word_timestamps True --vad True --output talk.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    return cli.transcriber_main(__doc__, argv)


if __name__ == "__main__":
    cli.run(main)
