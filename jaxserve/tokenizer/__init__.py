"""Text <-> token ids: `tokenizer.json`, SentencePiece and GGUF vocabularies behind one `Tokenizer` interface,
a streaming detokenizer, and chat templates."""

from jaxserve.tokenizer.base import Tokenizer
from jaxserve.tokenizer.chat_template import TemplateError, render_chat_template
from jaxserve.tokenizer.detokenizer import IncrementalDetokenizer
from jaxserve.tokenizer.gguf_vocab import load_gguf_tokenizer
from jaxserve.tokenizer.hf import HFTokenizer
from jaxserve.tokenizer.loader import load_tokenizer
from jaxserve.tokenizer.spm import SPMTokenizer

__all__ = [
    "HFTokenizer",
    "IncrementalDetokenizer",
    "SPMTokenizer",
    "TemplateError",
    "Tokenizer",
    "load_gguf_tokenizer",
    "load_tokenizer",
    "render_chat_template",
]
