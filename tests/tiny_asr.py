"""A tiny random multilingual Whisper in faster-whisper's (CTranslate2) folder format.

Built offline: a random `WhisperForConditionalGeneration` with the real multilingual vocabulary
layout (51865 ids), a byte-level `tokenizer.json` with Whisper's special tokens at their real ids,
converted with ctranslate2's `TransformersConverter`. faster-whisper loads the folder unchanged;
the text it produces is random.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

# Real multilingual Whisper (v1/v2) id layout: 50257 text tokens, then the special tokens.
N_TEXT = 50257
EOT = 50257
VOCAB = 51865  # EOT + SOT + 99 languages + 6 task/control tokens + 1501 timestamps
LANGUAGES = (  # Whisper's language-token order (ids 50259..50357)
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su"
).split()
CONTROL = ("translate", "transcribe", "startoflm", "startofprev", "nocaptions", "notimestamps")


def special_tokens() -> list[str]:
    """Special tokens in id order starting at EOT (50257)."""
    tokens = ["<|endoftext|>", "<|startoftranscript|>"]
    tokens += [f"<|{lang}|>" for lang in LANGUAGES]
    tokens += [f"<|{name}|>" for name in CONTROL]
    tokens += [f"<|{i * 0.02:.2f}|>" for i in range(VOCAB - EOT - len(tokens))]
    assert len(tokens) == VOCAB - EOT
    return tokens


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tokenizer_json() -> dict:
    """A byte-level BPE tokenizer.json: 256 byte tokens, filler word tokens, Whisper specials."""
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(_byte_alphabet())}
    space = _byte_alphabet()[ord(" ")]
    i = 0
    while len(vocab) < N_TEXT - 1:  # filler "words" (never produced by merges; decode fine)
        vocab.setdefault(f"{space}w{i}", len(vocab))
        i += 1
    # The multilingual vocabulary's last text token (50256) is the empty string; CTranslate2
    # tells multilingual models apart by its presence.
    vocab[""] = N_TEXT - 1
    specials = special_tokens()
    added = [
        {"id": EOT + k, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for k, tok in enumerate(specials)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": []},
    }


PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "WhisperProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def _random_whisper(seed: int):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=448,
        pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT, decoder_start_token_id=EOT + 1,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Make the end token likely after a few text tokens (its row points at the final norm's
        # bias), so decoding a random model stops quickly instead of running to 448 tokens.
        norm = model.model.decoder.layer_norm
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape))
        emb = model.model.decoder.embed_tokens.weight  # tied with proj_out
        spread = float(emb[:N_TEXT].norm(dim=1).mean()) * math.sqrt(norm.bias.numel() * 1.25)
        emb[EOT] += 3.0 * spread / math.sqrt(norm.bias.numel()) * norm.bias / norm.bias.pow(2).sum()
    gen = model.generation_config
    gen.lang_to_id = {f"<|{lang}|>": EOT + 2 + k for k, lang in enumerate(LANGUAGES)}
    gen.task_to_id = {"translate": EOT + 2 + len(LANGUAGES), "transcribe": EOT + 3 + len(LANGUAGES)}
    gen.suppress_tokens = []
    gen.begin_suppress_tokens = [220, EOT]
    gen.alignment_heads = [[0, 0], [0, 1]]
    gen.no_timestamps_token_id = EOT + 2 + len(LANGUAGES) + len(CONTROL) - 1
    return model


def make_asr_folder(folder: Path, seed: int = 5) -> Path:
    """Write a faster-whisper model folder (model.bin, config.json, vocabulary, tokenizer.json,
    preprocessor_config.json) holding a tiny random multilingual Whisper."""
    from ctranslate2.converters import TransformersConverter

    folder = Path(folder)
    tokenizer = json.dumps(build_tokenizer_json(), ensure_ascii=False)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        _random_whisper(seed).save_pretrained(hf)
        (hf / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
        (hf / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 448})
        )
        (hf / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))
        TransformersConverter(
            str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]
        ).convert(str(folder), force=True)
    # transformers does not keep lang_to_id in the saved generation config, so the converter
    # finds no language ids; write them the way a converted multilingual model has them.
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["lang_ids"] = [EOT + 2 + k for k in range(len(LANGUAGES))]
    config_path.write_text(json.dumps(config, indent=1))
    return folder
