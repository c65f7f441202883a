"""whisper_finetune: fine-tune, evaluate, transcribe and embed with OpenAI Whisper.

One module per stage: ``audio`` (loading, constants), ``text`` (languages, normalisers), ``data``
(data_prep and dataset loading), ``modeling`` (models, processors, languages, LoRA), ``training``,
``decoding`` (PyTorch / CTranslate2 / JAX), ``scoring`` (WER/CER, result files), ``embeddings``.
The scripts at the repository root and in ``custom_data/``, ``train/``, ``evaluate/`` are thin
command-line shims over these modules.
"""
__version__ = "0.1.0"
