"""Dynamic audio context: the encoder runs on the batch's own length (rounded up to a bucket) instead of 30 s."""
import json

import numpy as np
import pytest
import torch
from conftest import prepared_for

from whisper_finetune.model import loading
from whisper_finetune.decode.options import DecodingOptions, validate_options
from whisper_finetune.decode.backends import make_decoder
from whisper_finetune.errors import UserError
from whisper_finetune.audio import AudioContext
from whisper_finetune.data.features import (FEATURE_COLUMN, LABEL_COLUMN, LENGTH_COLUMN, CONTEXT_FRAMES,
                                            DataCollatorSpeechSeq2SeqWithPadding, full_context_step)
from whisper_finetune.testing import synthetic_speech


@pytest.mark.parametrize("seconds, frames", [(0.3, 200), (2.0, 200), (2.01, 400), (3.4, 400), (29.9, 3000),
                                             (31.0, 3000)])
def test_bucket_frames(seconds, frames):
    assert AudioContext(2.0).frames(seconds) == frames


def test_full_length_path_is_transformers_own_bit_for_bit(sharp_model_dir):
    model = loading.load_model(sharp_model_dir)
    processor = loading.load_processor(sharp_model_dir)
    audio = [synthetic_speech(1.5 + i, seed=i) for i in range(2)]
    features = torch.from_numpy(processor.feature_extractor(audio, sampling_rate=16000,
                                                            return_tensors="np").input_features)  # (2, 80, 3000)
    with torch.inference_mode():
        theirs = model.model.encoder(features).last_hidden_state
        loading.enable_dynamic_audio_context(model)
        ours = model.model.encoder(features).last_hidden_state
        short = model.model.encoder(features[:, :, :400]).last_hidden_state
    assert type(model.model.encoder).__name__ == "WhisperEncoder"  # hooks, not a class of our own
    assert torch.equal(ours, theirs)  # (2, 1500, d_model), same bits
    assert short.shape == (2, 200, theirs.shape[-1])
    # Attention sees the whole input, so a shorter context changes every frame: it is not a crop of the 30 s run.
    assert not torch.allclose(short, theirs[:, :200], atol=1e-4)
    assert model.model.encoder.embed_positions.num_embeddings == 1500  # restored after the short call


def _items(lengths, labels):
    return [{FEATURE_COLUMN: np.ones((80, 3000), np.float16), LABEL_COLUMN: np.array(label), LENGTH_COLUMN: seconds}
            for seconds, label in zip(lengths, labels)]


def test_collator_gives_each_batch_its_bucket_and_a_share_of_steps_keeps_30_s():
    labels = [[50258, 10 + i, 11, 50257] for i in range(2)]
    batch = DataCollatorSpeechSeq2SeqWithPadding(50258, AudioContext(2.0))(_items([1.2, 3.1], labels))
    assert batch[FEATURE_COLUMN].shape == (2, 80, 3000) and batch[CONTEXT_FRAMES] == 400  # the trainer cuts
    plain = DataCollatorSpeechSeq2SeqWithPadding(50258)(_items([1.2, 3.1], labels))
    assert plain[FEATURE_COLUMN].shape == (2, 80, 3000) and CONTEXT_FRAMES not in plain
    # The 30 s share is decided by the optimizer step: stable for one step, near the ratio over many.
    chosen = [full_context_step(step, 0.25) for step in range(4000)]
    assert chosen == [full_context_step(step, 0.25) for step in range(4000)]
    assert 0.2 < np.mean(chosen) < 0.3
    assert not any(full_context_step(step, 0.0) for step in range(100))
    assert all(full_context_step(step, 1.0) for step in range(100))


def test_dynamic_decoding_is_not_for_jax():
    with pytest.raises(UserError, match=r"--audio_context dynamic: needs --backend pytorch or ctranslate2 \(the JAX"):
        validate_options(DecodingOptions(audio_context="dynamic", backend="jax"))
    with pytest.raises(UserError, match=r"--audio_context_bucket_seconds 0: must be more than 0 and at most 30"):
        validate_options(DecodingOptions(audio_context="dynamic", context=AudioContext(0)))


def test_dynamic_decoding_runs_the_encoder_on_the_bucket(sharp_model_dir, tiny_dataset_dir, tmp_path):
    from whisper_finetune.data.loading import load_custom_dataset
    from whisper_finetune.evaluate.evaluation import decode_dataset

    decoder = make_decoder(prepared_for(sharp_model_dir, "hi", max_new_tokens=6, audio_context="dynamic"), "cpu")
    seen = []
    decoder.model.model.encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["input_features"]).shape[-1]),
        with_kwargs=True)
    options = decoder.options
    hyps = decode_dataset(load_custom_dataset(tiny_dataset_dir), decoder, decoder.processor.feature_extractor, 4,
                          context_frames=options.context_frames).hypotheses
    assert len(hyps) == 8 and all(isinstance(h, str) for h in hyps)
    assert seen == [200, 200]  # clips of 1.0-1.7 s: one 2 s bucket, not 3000 frames


def test_ctranslate2_decodes_the_short_context_as_pytorch_does(sharp_model_dir, tmp_path):
    import shutil

    folder = str(tmp_path / "model")
    shutil.copytree(sharp_model_dir, folder)
    processor = loading.load_processor(folder)
    audio = [synthetic_speech(1.0 + 0.4 * i, seed=i) for i in range(4)]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    short = features[:, :, :AudioContext(2.0).frames(2.2)]  # (4, 80, 400)
    torch_texts = make_decoder(prepared_for(folder, "hi", max_new_tokens=8, audio_context="dynamic"), "cpu").decode(short)
    ct2 = make_decoder(prepared_for(folder, "hi", max_new_tokens=8, audio_context="dynamic", backend="ctranslate2",
                                    compute_type="float32"), "cpu")
    assert ct2.decode(short) == torch_texts and len(set(torch_texts)) > 1


@pytest.mark.slow
def test_training_with_dynamic_context_saves_a_plain_whisper(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration, pipeline

    from whisper_finetune.train.config import TrainConfig
    from whisper_finetune.train.run import train

    out = tmp_path / "out"
    summary = train(TrainConfig(model_name=tiny_model_dir, train_datasets=(tiny_dataset_dir,),
                                eval_datasets=(tiny_dataset_dir,), output_dir=str(out), language="hi",
                                train_batchsize=2, eval_batchsize=4, num_steps=4, eval_steps=2, logging_steps=1,
                                generation_max_new_tokens=4, report_to="none", dynamic_audio_context=True,
                                full_context_ratio=0.0))
    assert summary.global_step == 4 and summary.config["dynamic_audio_context"] is True
    config = json.load(open(out / "config.json", encoding="utf-8"))
    assert config["dynamic_audio_context"] == {"bucket_seconds": 2.0, "full_context_ratio": 0.0,
                                               "short_context_updates": "split"}
    # Every step was short (ratio 0), and short steps update the encoder only.
    changed = _changed_parts(tiny_model_dir, out)
    assert changed == {"encoder"}
    plain = WhisperForConditionalGeneration.from_pretrained(str(out))
    assert type(plain.model.encoder).__name__ == "WhisperEncoder"  # nothing of ours is needed to load it
    asr = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    assert isinstance(asr(synthetic_speech(1.0), generate_kwargs={"max_new_tokens": 4})["text"], str)
    assert "dynamic audio context" in open(out / "README.md", encoding="utf-8").read()


def _changed_parts(before_dir, after_dir):
    """Which of encoder/decoder differ (any bit) between two saved models."""
    before, after = loading.load_model(str(before_dir)).state_dict(), loading.load_model(str(after_dir)).state_dict()
    return {name.split(".")[1] for name in before
            if name.startswith("model.") and not torch.equal(before[name], after[name])}


@pytest.mark.slow
@pytest.mark.parametrize("updates, full_context_ratio, changed", [
    ("all", 0.0, {"encoder", "decoder"}),  # short steps train everything
    ("split", 0.0, {"encoder"}),  # short steps train the encoder only ...
    ("split", 1.0, {"decoder"}),  # ... and 30 s steps the decoder only
    ("encoder", 1.0, {"encoder", "decoder"}),  # 30 s steps train everything
])
def test_what_each_kind_of_step_trains(tiny_model_dir, tiny_dataset_dir, tmp_path, updates, full_context_ratio,
                                       changed):
    from whisper_finetune.train.config import TrainConfig
    from whisper_finetune.train.run import train

    out = tmp_path / "out"
    train(TrainConfig(model_name=tiny_model_dir, train_datasets=(tiny_dataset_dir,), eval_datasets=(tiny_dataset_dir,),
                      output_dir=str(out), language="hi", train_batchsize=2, eval_batchsize=4, max_eval_samples=4,
                      num_steps=2, eval_steps=2, generation_max_new_tokens=4, report_to="none",
                      dynamic_audio_context=True, full_context_ratio=full_context_ratio,
                      short_context_updates=updates))
    assert _changed_parts(tiny_model_dir, out) == changed
