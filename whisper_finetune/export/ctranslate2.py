"""CTranslate2 export: CTranslate2's own converter (shared with ``--backend ctranslate2``) plus the files
faster-whisper reads, so ``faster_whisper.WhisperModel(folder)`` loads it offline as is."""
import os

from ..decode import ctranslate2_backend

CT2_COPY_FILES = ("tokenizer.json", "preprocessor_config.json", "generation_config.json")


def write_ctranslate2(source_dir, destination, quantization):
    """CTranslate2 conversion (shared with ``--backend ctranslate2``) with the files faster-whisper reads."""
    ctranslate2_backend.convert_to_ct2(source_dir, cache_dir=destination, quantization=quantization,
                                       copy_files=CT2_COPY_FILES)
    stamp = os.path.join(destination, ctranslate2_backend.CT2_STAMP_FILE)
    if os.path.exists(stamp):  # the cache stamp names a temporary path; an export is not a cache
        os.remove(stamp)
    return destination
