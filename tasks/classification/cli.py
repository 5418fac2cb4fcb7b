"""The command line: ``python -m tasks.classification {fit,validate,test,predict} --config <yaml>``.

A ``LightningCLI`` over :class:`ImageClassifier` and any :class:`ClassificationDataModule` (the YAML's
``data: {class_path: ..., init_args: ...}``). The data module's ``num_classes`` is passed to the model, and the
resolved configuration of every run is saved as ``config.yaml`` in the run's log folder.
"""
from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningCLI

from .data import ClassificationDataModule
from .module import ImageClassifier


class ClassificationCLI(LightningCLI):
    """``LightningCLI`` with the data module's class count linked into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: ArgsType = None, run: bool = True) -> ClassificationCLI:
    """Run the CLI on ``args`` (``sys.argv[1:]`` when ``None``); ``run=False`` only builds the objects."""
    return ClassificationCLI(
        ImageClassifier,
        ClassificationDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,  # the model's optimizer/lr_scheduler settings own the optimization
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
