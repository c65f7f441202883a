"""A tiny random Whisper (model + tokenizer + feature extractor), built offline in about a second.

Used by the tests and the benchmarks so that every script can run on a fresh machine without any
downloaded weights. The tokenizer is a byte-level BPE with no merges (one token per byte) plus the
full set of Whisper special tokens: ``<|endoftext|>``, ``<|startoftranscript|>``, one token per
language, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``,
``<|nospeech|>``, ``<|notimestamps|>`` and the 1501 timestamp tokens ``<|0.00|>`` .. ``<|30.00|>``.
"""
import json
import os

import numpy as np
import torch
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperProcessor, WhisperTokenizer)
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from .audio import SAMPLE_RATE
from .text import byte_level_alphabet

TIMESTAMP_STEPS = 1501  # <|0.00|> .. <|30.00|> in 20 ms steps


def _special_tokens(multilingual):
    languages = [f"<|{code}|>" for code in LANGUAGES] if multilingual else []
    specials = ["<|endoftext|>", "<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    return specials + [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMP_STEPS)]


def build_tiny_whisper(folder, multilingual=True, d_model=64, layers=2, heads=2, seed=0):
    """Write a tiny random Whisper checkpoint to ``folder`` and return the folder.

    The result loads with ``WhisperForConditionalGeneration.from_pretrained`` and
    ``WhisperProcessor.from_pretrained`` like a real one (same special tokens, generation config with
    ``lang_to_id``/``task_to_id``), so decoding, training and scoring code runs unchanged on it.
    """
    os.makedirs(folder, exist_ok=True)
    byte_vocab = {char: i for i, char in enumerate(byte_level_alphabet().values())}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(byte_vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    specials = _special_tokens(multilingual)
    tokenizer = WhisperTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                 pad_token="<|endoftext|>", model_max_length=448)
    tokenizer.add_special_tokens({"extra_special_tokens": specials[1:]}, replace_extra_special_tokens=False)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)  # preprocessor_config.json, as model.loading.save_processor writes

    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=d_model,
                           encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                           decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                           max_source_positions=1500, max_target_positions=448, pad_token_id=eot,
                           bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    multilingual_fields = {
        "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        "lang_to_id": {f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
        "forced_decoder_ids": [[1, None], [2, ids["<|transcribe|>"]]],
    } if multilingual else {"forced_decoder_ids": [[1, ids["<|notimestamps|>"]]]}  # .en checkpoints have no lang_to_id
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        # Random weights: keep generated text in the byte tokens, so decoded hypotheses are not empty.
        begin_suppress_tokens=[220, eot], suppress_tokens=sorted(set(ids.values()) - {eot}),
        is_multilingual=multilingual, no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"], max_initial_timestamp_index=50, alignment_heads=[[layers - 1, 0]],
        **multilingual_fields)
    model.generation_config = generation
    model.save_pretrained(folder)
    return folder


def synthetic_speech(seconds, sampling_rate=SAMPLE_RATE, seed=0, channels=1):
    """A deterministic tone-plus-noise signal (float32, ``(samples,)`` or ``(samples, channels)``)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    signal = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.02 * rng.standard_normal(t.shape)
    signal = signal.astype(np.float32)
    return np.stack([signal] * channels, axis=1) if channels > 1 else signal


def no_speech_audio(kind, seconds, seed=0):
    """Audio without a word in it, where Whisper is known to invent text (float32 at 16 kHz): ``silence``, low
    Gaussian noise; ``tones``, a melody of pentatonic notes with harmonics over a drone, music-like."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    noise = 0.003 * rng.standard_normal(n)  # about -50 dBFS, a quiet room
    if kind == "silence":
        return noise.astype(np.float32)
    t = np.arange(n) / SAMPLE_RATE
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)  # A major pentatonic over two octaves
    music = 0.05 * (np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 165 * t))  # drone: A2 and E3
    start = 0
    while start < n:
        length = int(rng.choice([0.25, 0.5, 0.75]) * SAMPLE_RATE)
        pitch = rng.choice(scale)
        tt = np.arange(min(length, n - start)) / SAMPLE_RATE
        note = sum(np.sin(2 * np.pi * k * pitch * tt) / k for k in (1, 2, 3)) * np.exp(-3 * tt)
        music[start:start + len(tt)] += 0.2 * note
        start += length
    return (music + noise).astype(np.float32)
