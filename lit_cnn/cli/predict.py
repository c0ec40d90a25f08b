"""The ``predict.py`` command line: a finished run's fold ensemble on images and arrays, and
its export to ONNX or TorchScript.

    python scripts/predict.py RUN_DIR INPUT... [--fold I] [--out FILE.csv] [--batch_size N]
    python scripts/predict.py RUN_DIR --export onnx model.onnx

Every option, the run directory and every input are checked before anything is predicted:
a bad one is one line on stderr and exit status 2. Nothing is written until everything has
succeeded, and then atomically; ``--out`` and the export's file never replace a file.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import torch

from lit_cnn.cli.plumbing import fail
from lit_cnn.data.loading import DataError
from lit_cnn.errors import UsageError
from lit_cnn.models.nets import NUM_CLASSES
from lit_cnn.predict.ensemble import Run, RunDirError, ensemble_of, open_run, predict_batches
from lit_cnn.predict.export import FORMATS, TOLERANCE, ExportError, MissingTools, check_tools

PROG = "predict.py"
#: Decoding threads running ahead of the model (docs/predict.md has the measurement).
DEFAULT_WORKERS = 1
HEADER = ["source", "index", "prediction", "confidence", *(f"p{i}" for i in range(NUM_CLASSES))]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised, so that they end in one line like every other."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}; expected at least 1")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Predict digits with a finished K-fold run's fold ensemble, or export it.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a K-fold run directory")
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="*",
        help="image files, directories of them (or an IDX folder), .npy/.npz arrays, data "
        "files --data.path reads (pickles, gzipped or not; Keras' .npz): their test images",
    )
    parser.add_argument(
        "--fold", type=int, metavar="I", help="predict with this fold's model alone"
    )
    parser.add_argument("--out", metavar="FILE.csv", help="write the CSV here (default: stdout)")
    parser.add_argument(
        "--batch_size", type=_positive, default=256, metavar="N", help="default: 256"
    )
    parser.add_argument(
        "--export",
        nargs=2,
        metavar=("FORMAT", "OUT"),
        help="write the model as FORMAT (onnx or torchscript) to OUT, checked against PyTorch",
    )
    parser.add_argument(
        "--decode_workers",
        type=int,
        metavar="N",
        default=DEFAULT_WORKERS,
        help=f"threads decoding images ahead of the model; 0: none (default: {DEFAULT_WORKERS})",
    )
    return parser


def _new_file(option: str, name: str) -> Path:
    path = Path(name)
    if path.exists():
        raise UsageError(f"{option} {name}: exists; {PROG} never overwrites a file")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {name}: no such directory {path.parent}")
    return path


def _check(args: argparse.Namespace) -> tuple[Path | None, tuple[str, Path] | None]:
    if not args.inputs and not args.export:
        raise UsageError("give INPUT files to predict, or --export FORMAT OUT")
    if args.out and not args.inputs:
        raise UsageError("--out: there is no INPUT to predict")
    if args.decode_workers < 0:
        raise UsageError(f"--decode_workers: invalid value {args.decode_workers}; expected >= 0")
    out = _new_file("--out", args.out) if args.out else None
    export = None
    if args.export:
        fmt, name = args.export
        if fmt not in FORMATS:
            raise UsageError(f"--export: invalid format {fmt!r}; expected onnx or torchscript")
        check_tools(fmt)
        export = (fmt, _new_file("--export", name))
        if out is not None and out.resolve() == export[1].resolve():
            raise UsageError(f"--out and --export name the same file {name}")
    return out, export


def _csv(probs: torch.Tensor, rows: list[tuple[str, int]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    confidence, prediction = probs.max(dim=1)
    for (source, index), p, c, values in zip(
        rows, prediction.tolist(), confidence.tolist(), probs.tolist(), strict=True
    ):
        writer.writerow([source, index, p, f"{c:.6f}", *(f"{v:.6f}" for v in values)])
    return text.getvalue()


def write_new(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary sibling, then links it to ``path``: all or nothing.

    Raises:
        FileExistsError: ``path`` appeared meanwhile; it is left as it is.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        # A hard link, unlike a rename, fails on an existing file instead of replacing it.
        os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _export(model: torch.nn.Module, run: Run, fmt: str, batch_size: int) -> tuple[bytes, str]:
    from lit_cnn.predict.export import export, largest_difference, runner

    data = export(model, fmt)
    x, _ = run.test_inputs()
    worst = largest_difference(model, runner(data, fmt), x, batch_size)
    what = f"{fmt}: largest difference from PyTorch {worst:.3g} on the run's {len(x)} test images"
    if not worst <= TOLERANCE:  # NaN fails too
        raise ExportError(f"{what}, above {TOLERANCE:g}; nothing written")
    return data, what


def main(argv: list[str] | None = None) -> int:
    """Parses the options, predicts and exports; returns the exit status.

    Exit status: 0 done; 1 the exported model disagrees with PyTorch; 2 a bad option, run
    directory or input (one line on stderr, nothing written).

    Args:
        argv: Command-line arguments; ``None`` takes ``sys.argv[1:]``.
    """
    from lit_cnn.predict.inputs import collect, decoded_batches

    try:
        # Intermixed: inputs may follow options (RUN_DIR a.png --out p.csv b.png).
        args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
        out, export = _check(args)
        run = open_run(args.run_dir)
        model = ensemble_of(run, args.fold)
        sources = collect(args.inputs)
        # The run's own data: its scale for arrays, its test set for the export's check.
        needs_data = export is not None or any(s.kind == "array" for s in sources)
        scale = run.scale if needs_data else None
        batches = decoded_batches(sources, args.batch_size, scale, args.decode_workers)
        probs, rows = predict_batches(model, batches)
    except (UsageError, RunDirError, DataError, MissingTools) as err:
        return fail(PROG, str(err))
    info = sys.stdout if out is not None or not sources else sys.stderr
    data = b""
    if export is not None:
        try:
            data, report = _export(model, run, export[0], args.batch_size)
        except ExportError as err:  # the export disagrees with PyTorch
            fail(PROG, str(err))
            return 1
    text = _csv(probs, rows) if sources else ""
    written: list[Path] = []
    try:
        for path, content in ((out, text.encode()), (export and export[1], data)):
            if path is not None:
                write_new(path, content)
                written.append(path)
    except FileExistsError as err:  # made by someone else since the check
        for path in written:
            path.unlink()  # ours, a moment old: a clash leaves neither file
        clash = err.filename2 or err.filename
        return fail(PROG, f"{clash}: appeared meanwhile; {PROG} never overwrites a file")
    if export is not None:
        print(f"{report}; wrote {export[1]}", file=info)
    if sources and out is None:
        sys.stdout.write(text)
    elif sources:
        print(f"{len(rows)} predictions written to {out}", file=info)
    return 0
