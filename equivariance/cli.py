"""The ``equivariance`` command line: check a model from the shell.

Three subcommands, each with ``--help``:

- ``equivariance check PKG.MODULE:FACTORY --input-shape 8,1,38,38`` imports
  ``FACTORY`` from ``PKG.MODULE`` (a class or function returning the model,
  or a model instance), builds a random input of that shape (or reads one
  with ``--input FILE``) and prints the report of
  [`check_equivariance`][equivariance.check_equivariance];
- ``equivariance profile PKG.MODULE:FACTORY --input-shape ... --shift 1,0``
  prints the error of every layer
  ([`profile_equivariance`][equivariance.profile_equivariance]);
- ``equivariance demo [--out DIR]`` runs the seed article's demonstration
  ([`run_demo`][equivariance.demo.run_demo]).

The exit code is 0 when the check passes, 1 when it fails and 2 for a usage
error, so the command fits shell scripts and CI jobs. The current directory
is on the import path, as with ``python -m``, so a model defined in
``./mymodels.py`` is found as ``mymodels:build``.

Examples:
    >>> main(["check", "equivariance.models:LeNet", "--input-shape", "2,1,24,24",
    ...       "--layer", "conv4", "--max-shift", "1", "--quiet"])
    0
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, cast

import torch

from equivariance import __version__
from equivariance.check import check_equivariance, check_invariance
from equivariance.errors import InvalidArgument
from equivariance.report import EquivarianceReport

__all__ = ["load_factory", "load_input", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_factory(spec: str, arguments: Mapping[str, Any] | None = None) -> Any:
    """The model named by ``PKG.MODULE:NAME``: ``NAME(**arguments)`` if it is callable, else ``NAME``.

    Args:
        spec: ``PKG.MODULE:NAME``, where ``NAME`` is a class, a function
            returning the model, or a model instance.
        arguments: keyword arguments for the factory (``--arg`` on the
            command line); refused for a model instance.

    Returns:
        The model.

    Raises:
        InvalidArgument: the module cannot be imported, has no such name, or
            the factory raised.

    Examples:
        >>> type(load_factory("equivariance.models:LeNet")).__name__
        'LeNet'
        >>> load_factory("equivariance.models:MLP", {"input_size": 20, "hidden": 4}).fc1.out_features
        4
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument(
            f"the model must be given as PKG.MODULE:FACTORY, found {spec!r}; e.g. equivariance.models:LeNet"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(
            f"cannot import {module_name!r} ({exc}); run from the folder that holds it, or put that "
            "folder on PYTHONPATH, or install its package"
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise InvalidArgument(
            f"module {module_name!r} has no attribute {attribute!r}; name a class, a function or a model "
            "defined in it"
        ) from None
    arguments = dict(arguments or {})
    if isinstance(target, torch.nn.Module) or not callable(target):
        if arguments:
            raise InvalidArgument(
                f"{spec} is a model, not a factory, so it takes no arguments, found --arg "
                f"{', '.join(arguments)}; drop --arg, or name a class or function"
            )
        return target
    try:
        return target(**arguments)
    except Exception as exc:
        given = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        hint = "pass its arguments with --arg NAME=VALUE" if not arguments else "check the --arg values"
        raise InvalidArgument(
            f"calling {spec}({given}) raised {type(exc).__name__}: {exc}; {hint} (or write a small "
            "function in your module that builds the model)"
        ) from exc


def load_input(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an input batch from a file: a tensor (``.pt``), a numpy array (``.npy``) or an image.

    A ``.pt`` or ``.npy`` file must hold one array of shape
    ``(N, C, *spatial)``; it is read without running code
    (``torch.load(weights_only=True)``, ``numpy.load(allow_pickle=False)``).
    An image (``.png``, ``.jpg``, ...; needs Pillow, the ``viz`` extra) becomes
    a batch of one, ``(1, 1, H, W)`` for a grey image and ``(1, 3, H, W)``
    otherwise, with values in ``[0, 1]``.

    Args:
        path: the file.

    Returns:
        The input, a floating-point tensor on the CPU.

    Raises:
        InvalidArgument: the file is missing, of another kind, or not an
            array of at least 3 dims.

    Examples:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.zeros((2, 1, 8, 8), dtype=np.float32))
        >>> load_input(path).shape
        torch.Size([2, 1, 8, 8])
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if not file.is_file():
        raise InvalidArgument(
            f"--input {os.fspath(path)!r}: no such file; give the path of a .pt, .npy or image"
        )
    if suffix == ".pt":
        try:
            value = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InvalidArgument(
                f"--input {file}: torch.load could not read it ({type(exc).__name__}: {exc}); save the "
                "input with torch.save(x, path)"
            ) from None
        x = value
    elif suffix == ".npy":
        import numpy as np

        try:
            x = torch.from_numpy(np.load(file, allow_pickle=False))
        except Exception as exc:
            raise InvalidArgument(
                f"--input {file}: numpy.load could not read it ({type(exc).__name__}: {exc}); save the "
                "input with numpy.save(path, array)"
            ) from None
    elif suffix in IMAGE_SUFFIXES:
        x = _read_image(file)
    else:
        raise InvalidArgument(
            f"--input {file}: expected a .pt, .npy or image file ({', '.join(IMAGE_SUFFIXES)}), found "
            f"{suffix or 'no suffix'!r}"
        )
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(
            f"--input {file}: expected one tensor, found {type(x).__name__}; save the input alone, "
            "torch.save(x, path)"
        )
    if x.dim() < 3:
        raise InvalidArgument(
            f"--input {file}: expected (N, C, *spatial), found shape {tuple(x.shape)}; add the batch and "
            "channel dims, e.g. x[None, None] for one grey image"
        )
    if not x.dtype.is_floating_point:
        x = x.to(torch.float32)
    return x


def _read_image(file: Path) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError:
        raise InvalidArgument(
            f'--input {file}: reading an image needs Pillow; pip install "equivariance[viz]"'
        ) from None
    import numpy as np

    try:
        with Image.open(file) as image:
            grey = image.mode in ("1", "L", "I", "I;16", "F")
            array = np.asarray(image.convert("F" if grey else "RGB"), dtype=np.float32)
    except OSError as exc:
        raise InvalidArgument(f"--input {file}: not an image Pillow can read ({exc})") from None
    scale = 255.0 if array.max(initial=0.0) <= 255.0 else float(array.max())
    tensor = torch.from_numpy(array / scale)
    return tensor[None, None] if grey else tensor.permute(2, 0, 1)[None]


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, found {text!r}; e.g. 5")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}; e.g. 10")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, found {text!r}; e.g. 1e-4")
    return value


def _argument(text: str) -> tuple[str, Any]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, found {text!r}; e.g. num_classes=3")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare word is a string: --arg activation=relu
    return name.strip(), parsed


def _output(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _ints_or_auto(text: str) -> tuple[int, ...] | Literal["auto"]:
    return "auto" if text.strip() == "auto" else _ints(text)


def _batch_size(text: str) -> int | Literal["auto"]:
    if text.strip() == "auto":
        return "auto"
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, found {text!r}")
    return size


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph on its own, keeps the examples' lines, and appends an option's default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = [
            paragraph
            if paragraph.startswith("examples:")
            else super(_Formatter, self)._fill_text(paragraph, width, indent)
            for paragraph in text.split("\n\n")
        ]
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "(default:" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool | list)
            or not action.option_strings
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else "%(default)s"
        return f"{text} (default: {shown})"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


CHECK_EXAMPLES = _examples(
    "equivariance check equivariance.models:LeNet --input-shape 8,1,38,38 --layer conv4 --max-shift 5",
    "equivariance check mymodels:build --arg num_classes=3 --input digit.png --output logits --invariance",
)
PROFILE_EXAMPLES = _examples(
    "equivariance profile mymodels:build --input-shape 2,3,64,64 --shift 1,0",
    "equivariance profile equivariance.models:LeNet --input-shape 2,1,38,38 --border 5 --shift 2,1 "
    "--up-to conv4",
)
DEMO_EXAMPLES = _examples(
    "equivariance demo --fast --out /tmp/demo",
    "equivariance demo --data digits --epochs 10 --out equivariance-demo",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equivariance",
        description="Test, measure and explain the shift equivariance of PyTorch models.",
        epilog=_examples(CHECK_EXAMPLES.splitlines()[1].strip(), "equivariance check --help"),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{check,profile,demo}")
    check = commands.add_parser(
        "check",
        help="check a model's equivariance (or invariance) over many shifts",
        description="Check a model's equivariance (or invariance) over every shift of a box.\n\n"
        "Exit code 0 when the check passes, 1 when it fails, 2 for a usage error.",
        epilog=CHECK_EXAMPLES,
        formatter_class=_Formatter,
    )
    _model_and_input(check)
    _check_options(check)
    profile = commands.add_parser(
        "profile",
        help="the equivariance error of every layer under one shift: where equivariance breaks",
        description="The equivariance error of every layer under one shift: where equivariance breaks.\n\n"
        "Exit code 0 when every layer passes, 1 when one fails, 2 for a usage error.",
        epilog=PROFILE_EXAMPLES,
        formatter_class=_Formatter,
    )
    _model_and_input(profile)
    profile.add_argument("--shift", type=_ints, required=True, help="the input shift, e.g. 1,0")
    profile.add_argument(
        "--up-to", default=None, metavar="NAME", help="stop the forward pass after this submodule, e.g. conv4"
    )
    profile.add_argument("--json", action="store_true", help="print the profile as JSON")
    _demo_options(
        commands.add_parser(
            "demo",
            help="the seed's demonstration: train LeNet, check it and an MLP, draw the pictures",
            description="The seed article's demonstration: train LeNet, check it and an MLP, draw heatmaps "
            "and the animation.\n\nWorks offline (MNIST if cached, else scikit-learn's digits); needs the "
            "viz and data extras. Exit code 0 when LeNet passes and the MLP fails, 1 otherwise, 2 for a "
            "usage error.",
            epilog=DEMO_EXAMPLES,
            formatter_class=_Formatter,
        )
    )
    return parser


def _check_options(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "--max-shift",
        type=_ints,
        default=None,
        help="box half-width, one int or one per dim (default: twice the stride)",
    )
    check.add_argument("--stride", type=_ints_or_auto, default=(1,), help="output subsampling: ints or auto")
    check.add_argument(
        "--margin", type=_ints_or_auto, default=(0,), help="edge samples dropped: ints or auto"
    )
    check.add_argument("--layer", default=None, help="measure this submodule's output, e.g. conv4")
    check.add_argument(
        "--output",
        type=_output,
        default=None,
        metavar="KEY|INDEX",
        help="the tensor to check when the model returns a dict (a key) or a tuple (an index)",
    )
    check.add_argument("--invariance", action="store_true", help="check that the output does not move")
    check.add_argument(
        "--batch-size", type=_batch_size, default=None, help="samples per forward pass, or auto"
    )
    output = check.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--quiet", action="store_true", help="print nothing; the exit code tells")


def _model_and_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="PKG.MODULE:FACTORY, e.g. equivariance.models:LeNet")
    parser.add_argument(
        "--arg",
        dest="arguments",
        type=_argument,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a keyword argument of the factory, repeatable; VALUE is a Python literal or a word, "
        "e.g. --arg num_classes=3",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input-shape",
        type=_ints,
        metavar="SHAPE",
        help="random noise of this shape, e.g. 8,1,38,38 (N, C, *spatial)",
    )
    source.add_argument(
        "--input",
        metavar="FILE",
        help="a real input instead of noise: a .pt tensor or .npy array of shape (N, C, *spatial), "
        "or an image (a batch of one)",
    )
    parser.add_argument(
        "--boundary",
        choices=("zeros", "circular"),
        default="zeros",
        help="what a shift does at the edges: zeros (a canvas) or circular (a torus)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float16", "bfloat16", "float32", "float64"),
        help="the dtype of the model and the input; the default tolerances follow it",
    )
    parser.add_argument(
        "--border", type=_non_negative, default=0, help="zero this many samples at each input edge"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input")
    parser.add_argument(
        "--rtol",
        type=_tolerance,
        default=None,
        help="relative tolerance (default: the dtype's, 1e-4 in float32)",
    )
    parser.add_argument(
        "--atol",
        type=_tolerance,
        default=None,
        help="absolute tolerance, for all-zero references (default: the dtype's, 1e-6 in float32)",
    )


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out", default="equivariance-demo", help="output directory")
    demo.add_argument(
        "--data",
        choices=("auto", "mnist", "digits"),
        default="auto",
        help="training digits: MNIST (cached or downloaded), scikit-learn's digits (offline), or auto "
        "(MNIST if cached, else digits)",
    )
    demo.add_argument("--epochs", type=_positive, default=10, help="training epochs (--fast: 1)")
    demo.add_argument("--max-shift", type=_non_negative, default=5, help="check every shift in [-N, N]^2")
    demo.add_argument("--seed", type=int, default=0, help="seed of the training and the models")
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="train even if --out holds weights saved by an earlier run of the same settings",
    )
    demo.add_argument("--fast", action="store_true", help="a quick smoke run: 400 digits, 1 epoch")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def _one_or_tuple(values: tuple[int, ...] | Literal["auto"]) -> int | tuple[int, ...] | Literal["auto"]:
    if values == "auto":
        return "auto"
    return values[0] if len(values) == 1 else values


def _input(args: argparse.Namespace) -> torch.Tensor:
    if args.input is not None:
        x = load_input(args.input).to(torch.float64)
    else:
        shape = args.input_shape
        if len(shape) < 3:
            raise InvalidArgument(
                f"--input-shape needs (N, C, *spatial), found {','.join(map(str, shape))}; e.g. 8,1,38,38"
            )
        generator = torch.Generator().manual_seed(args.seed)
        x = torch.rand(shape, generator=generator, dtype=torch.float64)
    if args.border:
        if any(2 * args.border >= n for n in x.shape[2:]):
            raise InvalidArgument(
                f"--border {args.border} leaves nothing of an input of spatial shape {tuple(x.shape[2:])}; "
                "pass a border under half of the smallest side"
            )
        inner = tuple(slice(args.border, n - args.border) for n in x.shape[2:])
        key: tuple[Any, ...] = (Ellipsis, *inner)
        canvas = torch.zeros_like(x)
        canvas[key] = x[key]
        x = canvas
    try:
        return x.to(device=args.device, dtype=getattr(torch, args.dtype))
    except (RuntimeError, AssertionError) as exc:
        raise InvalidArgument(f"cannot use --device {args.device}: {exc}") from None


def _model_and_x(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    model = load_factory(args.model, dict(args.arguments))
    x = _input(args)
    if isinstance(model, torch.nn.Module):
        model = model.to(device=x.device, dtype=x.dtype)
    return model, x


def _profile(args: argparse.Namespace) -> int:
    from equivariance.profile import profile_equivariance

    model, x = _model_and_x(args)
    result = profile_equivariance(
        model, x, args.shift, up_to=args.up_to, boundary=args.boundary, rtol=args.rtol, atol=args.atol
    )
    _print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
    return EXIT_PASSED if result.passed else EXIT_FAILED


def _check(args: argparse.Namespace) -> int:
    model, x = _model_and_x(args)
    options: dict[str, Any] = dict(
        max_shift=None if args.max_shift is None else _one_or_tuple(args.max_shift),
        boundary=args.boundary,
        layer=args.layer,
        output=args.output,
        rtol=args.rtol,
        atol=args.atol,
        batch_size=args.batch_size,
    )
    report: EquivarianceReport
    if args.invariance:
        report = check_invariance(model, x, **options)
    else:
        report = check_equivariance(
            model, x, stride=_one_or_tuple(args.stride), margin=_one_or_tuple(args.margin), **options
        )
    if args.json:
        _print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        _print(str(report))
    return EXIT_PASSED if report.passed else EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from equivariance.demo import run_demo

    result = run_demo(
        args.out, data=args.data, epochs=args.epochs, max_shift=args.max_shift, seed=args.seed,
        retrain=args.retrain, fast=args.fast, progress=not args.no_progress,
        stream=cast(TextIO, _PipeSafe()),
    )  # fmt: skip
    verdict = "as the seed says" if result.as_expected else "NOT as the seed says"
    _print(f"LeNet {'passed' if result.lenet.passed else 'failed'}, the MLP "
           f"{'passed' if result.mlp.passed else 'failed'}: {verdict}")  # fmt: skip
    return EXIT_PASSED if result.as_expected else EXIT_FAILED


def _print(text: str) -> None:
    _PipeSafe().write(text + "\n")


class _PipeSafe:
    """Standard output that goes quiet once its reader has gone (``... | head -1``).

    Python's advice for a closed pipe: point the file descriptor at
    ``/dev/null``, so neither later writes nor the flush at exit raise.
    """

    def write(self, text: str) -> int:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_to_devnull()
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()


def _stdout_to_devnull() -> None:
    try:
        fileno = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (pytest's capture): nothing will be flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


@contextlib.contextmanager
def _current_directory_importable() -> Iterator[None]:
    """The current directory first on ``sys.path`` for the command's duration, as ``python -m`` has it."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 passed, 1 failed, 2 usage error).

    Args:
        argv: the arguments, without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code. Without a subcommand it prints the help and returns 2.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse already printed the usage error, the help or the version
        return int(exit.code or 0) and EXIT_USAGE
    if args.command is None:
        _print(parser.format_help().rstrip())
        return EXIT_USAGE
    try:
        with _current_directory_importable():
            if args.command == "demo":
                return _demo(args)
            if args.command == "profile":
                return _profile(args)
            return _check(args)
    except InvalidArgument as error:
        print(f"equivariance: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
