"""``camplug describe``: what camplug finds in a model (head, or the layer of the gradient
methods)."""

from __future__ import annotations

import argparse

from .options import add_model_options, load_model


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``describe``."""
    describe = commands.add_parser("describe", help="show the head camplug finds in a model")
    add_model_options(describe)
    describe.set_defaults(run=cmd_describe)


def cmd_describe(args: argparse.Namespace) -> int:
    import camplug

    model = load_model(args)
    camplug.describe(model, layer=args.layer, output=args.output)
    return 0
