"""The checkpoint's 70-entry phoneme vocabulary and the tokenizer that maps phoneme strings onto it.

The reference encodes its cleaned phoneme string with a Hugging Face BPE tokenizer (`bpe_69.json`)
that has no merges, no normalizer and a `Whitespace` pre-tokenizer. That makes it a plain
character lookup, which is what `encode` does, without the `tokenizers` dependency:

- ids 0..4 are the special tokens `[UNK] [CLS] [SEP] [PAD] [MASK]`; a literal special-token
  string in the input is one token, as HF's added-token matching does;
- ids 5..69 are single characters (`SYMBOLS`); any other character is id 0, one per character;
- Unicode White_Space characters (the pre-tokenizer's `\\s`) produce no token at all. The
  reference then fails an `assert len(ids) == len(langs)`; we drop the language entry as well.
"""
from __future__ import annotations

import re

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
UNK_ID = 0
# ids 5.. in order; `_` (id 16) stands for a word boundary (the cleaned text's spaces).
SYMBOLS = "!#*,-.=?NQ^_`abdefghijklmnopstuvwxyz~æçðŋɑɔəɛɥɪɫɯɸɹɾʃʊʑʒʰˈˌθ…⁼↑→↓"
N_SYMBOLS = len(SPECIAL_TOKENS) + len(SYMBOLS)  # 70
SYMBOL_TO_ID = {s: i + len(SPECIAL_TOKENS) for i, s in enumerate(SYMBOLS)}
ID_TO_SYMBOL = {**{i: t for i, t in enumerate(SPECIAL_TOKENS)}, **{i: s for s, i in SYMBOL_TO_ID.items()}}
SPACE_ID = SYMBOL_TO_ID["_"]

# Model language ids (the checkpoint's language embedding rows). Prompt files use another order.
LANG_IDS = {"en": 0, "zh": 1, "ja": 2}
ID_TO_LANG = {v: k for k, v in LANG_IDS.items()}

# Unicode White_Space, i.e. exactly the characters the HF Whitespace pre-tokenizer drops
# (measured against tokenizers 0.23 over all code points).
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))

assert N_SYMBOLS == 70 and len(SYMBOL_TO_ID) == 65


def encode(phonemes: str, langs: list[int]) -> tuple[list[int], list[int], str]:
    """Map a phoneme string (spaces already replaced by `_`) to token ids.

    Args:
        phonemes: str of length P.
        langs: one model language id per character of `phonemes` (len P).
    Returns:
        (ids, token_langs, kept): ids are ints in 0..69, `token_langs` has one entry per id, and
        `kept` is the phoneme string without the dropped whitespace (special tokens intact).
    """
    if len(phonemes) != len(langs):
        raise ValueError(f"{len(phonemes)} phoneme characters but {len(langs)} language labels")
    ids: list[int] = []
    out_langs: list[int] = []
    kept: list[str] = []
    pos = 0
    # Special tokens are rare (they need upper-case letters in the cleaned text), so scan for them
    # once and look characters up one by one in between.
    for m in _SPECIAL_RE.finditer(phonemes) if "[" in phonemes else ():
        _encode_chars(phonemes, langs, pos, m.start(), ids, out_langs, kept)
        ids.append(SPECIAL_TOKENS.index(m.group(0)))
        out_langs.append(langs[m.start()])
        kept.append(m.group(0))
        pos = m.end()
    _encode_chars(phonemes, langs, pos, len(phonemes), ids, out_langs, kept)
    return ids, out_langs, "".join(kept)


def _encode_chars(text, langs, start, end, ids, out_langs, kept) -> None:
    for i in range(start, end):
        ch = text[i]
        if ch in WHITESPACE:
            continue
        ids.append(SYMBOL_TO_ID.get(ch, UNK_ID))
        out_langs.append(langs[i])
        kept.append(ch)


def decode(ids: list[int]) -> str:
    """Ids -> phoneme string (special tokens spelled out), for debugging and display."""
    return "".join(ID_TO_SYMBOL.get(i, "[UNK]") for i in ids)
