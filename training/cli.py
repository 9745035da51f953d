"""``recognizers fit | validate | test | predict``: LightningCLI over the project's modules (platform.md §5).

Any LightningModule / LightningDataModule class may be named in the YAML (``class_path``); a short
name such as ``SambaASRModule``, ``PosFormerModule`` or ``HTRModule`` resolves because this module
imports the project's classes. The DataModule's ``vocab_size`` (its tokenizer, trained from the training
transcripts, the fixed CROHME vocabulary, or the characters of the IAM training labels) is linked into
the model at instantiation, so a recipe never states it twice. ``predict`` (``training/predict.py``)
pairs ``FilesDataModule`` with ``RecognitionModule``, neither of which has a ``vocab_size``: jsonargparse
skips an instantiation link whose source object lacks the attribute (``tests/test_predict.py`` runs
that path).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # jsonargparse 4.5x, platform.md §5

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from .htr_data import HandwritingDataModule  # noqa: F401  (registers the short class names)
from .htr_module import HTRModule  # noqa: F401
from .math_data import MathDataModule  # noqa: F401
from .math_module import PosFormerModule  # noqa: F401
from .metahtr_data import EpisodeDataModule  # noqa: F401
from .metahtr_module import MetaHTRModule  # noqa: F401
from .predict import FilesDataModule, JsonlPredictionWriter, RecognitionModule  # noqa: F401
from .speech_data import SpeechDataModule  # noqa: F401
from .speech_module import SambaASRModule  # noqa: F401
from .writer_codes_data import WriterCodeDataModule  # noqa: F401
from .writer_codes_module import WriterCodeModule  # noqa: F401

__all__ = ["RecognizersCLI", "main"]


class RecognizersCLI(LightningCLI):
    """LightningCLI with the project's argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Run a LightningCLI verb; ``args`` None reads ``sys.argv`` (the console script), a list is for
    tests and for ``recognizers.cli`` (which passes the arguments after the verb included)."""
    verb = (sys.argv[1:] if args is None else args)[:1]
    # predict runs without a logger, so its log_dir is the working directory: a config.yaml saved there
    # would litter wherever the command runs (the predictions carry their own paths and records)
    save_config = None if verb == ["predict"] else SaveConfigCallback
    RecognizersCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=save_config, save_config_kwargs={"overwrite": True}, args=args,
        auto_configure_optimizers=False,
    )
