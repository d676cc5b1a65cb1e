"""jaxtrans: turn an English chat LLM into a chat model in another language, in JAX."""

from jaxtrans import platforms

platforms.choose()  # before any backend starts: no plugin start-up noise on machines without its accelerator

from jaxtrans.errors import JaxtransError  # noqa: E402
from jaxtrans.pretrained import Pretrained, load_pretrained  # noqa: E402

__all__ = ["JaxtransError", "Pretrained", "load_pretrained"]
__version__ = "0.1.0"
