"""Optional dependencies: which pip extra brings each, and a one-line error when one is missing.

``pip install whisper-finetune`` gets a lean core (fine-tuning, evaluation with PyTorch or CTranslate2,
transcription, embeddings); the extras in pyproject.toml add the rest. ``pip install -r requirements.txt``
installs everything.
"""
import importlib

from .errors import UserError

# top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "jax": "jax",
    "faster_whisper": "export",
    "pywhispercpp": "export",
    "gguf": "export",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "silero_vad": "vad",
    "gradio": "demo",
    "lhotse": "lhotse",
}


class MissingExtra(UserError):
    """A feature's optional package is not installed."""


def require(module, purpose):
    """``import module`` for ``purpose`` (e.g. "--vad True"), or a one-line :class:`MissingExtra` naming the
    extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own imports failed: a real bug, keep the traceback
        extra = EXTRA_OF[top]
        raise MissingExtra(f"{purpose} needs the package {top}, which is not installed: "
                           f"pip install 'whisper-finetune[{extra}]' (or pip install -r requirements.txt)") from exc
