"""Samba-ASR: speech to text with a Mamba encoder and a Mamba decoder (samba-asr.md).

So far this package holds the Mamba mixers (``mamba.py``) and their configuration; the encoder,
decoder, recognizer and training recipes arrive with the rest of the speech issue.
"""
