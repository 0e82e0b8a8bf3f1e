"""``python -m framepack_core lora inspect PATH``: what a LoRA file holds and which transformer layers it reaches."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from framepack_core.cli.options import EXIT_BAD_INPUT, EXIT_OK
from framepack_core.errors import FramePackError

_LISTED = 20


def add_lora_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="Look into LoRA files.")
    actions = p.add_subparsers(dest="lora_command", required=True)
    inspect = actions.add_parser("inspect", help="Print a LoRA file's format, ranks, alphas and the transformer "
                                                 "layers it matches and does not (reads no model weights).")
    inspect.add_argument("path", type=Path, help="The LoRA .safetensors file.")
    inspect.add_argument("--models-dir", type=Path, default=None,
                         help="Folder with the models in org/name layout: the transformer's config.json there is "
                              "used (default: the built-in FramePack config).")
    inspect.add_argument("--json", action="store_true", help="Print the description as JSON (default off).")


def run_lora(args: argparse.Namespace) -> int:
    from framepack_core.lora.files import inspect_lora, transformer_config, transformer_layers

    try:
        config, source = transformer_config(args.models_dir)
        description = inspect_lora(args.path, transformer_layers(config), source)
    except FramePackError as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(description.to_dict(), indent=2))
        return EXIT_OK
    info = description.to_dict()
    print(f"File:      {info['path']}")
    print(f"Format:    {info['format']}")
    print(f"Config:    {info['config']}")
    print(f"Rank(s):   {', '.join(map(str, info['ranks']))}")
    print(f"Alpha(s):  {', '.join(f'{alpha:g}' for alpha in info['alphas'])}")
    _print_list("Matched layers", info["matched"])
    _print_list("Unmatched keys", [f"{key}: {why}" for key, why in info["unmatched"].items()])
    return EXIT_OK


def _print_list(title: str, items: list[str]) -> None:
    print(f"{title}: {len(items)}")
    for item in items[:_LISTED]:
        print(f"  {item}")
    if len(items) > _LISTED:
        print(f"  ... and {len(items) - _LISTED} more")
