"""recognizers: handwritten math to LaTeX, handwriting to text, speech to text.

The recognizers (PosFormer, writer-adaptive handwriting, Samba-ASR) and their public API
(``recognizers.load(name).recognize(inputs)``) arrive with their own issues; this package currently
holds the command-line entry point. The selective-scan kernels live in the top-level ``kernels``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
