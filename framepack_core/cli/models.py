"""``python -m framepack_core models status|download``: what of the model set is on disk, and fetching the rest."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from framepack_core.cli.options import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, with_option_name
from framepack_core.errors import FramePackError

if TYPE_CHECKING:
    from framepack_core.models.inventory import ModelInventory


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="Show which model components are on disk, or download the missing ones.")
    actions = p.add_subparsers(dest="models_command", required=True)
    status = actions.add_parser("status", help="Each component: where it was looked for, whether it is whole, its "
                                               "size; and the free disk space. Downloads nothing; exits 1 when a "
                                               "component is missing or damaged.")
    download = actions.add_parser("download", help="Download the missing or damaged components from the Hugging "
                                                   "Face hub (resumes an interrupted download).")
    for p in (status, download):
        p.add_argument("--model", choices=["original", "f1", "all"], default="original",
                       help="Which transformer's set: original, f1, or all (both transformers) (default original).")
        p.add_argument("--models-dir", type=Path, default=None,
                       help="Folder with the models in org/name/subfolder layout (default: the Hugging Face cache).")
    status.add_argument("--offline", action="store_true",
                        help="Do not ask the hub how big the missing files are; estimate it from the built-in "
                             "configs (default off). Status never downloads either way.")
    status.add_argument("--json", action="store_true", help="Print the status as JSON (default off).")
    download.add_argument("--quiet", action="store_true", help="No progress bar (default off).")


def _print_status(inventory: ModelInventory, offline: bool) -> None:
    from framepack_core.models.hub_files import download_bytes, format_gb

    width = max(len(status.name) for status in inventory.components)
    for status in inventory.components:
        state = "ok" if status.complete else ("damaged" if status.present else "missing")
        size = format_gb(status.size_bytes) if status.present else "-"
        print(f"{status.name:<{width}}  {state:<7}  {size:>9}  {status.looked_in}")
        if status.problem:
            print(f"{'':<{width}}  {status.problem}")
    print(f"Free disk space: {format_gb(inventory.free_bytes)} on the drive of {inventory.target}")
    if inventory.incomplete:
        size, from_hub = download_bytes(tuple(status.files for status in inventory.incomplete), offline)
        about = "" if from_hub else "about "
        print(f"To download: {about}{format_gb(size)} for {len(inventory.incomplete)} component(s)")


def run_models(args: argparse.Namespace) -> int:
    from framepack_core.models.inventory import inspect_models

    inventory = inspect_models(args.model, models_dir=args.models_dir)
    if args.models_command == "status":
        if args.json:
            print(json.dumps(inventory.to_dict(), indent=2))
        else:
            _print_status(inventory, args.offline)
        return EXIT_OK if not inventory.incomplete else EXIT_FAILED
    return _download(args, inventory)


def _download(args: argparse.Namespace, inventory: ModelInventory) -> int:
    from tqdm import tqdm

    from framepack_core.models.download import check_space, download, plan_download
    from framepack_core.models.hub_files import format_gb
    from framepack_core.models.inventory import inspect_models

    if not inventory.incomplete:
        print(f"Every component of '{args.model}' is on disk and whole; nothing to download.")
        return EXIT_OK
    try:
        plan = plan_download(inventory, models_dir=args.models_dir)
        check_space(plan)
    except FramePackError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the hub could not be reached: say so in one line
        print(f"error: could not ask the Hugging Face hub for the files' sizes ({type(error).__name__}: {error}). "
              "Check the network connection (and that HF_HUB_OFFLINE is not set), then run it again.",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"Downloading {format_gb(plan.needed_bytes)} ({len(plan.files)} files) for: {', '.join(plan.components)}"
          f" into {plan.target} ({format_gb(plan.free_bytes)} free)", file=sys.stderr)
    with tqdm(total=plan.needed_bytes, unit="B", unit_scale=True, file=sys.stderr, disable=args.quiet) as bar:
        try:
            download(plan, progress=bar.update)
        except KeyboardInterrupt:
            bar.close()
            print("\nInterrupted: run the same command again to resume.", file=sys.stderr)
            return EXIT_CANCELLED
        except Exception as error:  # noqa: BLE001 - a network failure mid-way: what was fetched stays
            bar.close()
            print(f"error: the download stopped ({type(error).__name__}: {error}). Run the same command again to "
                  "resume where it stopped.", file=sys.stderr)
            return EXIT_FAILED
    after = inspect_models(args.model, models_dir=args.models_dir)
    if after.incomplete:
        _print_status(after, offline=True)
        print("error: some components are still incomplete after the download (see above)", file=sys.stderr)
        return EXIT_FAILED
    print(f"All components of '{args.model}' are on disk and whole in {after.target}.")
    return EXIT_OK
