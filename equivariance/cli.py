"""The ``equivariance`` command line: check a model from the shell.

``equivariance profile PKG.MODULE:FACTORY --input-shape ... --shift 1,0 [--up-to conv4]``
prints the error of every layer (:func:`~equivariance.profile_equivariance`).
``equivariance demo [--out DIR]`` runs the seed article's demonstration
(:mod:`equivariance.demo`). ``equivariance check PKG.MODULE:FACTORY
--input-shape 8,1,38,38`` imports
``FACTORY`` from ``PKG.MODULE`` (a class or function returning the model, or a
model instance), builds a random input of that shape and prints the report.
The exit code is 0 when the check passes, 1 when it fails and 2 for a usage
error, so the command fits shell scripts and CI jobs.

>>> main(["check", "equivariance.models:LeNet", "--input-shape", "2,1,24,24",
...       "--layer", "conv4", "--max-shift", "1", "--quiet"])
0
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch

from equivariance.check import check_equivariance, check_invariance
from equivariance.errors import InvalidArgument
from equivariance.report import EquivarianceReport

__all__ = ["load_factory", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def load_factory(spec: str) -> Any:
    """The model named by ``PKG.MODULE:NAME``: ``NAME()`` if it is a class or function, else ``NAME``.

    >>> type(load_factory("equivariance.models:LeNet")).__name__
    'LeNet'
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
            f"cannot import {module_name!r} ({exc}); is it installed, or on PYTHONPATH?"
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise InvalidArgument(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, torch.nn.Module) or not callable(target):
        return target
    try:
        return target()
    except Exception as exc:
        raise InvalidArgument(
            f"calling {spec}() raised {type(exc).__name__}: {exc}; the factory must build the model "
            "without arguments (write a small function in your module that does)"
        ) from exc


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equivariance", description="Test, measure and explain the shift equivariance of PyTorch models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="check a model's equivariance (or invariance) on a random input",
        description="Exit code 0 when the check passes, 1 when it fails, 2 for a usage error.",
    )
    _model_and_input(check)
    check.add_argument("--max-shift", type=_ints, default=None, help="box half-width, one int or one per dim")
    check.add_argument("--stride", type=_ints_or_auto, default=(1,), help="output subsampling: ints or auto")
    check.add_argument(
        "--margin", type=_ints_or_auto, default=(0,), help="edge samples dropped: ints or auto"
    )
    check.add_argument("--layer", default=None, help="measure this submodule's output, e.g. conv4")
    check.add_argument("--invariance", action="store_true", help="check that the output does not move")
    check.add_argument(
        "--batch-size", type=_batch_size, default=None, help="samples per forward pass, or auto"
    )
    profile = commands.add_parser(
        "profile",
        help="the equivariance error of every layer under one shift: where equivariance breaks",
        description="Exit code 0 when every layer passes, 1 when one fails, 2 for a usage error.",
    )
    _model_and_input(profile)
    profile.add_argument("--shift", type=_ints, required=True, help="the input shift, e.g. 1,0")
    profile.add_argument(
        "--up-to", default=None, metavar="NAME", help="stop the forward pass after this submodule, e.g. conv4"
    )
    profile.add_argument("--json", action="store_true", help="print the profile as JSON")
    demo = commands.add_parser(
        "demo",
        help="the seed's demonstration: train LeNet, check it and an MLP, draw heatmaps and the animation",
        description="Works offline (MNIST if cached, else scikit-learn's digits). Exit code 0 when LeNet "
        "passes and the MLP fails, 1 otherwise, 2 for a usage error.",
    )
    demo.add_argument("--out", default="equivariance-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--data", choices=("auto", "mnist", "digits"), default="auto")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--max-shift", type=int, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--retrain", action="store_true", help="train even if --out holds saved weights")
    demo.add_argument("--fast", action="store_true", help="a quick smoke run: fewer digits and epochs")
    demo.add_argument("--no-progress", action="store_true")
    output = check.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--quiet", action="store_true", help="print nothing; the exit code tells")
    return parser


def _model_and_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="PKG.MODULE:FACTORY, e.g. equivariance.models:LeNet")
    parser.add_argument("--input-shape", type=_ints, required=True, help="e.g. 8,1,38,38 (N, C, *spatial)")
    parser.add_argument("--boundary", choices=("zeros", "circular"), default="zeros")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=("float16", "bfloat16", "float32", "float64"))
    parser.add_argument("--border", type=int, default=0, help="zero this many samples at each input edge")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input")
    parser.add_argument("--rtol", type=float, default=None)
    parser.add_argument("--atol", type=float, default=None)


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


def _one_or_tuple(values: tuple[int, ...] | Literal["auto"]) -> int | tuple[int, ...] | Literal["auto"]:
    if values == "auto":
        return "auto"
    return values[0] if len(values) == 1 else values


def _random_input(args: argparse.Namespace) -> torch.Tensor:
    shape = args.input_shape
    if len(shape) < 3:
        raise InvalidArgument(f"--input-shape needs (N, C, *spatial), found {','.join(map(str, shape))}")
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    if args.border:
        inner = tuple(slice(args.border, n - args.border) for n in shape[2:])
        key: tuple[Any, ...] = (Ellipsis, *inner)
        canvas = torch.zeros_like(x)
        canvas[key] = x[key]
        x = canvas
    try:
        return x.to(device=args.device, dtype=getattr(torch, args.dtype))
    except (RuntimeError, AssertionError) as exc:
        raise InvalidArgument(f"cannot use --device {args.device}: {exc}") from None


def _model_and_x(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    model = load_factory(args.model)
    x = _random_input(args)
    if isinstance(model, torch.nn.Module):
        model = model.to(device=x.device, dtype=x.dtype)
    return model, x


def _profile(args: argparse.Namespace) -> int:
    from equivariance.profile import profile_equivariance

    model, x = _model_and_x(args)
    result = profile_equivariance(
        model, x, args.shift, up_to=args.up_to, boundary=args.boundary, rtol=args.rtol, atol=args.atol
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return EXIT_PASSED if result.passed else EXIT_FAILED


def _check(args: argparse.Namespace) -> EquivarianceReport:
    model, x = _model_and_x(args)
    options: dict[str, Any] = dict(
        max_shift=None if args.max_shift is None else _one_or_tuple(args.max_shift),
        boundary=args.boundary,
        layer=args.layer,
        rtol=args.rtol,
        atol=args.atol,
        batch_size=args.batch_size,
    )
    if args.invariance:
        return check_invariance(model, x, **options)
    return check_equivariance(
        model, x, stride=_one_or_tuple(args.stride), margin=_one_or_tuple(args.margin), **options
    )


def _demo(args: argparse.Namespace) -> int:
    from equivariance.demo import run_demo

    result = run_demo(
        args.out, data=args.data, epochs=args.epochs, max_shift=args.max_shift, seed=args.seed,
        retrain=args.retrain, fast=args.fast, progress=not args.no_progress,
    )  # fmt: skip
    verdict = "as the seed says" if result.as_expected else "NOT as the seed says"
    print(f"LeNet {'passed' if result.lenet.passed else 'failed'}, the MLP "
          f"{'passed' if result.mlp.passed else 'failed'}: {verdict}")  # fmt: skip
    return EXIT_PASSED if result.as_expected else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 passed, 1 failed, 2 usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse already printed the usage error
        return int(exit.code or 0) and EXIT_USAGE
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "profile":
            return _profile(args)
        report = _check(args)
    except InvalidArgument as error:
        print(f"equivariance: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(report)
    return EXIT_PASSED if report.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
