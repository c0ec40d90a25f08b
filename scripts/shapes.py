"""Print a registered architecture's output shapes layer by layer, with the formulas.

Usage::

    python scripts/shapes.py DeepCNN
    python scripts/shapes.py ResNN --input-shape 1 28 28
"""

from __future__ import annotations

import argparse
import sys

from lit_cnn.models.modules import get_model_class, list_models
from lit_cnn.models.shapes import format_table, layer_table


def build_parser() -> argparse.ArgumentParser:
    """Returns the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="shapes.py",
        description="Show each layer's output shape, the formula behind it and its parameters.",
    )
    parser.add_argument("name", help=f"architecture: one of {', '.join(list_models())}")
    parser.add_argument(
        "--input-shape",
        nargs=3,
        type=int,
        default=[1, 32, 32],
        metavar=("C", "H", "W"),
        help="shape of one input image (default: 1 32 32)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 on success, 2 for an unknown model or an unusable input shape.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model = get_model_class(args.name)()
        rows = layer_table(model, args.input_shape)
    except ValueError as err:
        # One line, as argparse reports usage errors, rather than a traceback.
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    shape = "×".join(map(str, args.input_shape))
    print(f"{args.name} on input {shape}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
