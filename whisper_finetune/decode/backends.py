"""Pick the decoding backend a prepared model asks for; CTranslate2 and JAX are imported only when asked for."""
import logging


from ..model.loading import PreparedModel
from .ctranslate2_backend import CT2Decoder
from .options import Decoder, validate_options
from .torch_backend import TorchDecoder

logger = logging.getLogger(__name__)

def make_decoder(prepared: PreparedModel, device="cpu", long_form=False) -> Decoder:
    """Load the prepared model for its backend (``prepared.options.backend``) on ``device``; ``long_form``: as
    in :func:`validate_options`."""
    validate_options(prepared.options, long_form)
    backend = prepared.options.backend
    if backend == "pytorch":
        return TorchDecoder(prepared, device)
    if backend == "ctranslate2":
        return CT2Decoder(prepared, device)
    from .jax_backend import JaxDecoder

    return JaxDecoder(prepared, device)
