"""Extract Whisper hidden states (any encoder/decoder layer) for audio files or a dataset.

Writes OUT/<name>.npz per requested embedding, keyed by utterance id (np.load(f)[id]), and
OUT/manifest.json with the model, every option, the shapes, the pooling and per-item frame counts.

Names: encoder_last_hidden_state, last_hidden_state (decoder), encoder_hidden_states[i],
decoder_hidden_states[i]; a model with L layers has L+1 hidden states per side: index 0 is the
embedding output (input to layer 1), index i the output of layer i, index L (or -1) the last
layer's output after the final layer norm (= *_last_hidden_state). Negative indices count from the end.

--pool mean averages over the encoder frames that cover the real audio (20 ms per frame), not over
the padding of the 30 s window, unless --pool_over_padding True.

examples:
  python3 extract_embeddings.py --model openai/whisper-base --path_to_audio clip.wav --output_dir emb
  python3 extract_embeddings.py --model openai/whisper-base --eval_datasets data/eval --output_dir emb \\
      --embeddings encoder_last_hidden_state "encoder_hidden_states[-2]" last_hidden_state --pool mean
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli, options  # noqa: E402
from whisper_finetune.embeddings_config import EmbeddingConfig, validate_config  # noqa: E402


def main(argv=None):
    config, script = options.parse(EmbeddingConfig, __doc__, argv)
    validate_config(config)  # before any import of the libraries: a bad value is refused at once
    cli.setup_logging(script.verbose)
    from whisper_finetune.embeddings import extract_embeddings  # after parsing: -h and option errors need no torch

    print(extract_embeddings(config))
    return 0


if __name__ == "__main__":
    cli.run(main)
