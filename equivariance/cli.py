"""The ``equivariance`` command line: ``check``, ``profile`` and ``demo`` (docs/cli.md).

Examples:
    >>> main(["check", "equivariance.models:LeNet", "--input-shape", "2,1,24,24",
    ...       "--layer", "conv4", "--max-shift", "1", "--quiet"])
    equivariance check PASSED: LeNet.conv4, 9 shifts; max error 0.00e+00 at shift (-1, -1)
    (rtol 1e-04, float32)
    0
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, cast

import torch

from equivariance import __version__
from equivariance._engine.runner import progress_off
from equivariance.check import check_equivariance, check_invariance
from equivariance.errors import InvalidArgument
from equivariance.layouts import ChannelsFirst, ChannelsLast, Layout, Tokens, as_layout
from equivariance.report import EquivarianceReport
from equivariance.transforms import Flip, Rot90, Transpose

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


def _selector(text: str) -> int | str:
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


LAYOUT_NAMES = ("channels_first", "channels_last", "tokens")


def _layout(text: str) -> Layout:
    """A layout by name, or written as the library's messages write it: ``Tokens((14, 14), prefix=1)``."""
    name = text.strip()
    if name in LAYOUT_NAMES:
        return as_layout(name)
    try:
        call = ast.parse(name, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            raise ValueError
        kinds: dict[str, type[Layout]] = {
            "Tokens": Tokens,
            "ChannelsLast": ChannelsLast,
            "ChannelsFirst": ChannelsFirst,
        }
        kind = kinds[call.func.id]
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        return kind(*args, **kwargs)
    except (SyntaxError, ValueError, KeyError, TypeError, InvalidArgument):
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(LAYOUT_NAMES)} or Tokens((H, W), prefix=K), found {text!r}; "
            "e.g. --layout tokens --grid 14,14 --prefix 1"
        ) from None


def _python(text: str, names: Mapping[str, Any], option: str, example: str) -> Any:
    """``text`` evaluated as Python made of literals, tuples, lists, dicts and calls of ``names`` only
    (what ``--inputs``, ``--outputs`` and ``--transforms`` take), never as code of its own."""

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
        ):
            return ast.literal_eval(node)
        if isinstance(node, ast.Tuple | ast.List):
            items = [value(item) for item in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
            return {value(k): value(v) for k, v in zip(node.keys, node.values) if k is not None}
        if isinstance(node, ast.Call) and _named(node.func, names):
            keywords = {k.arg: value(k.value) for k in node.keywords if k.arg is not None}
            return _named(node.func, names)(*map(value, node.args), **keywords)
        raise ValueError(ast.unparse(node))

    try:
        return value(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, TypeError, InvalidArgument) as exc:
        found = f" ({exc})" if isinstance(exc, InvalidArgument | TypeError) else ""
        if isinstance(exc, ValueError) and not isinstance(exc, InvalidArgument):
            found = f" ({exc} is none of them)"
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(names)} written as in Python, found {text!r}{found}; e.g. {option} "
            f"{example!r}"
        ) from None


def _named(node: ast.expr, names: Mapping[str, Any]) -> Any:
    """What ``node`` names among ``names``: ``Name`` or a public ``Name.method`` (``Rotation.about``)."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and not node.attr.startswith("_"):
        return getattr(names.get(node.value.id), node.attr, None) if node.value.id in names else None
    return None


def _fields(text: str) -> Any:
    import equivariance.fields as fields

    kinds = ("Positions", "Vectors", "Scalars", "Pseudovectors", "Pseudoscalars", "Irreps", "EdgeIndex")
    return _python(text, {k: getattr(fields, k) for k in kinds}, "--inputs", "Positions(), Scalars()")


SAMPLES = {"so2": "SO2", "o2": "O2", "so3": "SO3", "o3": "O3", "se3": "SE3", "e3": "E3",
           "node-permutations": "NodePermutations"}  # fmt: skip
"""``--transforms NAME:COUNT``: the group samples that need no more than a count."""


def _group_samples() -> dict[str, Any]:
    import equivariance.euclidean as euclidean
    import equivariance.permutations as permutations

    kinds = {name: getattr(euclidean, name) for name in ("SO2", "O2", "SO3", "O3", "SE3", "E3")}
    return (
        kinds
        | {name: getattr(permutations, name) for name in ("Permutations", "NodePermutations", "Permutation")}
        | {"Rotation": euclidean.Rotation, "Translation": euclidean.Translation}
        | GRID_TRANSFORMS
    )


GRID_TRANSFORMS = {"Rot90": Rot90, "Flip": Flip, "Transpose": Transpose}
"""The ``--transforms`` of a grid (without ``--inputs``): the input rotated, flipped or transposed."""


def _of_grids(transforms: Any) -> bool:
    """Whether ``--transforms`` are transforms of a grid (``'Rot90(1), Flip(-1)'``)."""
    listed = transforms if isinstance(transforms, tuple | list) else [transforms]
    return all(isinstance(t, tuple(GRID_TRANSFORMS.values())) for t in listed)


def _transforms(text: str) -> Any:
    """``NAME:COUNT`` (seeded by ``--seed`` later) or the library's spelling, ``SO3(64, seed=0)``."""
    name, colon, count = text.strip().partition(":")
    if colon:
        if name.lower() not in SAMPLES or not count.strip().isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(
                f"expected NAME:COUNT with NAME one of {', '.join(SAMPLES)} and COUNT a positive integer, "
                f"found {text!r}; e.g. --transforms so3:64, or 'Permutations(16, n=6)' as in Python"
            )
        return (SAMPLES[name.lower()], int(count))
    return _python(text, _group_samples(), "--transforms", "SO3(64, seed=0)")


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph on its own, keeps the examples' lines, and appends an option's default."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=26)

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
    "equivariance check mymodels:cnn --input-shape 8,3,64,64 --max-shift 4",
    "equivariance check mymodels:vit --input-shape 2,3,224,224 --layout tokens",
    "equivariance check mymodels:seg --input scan.npy --select masks -o report.json",
    "equivariance check mols:Net --example mols:batch --transforms e3:64 \\\n"
    "    --inputs 'Positions(), Scalars()' --outputs 'Scalars(nodes=None), Vectors()'",
)
PROFILE_EXAMPLES = _examples(
    "equivariance profile mymodels:build --input-shape 2,3,64,64 --shift 1,0",
    "equivariance profile mymodels:cnn --input x.pt --shift 2,1 --up-to conv4",
)
DEMO_EXAMPLES = _examples(
    "equivariance demo --fast --out /tmp/demo",
    "equivariance demo --data digits --epochs 10 --out equivariance-demo",
)
EXIT_CODES = "Exit code 0 when {what} passes, 1 when {fails} fails, 2 for a usage error."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equivariance",
        description="Test, measure and explain the shift equivariance of PyTorch models.",
        epilog=_examples(
            "equivariance check equivariance.models:LeNet --input-shape 8,1,38,38 --layer conv4",
            "equivariance check --help",
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{check,profile,demo}")
    check = commands.add_parser(
        "check",
        help="check a model's equivariance (or invariance) over many shifts",
        usage="%(prog)s MODEL (--input-shape S | --input F | --example FN) ...",
        description="Check a model's equivariance (or invariance) over the shifts of a grid, or over "
        "--transforms of points. "
        + EXIT_CODES.format(what="the check", fails="it")
        + "\n\n"
        + CHECK_EXAMPLES,
        formatter_class=_Formatter,
        add_help=False,
    )
    _model_and_input(check, example=True)
    _check_options(check)
    _point_options(check)
    _tolerances(check, batch_size=True)
    _output_options(check, progress=True)
    profile = commands.add_parser(
        "profile",
        help="the equivariance error of every layer under one shift: where equivariance breaks",
        usage="%(prog)s MODEL (--input-shape SHAPE | --input FILE) --shift SHIFT [options]",
        description="The equivariance error of every layer under one shift: where equivariance breaks. "
        + EXIT_CODES.format(what="every layer", fails="one")
        + "\n\n"
        + PROFILE_EXAMPLES,
        formatter_class=_Formatter,
        add_help=False,
    )
    _model_and_input(profile)
    measured = profile.add_argument_group("what to profile")
    measured.add_argument("--shift", type=_ints, required=True, help="the input shift, e.g. 1,0")
    measured.add_argument(
        "--up-to", default=None, metavar="NAME", help="stop the forward pass after this submodule"
    )
    _boundary(measured)
    _tolerances(profile, batch_size=False)
    _output_options(profile, progress=False)
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


def _model_and_input(parser: argparse.ArgumentParser, *, example: bool = False) -> None:
    group = parser.add_argument_group("model and input")
    group.add_argument("model", metavar="MODEL", help="PKG.MODULE:FACTORY, e.g. equivariance.models:LeNet")
    group.add_argument(
        "--arg",
        dest="arguments",
        type=_argument,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the factory's keyword argument (repeatable)",
    )
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input-shape", type=_ints, metavar="SHAPE", help="random noise of this shape (N, C, *spatial)"
    )
    source.add_argument(
        "--input", metavar="FILE", help="a real input: .pt, .npy (N, C, *spatial) or an image"
    )
    if example:
        source.add_argument(
            "--example", metavar="FN", help="PKG.MODULE:FN that returns the model's arguments"
        )
    group.add_argument(
        "--border", type=_non_negative, default=0, metavar="B", help="zero B samples at each input edge"
    )
    group.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random input")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    group.add_argument(
        "--dtype",
        default="float32",
        choices=("float16", "bfloat16", "float32", "float64"),
        metavar="DTYPE",
        help="float16|bfloat16|float32|float64",
    )


def _check_options(check: argparse.ArgumentParser) -> None:
    group = check.add_argument_group("what to check")
    group.add_argument(
        "--max-shift",
        type=_ints,
        default=None,
        metavar="N",
        help="every shift in [-N, N] (default: 2 strides)",
    )
    group.add_argument(
        "--stride", type=_ints_or_auto, default=None, metavar="S",
        help="the output's subsampling, or auto (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--margin", type=_ints_or_auto, default=None, metavar="M",
        help="edge samples dropped, or auto (default: 0)",
    )  # fmt: skip
    _boundary(group, default=None)
    group.add_argument("--layer", default=None, metavar="NAME", help="check this submodule's output")
    group.add_argument(
        "--select",
        type=_selector,
        default=None,
        metavar="KEY|INDEX",
        help="a tensor of a dict or tuple output",
    )
    group.add_argument(
        "--layout",
        type=_layout,
        default=None,
        metavar="LAYOUT",
        help="channels_first, channels_last or tokens",
    )
    group.add_argument(
        "--grid", type=_ints, default=None, metavar="H,W", help="the tokens' grid (--layout tokens)"
    )
    group.add_argument(
        "--prefix",
        type=_non_negative,
        default=None,
        metavar="K",
        help="K tokens before the grid (a class token: 1)",
    )
    group.add_argument("--invariance", action="store_true", help="check that the output does not move")


def _boundary(group: argparse._ActionsContainer, default: str | None = "zeros") -> None:
    group.add_argument(
        "--boundary",
        choices=("zeros", "circular"),
        default=default,
        metavar="B",
        help="zeros (a canvas) or circular" + (" (default: zeros)" if default is None else ""),
    )


def _point_options(check: argparse.ArgumentParser) -> None:
    group = next(g for g in check._action_groups if g.title == "what to check")
    group.add_argument(
        "--transforms", type=_transforms, default=None, metavar="G",
        help="so3:64, e3:64, ..., or 'Rot90(1), Flip(-1)'",
    )  # fmt: skip
    group.add_argument("--inputs", type=_fields, default=None, metavar="FIELDS",
                       help="their field types: 'Positions(), Scalars()'")  # fmt: skip
    group.add_argument("--outputs", type=_fields, default=None, metavar="FIELDS",
                       help="the outputs': 'Scalars(nodes=None), Vectors()'")  # fmt: skip


def _tolerances(parser: argparse.ArgumentParser, *, batch_size: bool) -> None:
    group = parser.add_argument_group("tolerance" + (" and speed" if batch_size else ""))
    group.add_argument(
        "--rtol", type=_tolerance, default=None, metavar="R", help="relative tolerance (default: the dtype's)"
    )
    group.add_argument(
        "--atol", type=_tolerance, default=None, metavar="A", help="absolute tolerance (default: the dtype's)"
    )
    if batch_size:
        group.add_argument(
            "--batch-size",
            type=_batch_size,
            default=None,
            metavar="B",
            help="samples per forward pass, or auto",
        )


def _output_options(parser: argparse.ArgumentParser, *, progress: bool) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "-o", "--output", default=None, metavar="FILE", help="write the report to FILE (.json: as JSON)"
    )
    group.add_argument(
        "--format", choices=("text", "json"), default=None, help="text or json (default: by FILE's suffix)"
    )
    group.add_argument("--json", action="store_true", help="same as --format json")
    group.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line")
    if progress:
        group.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal)")
    group.add_argument("-h", "--help", action="help", help="show this help and exit")


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
    demo.add_argument(
        "--fast",
        action="store_true",
        help="a quick smoke run: 400 digits, 1 epoch; its pictures get names of their own (*-fast)",
    )
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


def _model_and_x(args: argparse.Namespace) -> tuple[Any, Any]:
    model = load_factory(args.model, dict(args.arguments))
    x = _example(args) if getattr(args, "example", None) is not None else _input(args)
    if isinstance(model, torch.nn.Module):
        model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    return model, x


def _example(args: argparse.Namespace) -> Any:
    """What ``--example PKG.MODULE:FN`` returns (``FN()``, torch seeded by ``--seed``), its floating
    tensors in ``--dtype`` on ``--device``."""
    torch.manual_seed(args.seed)
    try:
        x = load_factory(args.example)
    except InvalidArgument as error:
        raise InvalidArgument(f"--example: {error}") from None
    dtype = getattr(torch, args.dtype)

    def moved(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(args.device, dtype) if value.is_floating_point() else value.to(args.device)
        if isinstance(value, tuple | list):
            return type(value)(moved(v) for v in value)
        if isinstance(value, Mapping):
            return {key: moved(v) for key, v in value.items()}
        if not isinstance(value, torch.nn.Module) and callable(getattr(value, "apply", None)):  # a Data
            return value.to(args.device).apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
        raise InvalidArgument(
            f"--example {args.example} returned {type(value).__name__}; return the model's arguments: a "
            "tensor, a tuple or list of them (positional), a dict (keyword) or a torch_geometric Data/Batch"
        )

    try:
        return moved(x)
    except (RuntimeError, AssertionError) as exc:
        raise InvalidArgument(f"cannot use --device {args.device}: {exc}") from None


def _profile(args: argparse.Namespace) -> int:
    from equivariance.profile import profile_equivariance

    model, x = _model_and_x(args)
    result = profile_equivariance(
        model, x, args.shift, up_to=args.up_to, boundary=args.boundary, rtol=args.rtol, atol=args.atol
    )
    _emit(args, result.summary(), str(result), result.to_dict())
    return EXIT_PASSED if result.passed else EXIT_FAILED


def _check(args: argparse.Namespace) -> int:
    model, x = _model_and_x(args)
    options: dict[str, Any] = dict(
        layer=args.layer, output=args.select, rtol=args.rtol, atol=args.atol, batch_size=args.batch_size
    )
    grid: dict[str, Any] = {}
    if args.inputs is not None:  # points, sets and graphs (with --transforms): no grid options
        options |= dict(transforms=_elements(args.transforms, args.seed), inputs=args.inputs)
        grid = {} if args.invariance else {"outputs": args.outputs}
    else:
        max_shift = None if args.max_shift is None else _one_or_tuple(args.max_shift)
        options |= dict(max_shift=max_shift, boundary=args.boundary or "zeros")
        if args.transforms is not None:  # rotations and flips of the grid, which the check may refuse
            options["transforms"] = _elements(args.transforms, args.seed)
        grid = dict(
            stride=_one_or_tuple(args.stride or (1,)), margin=_one_or_tuple(args.margin or (0,)),
            layout=args.layout,
        )  # fmt: skip
    report: EquivarianceReport
    with contextlib.nullcontext() if _progress_shown(args) else progress_off():
        if args.invariance:
            report = check_invariance(model, x, **options)
        else:
            report = check_equivariance(model, x, **grid, **options)
    _emit(args, report.summary(), str(report) + _options_named(report.hints), report.to_dict())
    return EXIT_PASSED if report.passed else EXIT_FAILED


def _elements(transforms: Any, seed: int) -> Any:
    """``--transforms``: a group sample by ``NAME:COUNT`` (seeded by ``--seed``), or as written (one
    element, or several separated by commas, as a list)."""
    if isinstance(transforms, tuple) and len(transforms) == 2 and isinstance(transforms[0], str):
        name, count = transforms
        return _group_samples()[name](count, seed=seed)
    if isinstance(transforms, tuple):
        return list(transforms)
    return transforms if isinstance(transforms, Sequence) else [transforms]


def _progress_shown(args: argparse.Namespace) -> bool:
    return not (args.quiet or args.no_progress)


# The library's messages name its keyword arguments; on the command line they are these options.
OPTION_OF = {
    "output=": "--select",
    "layout=": "--layout",
    "stride=": "--stride",
    "margin=": "--margin",
    "max_shift=": "--max-shift",
    "layer=": "--layer",
    "up_to=": "--up-to",
    "batch_size=": "--batch-size",
    "boundary=": "--boundary",
    "check_invariance": "--invariance",
    "transforms=": "--transforms",
    "inputs=": "--inputs",
    "outputs=": "--outputs",
}


def _options_named(texts: Sequence[str]) -> str:
    """A line translating the keywords that ``texts`` name into this command's options ('' if none)."""
    named = [f"{keyword} is {option}" for keyword, option in OPTION_OF.items() if any(
        re.search(rf"(?<![\w.]){re.escape(keyword)}", text) for text in texts
    )]  # fmt: skip
    return f"\n  on the command line: {', '.join(named)}" if named else ""


def _emit(args: argparse.Namespace, verdict: str, text: str, data: dict[str, Any]) -> None:
    """The report into ``--output`` (the verdict on stdout), or on stdout: whole, or its verdict (``-q``)."""
    body = json.dumps(data, indent=2) if args.format == "json" else text
    if args.output is not None:
        try:
            Path(args.output).write_text(body + "\n", encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(
                f"cannot write the report to {args.output!r} ({exc.strerror or exc}); pass -o a file you "
                "can write to"
            ) from None
    _print(verdict if args.quiet or args.output is not None else body)


def _settle(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Checks between options, made before any work, with the subcommand's usage on an error."""
    if args.output is not None:
        file = Path(args.output)
        if not file.suffix:
            selected = "" if args.command != "check" else (
                f"; to pick the tensor {args.output!r} of a model's dict or tuple output, pass --select "
                f"{args.output} (--output was that option's name before 0.2.0)"
            )  # fmt: skip
            parser.error(
                f"argument -o/--output: expected a file name with a suffix, such as report.json or "
                f"report.txt, found {args.output!r}{selected}"
            )
        if not file.parent.is_dir():
            parser.error(
                f"argument -o/--output: the folder {os.fspath(file.parent)!r} does not exist; create it or "
                "write the report elsewhere"
            )
    if args.json and args.format == "text":
        parser.error("argument --json: not allowed with argument --format text")
    if args.json or (args.format is None and args.output and Path(args.output).suffix.lower() == ".json"):
        args.format = "json"
    if args.command == "check":
        _points_or_grid(args, parser)
        args.layout = _tokens_layout(args, parser)


GRID_OPTIONS = ("max_shift", "stride", "margin", "boundary", "layout", "grid", "prefix", "border")


def _points_or_grid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A check of points (``--transforms`` with ``--inputs``) takes no grid option, and needs both."""
    points = [
        f"--{n}" for n in ("transforms", "inputs", "outputs", "example") if getattr(args, n) is not None
    ]
    if not points or (points == ["--transforms"] and _of_grids(args.transforms)):
        return  # a grid's check: of shifts, or of rotations and flips
    if args.transforms is None:
        parser.error(
            f"argument {points[0]}: a check of points, sets or graphs moves the model's arguments by the "
            "elements of --transforms; pass it, e.g. --transforms so3:64 (or e3:64, node-permutations:8)"
        )
    if args.inputs is None:
        parser.error(
            "argument --transforms: the elements move the model's arguments by their field types; pass "
            "--inputs, e.g. --inputs 'Positions()' for one tensor of points, or --inputs 'Positions(), "
            "Scalars()' for the arguments of --example (a grid's --transforms are Rot90, Flip and "
            "Transpose)"
        )
    if args.outputs is None and not args.invariance:
        parser.error(
            "argument --transforms: pass --outputs, the field type of each output (e.g. --outputs "
            "'Scalars(nodes=None), Vectors()'), or --invariance for outputs that must not change"
        )
    if args.outputs is not None and args.invariance:
        parser.error("argument --outputs: --invariance compares every output unmoved; drop one of them")
    defaults = {"border": 0}
    given = [name for name in GRID_OPTIONS if getattr(args, name) not in (None, defaults.get(name))]
    if given:
        shown = "--" + given[0].replace("_", "-")
        parser.error(
            f"argument {shown}: an option of grids (shifts); a check of --transforms moves points and "
            "graphs, so drop it"
        )


def _tokens_layout(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Layout | None:
    """``--layout`` with ``--grid`` and ``--prefix`` folded in."""
    layout: Layout | None = args.layout
    grid, prefix = args.grid, args.prefix
    if (grid is not None or prefix is not None) and not isinstance(layout, Tokens):
        given = "--grid" if grid is not None else "--prefix"
        parser.error(f"argument {given}: describes tokens; pass it with --layout tokens")
    if layout is not None and args.invariance:
        parser.error(
            "argument --layout: an invariance check compares the whole output, wherever it keeps its "
            "grid; drop --layout"
        )
    if isinstance(layout, Tokens) and (grid is not None or prefix is not None):
        try:
            layout = Tokens(
                grid if grid is not None else layout.grid, prefix if prefix is not None else layout.prefix
            )
        except InvalidArgument as error:
            parser.error(f"argument --grid: {error}")
    return layout


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


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _unrecognized(arguments: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """argparse's message for unknown arguments, with the closest option to each misspelt one."""
    known = [option for action in parser._actions for option in action.option_strings]
    guesses: dict[str, str] = {}
    for argument in arguments:
        given = argument.split("=")[0]
        close = difflib.get_close_matches(given, known, n=1, cutoff=0.6) if given.startswith("-") else []
        guesses.update({given: close[0]} if close else {})
    said = f"unrecognized arguments: {' '.join(arguments)}"
    if len(guesses) == 1:
        return f"{said}; did you mean {next(iter(guesses.values()))}?"
    shown = ", ".join(f"{option} for {given}" for given, option in guesses.items())
    return f"{said}; did you mean {shown}?" if guesses else said


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
        args, unknown = parser.parse_known_args(argv)
        command = _subcommands(parser).get(args.command or "", parser)
        if unknown:
            command.error(_unrecognized(unknown, command))
        if args.command in ("check", "profile"):
            _settle(args, command)
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
        print(f"equivariance: error: {error}{_options_named([str(error)])}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
