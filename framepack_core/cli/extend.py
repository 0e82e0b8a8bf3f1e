"""``--extend VIDEO`` on the command line: without ``--image`` the start image is the clip's last frame, written
as a PNG in a temporary folder that lives as long as the command (a queued job keeps its own copy)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from framepack_core.cli.options import EXIT_BAD_INPUT, with_option_name
from framepack_core.errors import InvalidInputError


def with_clip_start_image(args: argparse.Namespace, run: Callable[[], int]) -> int:
    """Run the command ``run`` with ``args.image`` filled from ``args.extend_video`` when it is missing; refuse a
    command that has neither. Commands without an ``--image`` option run as they are."""
    if not hasattr(args, "image"):
        return run()
    clip = getattr(args, "extend_video", None)
    try:
        if args.image is not None or getattr(args, "image_dir", None) is not None:
            if clip is not None and getattr(args, "verb", None) == "submit":
                from framepack_core.media.video_input import read_extend_clip

                read_extend_clip(Path(clip), args.context_frames)  # refuse a broken clip now, not when it runs
            return run()
        if clip is None:
            raise InvalidInputError("image", "is required", "Give the start image, or a clip to extend with "
                                                            "--extend VIDEO (its last frame is then the start image).")
        from framepack_core.media.video_input import write_last_frame

        with tempfile.TemporaryDirectory(prefix="framepack-extend-") as folder:
            frame = str(write_last_frame(Path(clip), Path(folder)))
            args.image = [frame] if getattr(args, "verb", None) == "submit" else frame  # submit takes a list
            return run()
    except InvalidInputError as error:
        print(f"error: {with_option_name(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
