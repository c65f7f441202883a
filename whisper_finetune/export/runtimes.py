"""The runtimes that decode each export in the parity check, behind one interface, :class:`Runtime`.

A runtime takes whole clips (16 kHz mono float32 waveforms, at most 30 s) and gives one text per clip.
It is not :class:`whisper_finetune.decode.options.Decoder`, which takes log-mel windows: faster-whisper
and whisper.cpp take only waveforms and compute their own log-mels, and that feature code is part of
what the parity check holds to PyTorch. :func:`open_runtime` picks the runtime of an export's format.
"""
import logging
import os
from typing import Dict, List, Protocol, Sequence, Tuple, Type

import numpy as np

from ..audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 30  # Whisper's input window


class Runtime(Protocol):
    """An export loaded in its own runtime: greedy decoding, no timestamps, no temperature fallback.

    Each one is built as ``cls(path, language, english_only, batch_size, max_new_tokens)``: the export at
    ``path``, decoded in ``language`` (English for English-only models), in batches of ``batch_size`` where
    the runtime takes batches, at most ``max_new_tokens`` tokens per clip.
    """

    name: str  # how the parity table names it
    requires: Tuple[str, str]  # (module to import, what to pip install)

    def transcribe(self, audios: Sequence[np.ndarray]) -> List[str]:
        """One plain text (stripped) per clip."""


class FasterWhisperRuntime(Runtime):
    """faster-whisper on the CTranslate2 export: greedy, no timestamps, no temperature fallback, no VAD.

    Each clip is padded with silence to Whisper's 30 s window first, as transformers and openai-whisper
    do before computing log-mels; faster-whisper on its own pads the log-mel frames with zeros instead,
    a different input for the last frames that changes some transcripts of short clips.
    """

    name = "faster-whisper"
    requires = ("faster_whisper", "faster-whisper")

    def __init__(self, path, language, english_only, batch_size, max_new_tokens):
        import torch
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every clip's duration at INFO
        # "default": the stored type where the CPU computes it (float32, int8), else the nearest it does
        # (float16 -> float32, int8_float16 -> int8_float32), as CTranslate2 recommends
        self.model = WhisperModel(path, device="cpu", compute_type="default", cpu_threads=torch.get_num_threads())
        self.language = "en" if english_only else language
        # CTranslate2's Whisper generates at most half of max_length (like openai-whisper's sample_len), and
        # faster-whisper asks for max_length = prompt + max_new_tokens: so prompt + this = 2 x max_new_tokens,
        # as ctranslate2_backend.CT2Decoder does, allows the evaluator's max_new_tokens
        prompt = 2 if english_only else 4  # <|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>
        self.max_new_tokens = 2 * max_new_tokens - prompt

    def transcribe(self, audios):
        window = WINDOW_SECONDS * SAMPLE_RATE
        texts = []
        for audio in audios:
            padded = np.pad(audio, (0, max(0, window - len(audio)))) if len(audio) < window else audio
            segments, _ = self.model.transcribe(
                padded, language=self.language, beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
                condition_on_previous_text=False, vad_filter=False, max_new_tokens=self.max_new_tokens,
                # no heuristics that drop or re-decode a window (the evaluator has none)
                no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None)
            texts.append("".join(s.text for s in segments).strip())
        return texts


class WhisperCppRuntime(Runtime):
    """whisper.cpp (pywhispercpp) on the ggml file: greedy (best_of 1), no timestamps, no temperature
    fallback, no context carried between clips, the language given; one clip at a time.

    Two settings differ from whisper.cpp's defaults so that it decodes what our PyTorch decoding does
    (measured on espeak_en/eval, 80 clips, stock tiny.en, 2026-12-06: whisper.cpp's defaults gave 10
    transcripts unlike PyTorch's, WER +0.0118; these two settings, 3, WER +0.0065):

    * ``suppress_nst``: transformers applies the generation config's ``suppress_tokens`` (openai-whisper's
      non-speech symbols, such as quotes and brackets) at every step; whisper.cpp suppresses the same list
      only when asked;
    * ``flash_attn`` off: whisper.cpp's flash-attention kernel (on by default since 1.8) moved 6 clips on its
      own; the plain attention path is closer to PyTorch's float32 attention.

    What remains is whisper.cpp's activation, not the file: its MLPs use ggml's tanh approximation of GELU
    where Whisper has the exact (erf) GELU. PyTorch with the tanh GELU writes whisper.cpp's 80 transcripts
    word for word (3 differ from the exact GELU's); no setting of whisper.cpp 1.8 changes it. Our ggml file
    holds the same tensors, bit for bit, as whisper.cpp's own converter writes.
    """

    name = "whisper.cpp"
    requires = ("pywhispercpp", "pywhispercpp")

    def __init__(self, path, language, english_only, batch_size, max_new_tokens):
        import torch
        from pywhispercpp.model import Model

        # pywhispercpp logs every clip ("Transcribing ...", "Inference time") at INFO
        logging.getLogger("pywhispercpp").setLevel(logging.WARNING)
        self.model = Model(path, redirect_whispercpp_logs_to=None, n_threads=torch.get_num_threads(),
                           language="en" if english_only else language, no_timestamps=True, single_segment=True,
                           print_progress=False, print_realtime=False, no_context=True, temperature=0.0,
                           temperature_inc=0.0, greedy={"best_of": 1}, translate=False, max_tokens=max_new_tokens,
                           suppress_nst=True, context_params={"flash_attn": False})

    def transcribe(self, audios):
        return ["".join(s.text for s in self.model.transcribe(audio)).strip() for audio in audios]


class OnnxRuntime(Runtime):
    """onnxruntime on the ONNX export (:mod:`.onnx`): greedy search in numpy over the encoder and decoder
    sessions, batched like the reference, with what transformers' ``generate`` does in our PyTorch decoding:
    the prompt ``<|startoftranscript|>[<|lang|><|transcribe|>]<|notimestamps|>``, the generation config's
    ``suppress_tokens`` at every step and ``begin_suppress_tokens`` at the first, a finished clip padded with
    end-of-text, at most ``max_new_tokens`` tokens. Features are the folder's own feature extractor's (30 s)."""

    name = "onnxruntime"
    requires = ("onnxruntime", "onnxruntime")

    def __init__(self, path, language, english_only, batch_size, max_new_tokens):
        import onnxruntime
        import torch
        from transformers import GenerationConfig

        from ..model import loading
        from .onnx import DECODER_FILE, ENCODER_FILE

        self.processor = loading.load_processor(path)
        generation = GenerationConfig.from_pretrained(path)
        self.prompt = loading.decoder_prompt_ids(self.processor.tokenizer, None if english_only else language,
                                                 "transcribe", no_timestamps=True, english_only=english_only)
        self.eos = generation.eos_token_id
        self.suppress = list(generation.suppress_tokens or [])
        self.begin_suppress = list(generation.begin_suppress_tokens or [])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only: it warns about nodes it leaves on the CPU provider
        providers = ["CPUExecutionProvider"]
        self.encoder = onnxruntime.InferenceSession(os.path.join(path, ENCODER_FILE), options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(os.path.join(path, DECODER_FILE), options, providers=providers)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def transcribe(self, audios):
        texts = []
        for start in range(0, len(audios), self.batch_size):
            batch = audios[start:start + self.batch_size]
            features = self.processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE,
                                                        return_tensors="np").input_features
            tokens = self.generate(features.astype(np.float32))
            texts += [t.strip() for t in self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return texts

    def generate(self, features):
        """Greedy token ids (prompt excluded) for a batch of log-mel windows ``features`` (B, n_mels, frames)."""
        cross_key, cross_value = self.encoder.run(None, {"input_features": features})
        layers, batch, heads, _, head_dim = cross_key.shape
        past_key = past_value = np.zeros((layers, batch, heads, 0, head_dim), dtype=np.float32)
        ids = np.tile(np.asarray(self.prompt, dtype=np.int64), (batch, 1))
        generated = np.empty((batch, 0), dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        for step in range(self.max_new_tokens):
            logits, past_key, past_value = self.decoder.run(None, {
                "input_ids": ids, "cross_key": cross_key, "cross_value": cross_value,
                "past_key": past_key, "past_value": past_value})
            scores = logits[:, -1, :]
            scores[:, self.suppress] = -np.inf
            if step == 0:
                scores[:, self.begin_suppress] = -np.inf
            token = np.where(done, self.eos, scores.argmax(axis=-1))
            generated = np.concatenate([generated, token[:, None]], axis=1)
            done |= token == self.eos
            if done.all():
                break
            ids = token[:, None]
        return generated


RUNTIMES: Dict[str, Type[Runtime]] = {"ctranslate2": FasterWhisperRuntime, "ggml": WhisperCppRuntime,
                                      "onnx": OnnxRuntime}


def open_runtime(target, path, language, english_only, batch_size, max_new_tokens) -> Runtime:
    """The runtime of ``target``'s format with the export at ``path`` loaded (arguments as :class:`Runtime`)."""
    return RUNTIMES[target.format](path, language, english_only, batch_size, max_new_tokens)
