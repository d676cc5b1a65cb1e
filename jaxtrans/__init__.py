"""jaxtrans: turn an English chat LLM into a chat model in another language, in JAX."""

from jaxtrans.errors import JaxtransError
from jaxtrans.pretrained import Pretrained, load_pretrained

__all__ = ["JaxtransError", "Pretrained", "load_pretrained"]
__version__ = "0.1.0"
