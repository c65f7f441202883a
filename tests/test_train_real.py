"""Fine-tuning real Whisper weights (slow; skipped unless the WHISPER_FT_TEST_* variables are set)."""
import json
import os
import unicodedata

import pytest
import torch

from conftest import run_script

CUSTOM = "train/fine-tune_on_custom_dataset.py"


def devanagari_share(texts):
    """Share of Devanagari letters (U+0900-U+097F) among all letters and combining marks in ``texts``."""
    letters = [ch for text in texts for ch in text if unicodedata.category(ch)[0] in "LM"]
    return sum("\u0900" <= ch <= "\u097f" for ch in letters) / max(1, len(letters))


def saved_model_writes_hindi(out, clips):
    """Check the saved model's decoder prompt; transcribe ``clips`` (a data_prep dataset) without a
    language (the saved one applies); returns ``(Devanagari share, transcripts)``."""
    from transformers import GenerationConfig

    from whisper_finetune.model import loading
    from whisper_finetune.data.features import featurize

    generation = GenerationConfig.from_pretrained(out)
    assert (generation.language, generation.task) == ("hi", "transcribe")
    processor = loading.load_processor(out)
    prompt = processor.tokenizer.convert_ids_to_tokens(
        loading.decoder_prompt_ids(processor.tokenizer, generation.language, generation.task))
    assert prompt == ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>", "<|notimestamps|>"]
    model = loading.load_model(out)
    n = len(clips)
    features = featurize(clips, processor, 16000).with_format("numpy")
    hyps = []
    for start in range(0, n, 16):
        batch = torch.tensor(features[start:start + 16]["input_features"]).float()  # (16, 80, 3000)
        with torch.inference_mode():
            sequences = model.generate(batch, max_new_tokens=40)  # no language given: the saved one is used
        hyps += processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return devanagari_share(hyps), hyps


@pytest.mark.slow
@pytest.mark.real_model
def test_whisper_base_learns_to_write_hindi_in_devanagari(real_multilingual_model_dir, prepared_shared, tmp_path):
    train_dir = prepared_shared("espeak_hi/train")
    out = str(tmp_path / "hindi")
    # Decoder-only fine-tuning is enough to move the output script, and about twice as fast on CPU.
    proc = run_script(CUSTOM, "--model_name", real_multilingual_model_dir, "--language", "Hindi",
                      "--train_datasets", train_dir, "--eval_datasets", train_dir, "--max_train_samples", 32,
                      "--max_eval_samples", 4, "--train_strategy", "steps", "--num_steps", 5, "--eval_steps", 5,
                      "--train_batchsize", 8, "--eval_batchsize", 8, "--learning_rate", 2e-4, "--warmup", 1,
                      "--freeze_encoder", "True", "--generation_max_new_tokens", 40, "--num_proc", 2,
                      "--report_to", "none", "--output_dir", out, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from whisper_finetune.data.loading import load_datasets
    from whisper_finetune.data.schema import DatasetSpec

    clips = load_datasets([DatasetSpec(train_dir)], custom=True)[0].shuffle(seed=42).select(range(8))
    share, hyps = saved_model_writes_hindi(out, clips)
    with open(os.path.join(out, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    print(f"Devanagari share {share:.3f}; summary {summary['wall_seconds']} s, best WER {summary['best_wer']}")
    assert share > 0.9, hyps[:4]

    # transformers' own pipeline, given only the folder, also writes Devanagari: the saved generation
    # config carries the language and task.
    from transformers import pipeline

    from whisper_finetune.audio import decode_example_audio

    asr = pipeline("automatic-speech-recognition", model=out, device="cpu")
    texts = [asr({"raw": decode_example_audio(row["audio"]), "sampling_rate": 16000},
                 generate_kwargs={"max_new_tokens": 40})["text"] for row in clips.select(range(1))]
    assert devanagari_share(texts) > 0.9, texts
