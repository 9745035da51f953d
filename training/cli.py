"""``recognizers fit | validate | test | predict``: LightningCLI over the project's modules (platform.md §5).

Any LightningModule / LightningDataModule class may be named in the YAML (``class_path``); a short
name such as ``SambaASRModule`` or ``PosFormerModule`` resolves because this module imports the
project's classes. The DataModule's ``vocab_size`` (its tokenizer, trained from the training
transcripts, or the fixed CROHME vocabulary) is linked into the model at instantiation, so a recipe
never states it twice.
"""

from __future__ import annotations

import os

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # jsonargparse 4.5x, platform.md §5

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .math_data import MathDataModule  # noqa: F401  (registers the short class names)
from .math_module import PosFormerModule  # noqa: F401
from .speech_data import SpeechDataModule  # noqa: F401
from .speech_module import SambaASRModule  # noqa: F401

__all__ = ["RecognizersCLI", "main"]


class RecognizersCLI(LightningCLI):
    """LightningCLI with the project's argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Run a LightningCLI verb; ``args`` None reads ``sys.argv`` (the console script), a list is for
    tests and for ``recognizers.cli`` (which passes the arguments after the verb included)."""
    RecognizersCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, args=args, auto_configure_optimizers=False,
    )
