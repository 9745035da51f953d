"""Datasets, vocabularies, preprocessing and synthetic corpora (no Lightning, no recognizers)."""
