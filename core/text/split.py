"""Sentence splitter (placeholder, replaced below)."""


def split_sentences(text, language="auto-mix", max_chars=None):
    return [text]
