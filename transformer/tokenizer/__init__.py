"""Text to input_ids and back, every tokenizer of the package in one place:

- hf: a Hugging Face tokenizer.json (the `tokenizers` library): Tokenizer; hf_tokenizer, the
  one place that chooses a model directory's tokenizer; max_input_length (an encoder's limit);
- marian, t5: the SentencePiece models of Marian (source.spm / target.spm + vocab.json) and T5
  (spiece.model) directories that ship no tokenizer.json (the `sentencepiece` package), with
  Hugging Face's semantics: MarianTokenizer, T5Tokenizer;
- llama2c: the tokenizer file of llama2.c's run.c: Llama2cTokenizer, find_tokenizer;
- vocabulary: whitespace tokens of a CTranslate2 directory's vocabularies: VocabularyTokenizer;
- checks: what every tokenizer checks at its boundary (check_text, check_ids, text_list) and
  batch padding (pad_batch).

Every tokenizer has encode(text) -> list of int and decode(ids) -> str; those with a batch
__call__(texts) return (B, T) int64 arrays padded to the longest row."""
from .checks import check_ids, check_text, pad_batch, text_list
from .hf import Tokenizer, hf_tokenizer, max_input_length
from .llama2c import Llama2cTokenizer, find_tokenizer
from .marian import MarianTokenizer
from .t5 import SPIECE_UNDERLINE, WHITE_SPACE, T5Tokenizer, clean_up_tokenization
from .vocabulary import VocabularyTokenizer, read_vocabulary

__all__ = ["Tokenizer", "MarianTokenizer", "T5Tokenizer", "Llama2cTokenizer",
           "VocabularyTokenizer", "hf_tokenizer", "max_input_length", "find_tokenizer",
           "read_vocabulary", "check_text", "check_ids", "text_list", "pad_batch",
           "clean_up_tokenization", "WHITE_SPACE", "SPIECE_UNDERLINE"]
