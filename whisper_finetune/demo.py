"""A local side-by-side demo: upload or record audio, see one or two models' transcripts, timings, segments.

A Gradio page served on 127.0.0.1 (this machine only) unless asked otherwise; ``share`` (a public
Gradio link) is never on by default. Models are local folders or Hub ids and are loaded once, before
the page is served. The page loads no fonts or scripts from the internet, so it works offline.
"""
import logging
import os
import time
from dataclasses import dataclass
from typing import List

from .model import loading, sources
from .audio import SAMPLE_RATE, load_audio
from .decode.config import DEFAULT_SEARCH_SECONDS, DemoConfig, check_demo_values
from .decode.options import DecodingOptions
from .decode.backends import make_decoder
from .errors import UserError
from .extras import require
from .decode.transcription import Segment, transcribe_array

logger = logging.getLogger(__name__)

# Gradio reports usage and checks for updates over the network unless told not to; the demo is local.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@dataclass
class DemoModel:
    """A model loaded for the demo: its name, prepared processor/options and decoder."""

    name: str
    prepared: loading.PreparedModel
    decoder: object
    load_seconds: float


@dataclass
class DemoTranscript:
    """One model's answer for one clip."""

    model: str
    text: str
    segments: List[Segment]
    audio_seconds: float
    decode_seconds: float

    @property
    def rtfx(self):
        return self.audio_seconds / self.decode_seconds if self.decode_seconds else float("inf")


def load_model(source: sources.ModelSource, language, device, decoding: DecodingOptions) -> DemoModel:
    """Load one model for the demo: the single place the demo calls the loading API."""
    start = time.perf_counter()
    prepared = loading.prepare_source(source, language, decoding)
    decoder = make_decoder(prepared, loading.decoding_device(device, decoding.backend))
    return DemoModel(source.name, prepared, decoder, time.perf_counter() - start)


def load_models(config: DemoConfig) -> List[DemoModel]:
    """The first model (``--hf_model`` or ``--ckpt_dir``) and the optional ``--compare_model``."""
    located = [sources.resolve_model_source(config.is_public_repo, config.hf_model, config.ckpt_dir,
                                            config.temp_ckpt_folder)]
    if config.compare_model:
        located.append(sources.resolve_model(config.compare_model, "compare_model"))
    models = [load_model(s, config.language, config.device, config.decoding) for s in located]
    if len(models) == 2 and models[0].name == models[1].name:
        models[1].name += " (compare)"  # the two columns must be told apart
    for model in models:
        logger.info("loaded %s in %.1f s (language %s)", model.name, model.load_seconds, language_label(model))
    return models


def language_label(model: DemoModel):
    """The language a model decodes in, as the page shows it."""
    if model.prepared.english_only:
        return "en (English-only model)"
    return model.prepared.options.language or "detected per clip"


def transcribe_clip(model: DemoModel, audio, search_seconds=DEFAULT_SEARCH_SECONDS) -> DemoTranscript:
    """Transcribe a mono 16 kHz float array of any length with one model, timing the decoding."""
    start = time.perf_counter()
    options = model.prepared.options
    text, segments = transcribe_array(audio, model.decoder, model.prepared.processor.feature_extractor,
                                      search_seconds, options.batch_size, options.context_frames)
    return DemoTranscript(model.name, text, segments, len(audio) / SAMPLE_RATE, time.perf_counter() - start)


def _timing_text(result: DemoTranscript):
    return (f"{result.audio_seconds:.1f} s of audio decoded in {result.decode_seconds:.2f} s "
            f"(RTFx {result.rtfx:.1f}), {len(result.segments)} segment(s)")


def build_app(models: List[DemoModel], search_seconds=DEFAULT_SEARCH_SECONDS):
    """The Gradio page: an audio input (upload or microphone) and one column per model."""
    gr = require("gradio", "demo.py")

    def run(path):
        if not path:
            return [value for _ in models for value in ("", "", [])]
        try:
            audio = load_audio(path)  # (samples,) mono float32, 16 kHz
        except UserError as exc:
            raise gr.Error(str(exc))
        if len(audio) == 0:
            raise gr.Error("the file holds no audio samples")
        outputs = []
        for model in models:
            result = transcribe_clip(model, audio, search_seconds)
            logger.info("%s: %s", model.name, _timing_text(result))
            outputs += [result.text, _timing_text(result),
                        [[s.start, s.end, s.text] for s in result.segments]]
        return outputs

    with gr.Blocks(title="Whisper demo", analytics_enabled=False) as app:
        gr.Markdown("## Whisper demo\nUpload a file or record yourself; every model below transcribes it.")
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio", elem_id="audio-input")
        button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        outputs = []
        with gr.Row():
            for k, model in enumerate(models):
                with gr.Column():
                    gr.Markdown(f"### {model.name}\nlanguage: {language_label(model)}, "
                                f"beams: {model.prepared.options.num_beams}")
                    outputs.append(gr.Textbox(label="transcript", lines=4, elem_id=f"transcript-{k}"))
                    outputs.append(gr.Textbox(label="timing", elem_id=f"timing-{k}"))
                    outputs.append(gr.Dataframe(headers=["start", "end", "text"], label="segments (seconds)",
                                                elem_id=f"segments-{k}", wrap=True,
                                                column_widths=["14%", "14%", "72%"]))
        audio.change(run, inputs=audio, outputs=outputs)
        button.click(run, inputs=audio, outputs=outputs)
    return app


def offline_theme():
    """Gradio's default theme with system fonts: the default fetches its fonts from Google."""
    gr = require("gradio", "demo.py")

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def serve(config: DemoConfig):
    """Load the models, then serve the page until interrupted."""
    check_demo_values(config)
    models = load_models(config)
    app = build_app(models, config.search_seconds)
    _, local_url, share_url = app.launch(server_name=config.server_name, server_port=config.server_port,
                                         share=config.share, inbrowser=False, quiet=True, prevent_thread_lock=True,
                                         theme=offline_theme(), ssr_mode=False)
    logger.info("demo running on %s%s (Ctrl-C stops it)", local_url, f" and {share_url}" if share_url else "")
    try:
        app.block_thread()
    finally:
        app.close()
