"""Errors name fields at the core and each edge names them its way: the CLI its flags, the page its labels, the
HTTP API its JSON fields. Expected failures are logged in one line; bugs keep their traceback."""

from __future__ import annotations

import argparse
import ast
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.exc
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from app.api.errors import PathHider, api_text, install_error_handlers
from app.service.job_status import JobSnapshot, JobState
from app.ui.render import page_field_name, page_text, readable_error, render_progress
from framepack_core.cli.main import build_parser
from framepack_core.cli.options import option_for_field, option_text, with_option_name
from framepack_core.errors import (
    MARKED_FIELDS,
    DiskFullError,
    InvalidInputError,
    MissingWeightsError,
    render_fields,
)
from framepack_core.events import JobFailed
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.missing_weights import check_weights
from framepack_core.models.store import ModelStore
from framepack_core.pipeline import engine as engine_module
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.failure import describe_failure
from framepack_core.request import GenerationRequest

CORE = Path(__file__).resolve().parent.parent / "framepack_core"
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_MARKER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
_COMMAND_TO_COPY = re.compile(r"`[^`]*`")
CLI_COMMAND = "python -m framepack_core "


def _job_dir_in_use() -> InvalidInputError:
    return InvalidInputError("job_dir", "/jobs/a is in use by another running job",
                             "Wait for it to end, or give another {job_dir}.")


def _core_texts() -> list[tuple[Path, str]]:
    """Every string literal of the core outside ``cli/``, docstrings left out (they document the CLI too)."""
    texts = []
    for path in sorted(CORE.rglob("*.py")):
        if "cli" in path.relative_to(CORE).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        # A command of this CLI to copy and paste (``models download --model original``) must spell its flags.
        commands = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) and node.values
                    and isinstance(node.values[0], ast.Constant)
                    and str(node.values[0].value).startswith(CLI_COMMAND) for part in ast.walk(node)}
        texts += [(path, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docstrings | commands]
    return texts


def _our_flags() -> set[str]:
    """Every option string of ``python -m framepack_core`` and its subcommands."""
    flags, parsers = set(), [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags |= {option for option in action.option_strings if option.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    return flags - {"--help"}


def test_a_core_error_about_a_field_names_the_flag_in_the_cli_and_the_label_on_the_page():
    error = _job_dir_in_use()
    assert "{job_dir}" in error.hint, "the core stores the field, not a flag"
    assert with_option_name(error) == ("--job-dir: /jobs/a is in use by another running job\n"
                                       "  How to fix: Wait for it to end, or give another --job-dir.")
    message, hint = readable_error(error, None)
    assert hint == "Wait for it to end, or give another job folder." and "--" not in message + hint
    assert api_text(error.hint) == "Wait for it to end, or give another job_dir."


def test_missing_weights_name_the_offline_and_models_settings_per_edge(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        check_weights(ModelSource(cache_dir=tmp_path / "empty", offline=True), "original")
    error = caught.value
    cli_text = with_option_name(error)
    assert "without --offline" in cli_text and "as --models-dir" in cli_text
    _, hint = readable_error(error, None)
    assert "without the app's offline mode" in hint and "the app's models folder" in hint
    # Flags inside a command to copy (``models download --model original``) stay; the prose names no flag.
    assert "`python -m framepack_core models download --model original`" in hint
    assert not set(_FLAG.findall(_COMMAND_TO_COPY.sub("", hint))) & _our_flags(), hint


def test_out_of_memory_advice_on_the_page_names_the_controls_by_their_labels():
    snapshot = JobSnapshot(job_id="j1", request=GenerationRequest(image=Path("in.png")), state=JobState.FAILED,
                           error="The device ran out of memory.",
                           error_hint="Raise the GPU memory to preserve to 6.0 GB (now 4.0; "
                                      "{gpu_memory_preservation}); store the transformer in fp8 ({fp8}).")
    html = render_progress(snapshot)
    assert "(now 4.0; &#x27;GPU memory to preserve (GB)&#x27;)" in html
    assert "fp8 weight storage (transformer)" in html and "--" not in html and "{" not in html
    assert option_text(snapshot.error_hint).endswith("(now 4.0; --preserve-gb); store the transformer in fp8 (--fp8).")


def test_a_failure_with_details_shows_them_folded_under_the_message_and_its_one_fix(tmp_path):
    from app.service.job_status import event_changes
    from framepack_core.events import JobFailed

    event = JobFailed("j2", message="All 8 model components this job needs are missing.",
                      hint="Get them all with `python -m framepack_core models download --model original`.",
                      error_type="MissingWeightsError", partial_path=None, sections_done=0,
                      details="vae: the folder does not exist (looked in /m/vae); give DIR as {models_dir}")
    snapshot = JobSnapshot(job_id="j2", request=GenerationRequest(image=Path("in.png")), state=JobState.RUNNING)
    for name, value in event_changes(event, 1.0).items():
        setattr(snapshot, name, value)
    html = render_progress(snapshot)
    assert html.index("All 8 model components") < html.index("models download") < html.index("<details")
    assert "<summary>Details</summary>" in html and "the app&#x27;s models folder" in html and "{" not in html


def test_the_api_answers_a_field_error_with_json_field_names():
    api = FastAPI()
    install_error_handlers(api, PathHider([]))

    @api.get("/refuse")
    def refuse() -> None:
        raise _job_dir_in_use()

    answer = TestClient(api).get("/refuse").json()
    assert answer == {"error": "job_dir: /jobs/a is in use by another running job",
                      "hint": "Wait for it to end, or give another job_dir.", "field": "job_dir"}


def test_hints_stored_before_markers_render_as_written():
    old = "Wait for it to end, or give another --job-dir. Braces in a path stay: /tmp/{seed}/{name}.png"
    for name_field in (option_for_field, page_field_name, str):
        assert render_fields(old, name_field) == old


@pytest.mark.parametrize("field", sorted(MARKED_FIELDS))
def test_every_marked_field_has_a_name_at_every_edge(field):
    assert option_for_field(field) in _our_flags()
    label = page_field_name(field)
    assert label and not label.startswith("--") and page_text("{" + field + "}") == label
    assert api_text("{" + field + "}") == field


def test_core_error_texts_point_at_settings_only_with_known_markers():
    unknown = {(path.name, name) for path, text in _core_texts() for name in _MARKER.findall(text)
               if name not in MARKED_FIELDS}
    assert not unknown, f"a marker the edges cannot name (add it to MARKED_FIELDS and to each edge): {unknown}"


def test_no_core_module_outside_the_cli_names_a_flag_of_the_cli():
    flags = _our_flags()
    named = {(path.relative_to(CORE).as_posix(), flag) for path, text in _core_texts()
             for flag in _FLAG.findall(text) if flag in flags}
    assert not named, f"name the field with a marker ('{{job_dir}}'), not the flag: {sorted(named)}"


# Logging --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "expected"), [
    pytest.param(MissingWeightsError("tokenizer", ["/models"], "it is missing", "Download it."), True,
                 id="missing weights"),
    pytest.param(InvalidInputError("job_dir", "is in use", "Give another {job_dir}."), True, id="bad input"),
    pytest.param(DiskFullError("the video"), True, id="full disk"),
    pytest.param(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, id="out of memory"),
    pytest.param(torch._inductor.exc.InductorError(RuntimeError("C++ compile error\ncc1plus: fatal error"), None),
                 True, id="torch.compile failed"),
    pytest.param(RuntimeError("an index went wrong"), False, id="a bug"),
])
def test_expected_failures_are_logged_in_one_line_and_bugs_keep_their_traceback(monkeypatch, caplog, tmp_path,
                                                                                 error, expected):
    def failing_run(self):
        raise error
        yield

    monkeypatch.setattr(engine_module._JobRun, "_run", failing_run)
    image = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tmp_path / "none"), resolve_device_config("cpu")))
    with caplog.at_level(logging.INFO, logger="framepack_core"):
        events = list(engine.generate(GenerationRequest(image=image, output=tmp_path / "out.mp4")))
    assert isinstance(events[-1], JobFailed) and events[-1].hint
    tracebacks = [record for record in caplog.records if record.exc_info]
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    if expected:
        assert not tracebacks and all("\n" not in line for line in lines), lines
    else:
        assert tracebacks, "a bug keeps its traceback in the log"


def test_a_torch_compile_failure_says_what_failed_and_to_start_without_compile():
    error = torch._inductor.exc.InductorError(
        RuntimeError("C++ compile error\n\nCommand:\ng++ kernel.cpp\ncc1plus: fatal error: Python.h: No such file"),
        None)
    message, hint = describe_failure(error)
    assert message == ("torch.compile could not compile the transformer's blocks: "
                       "cc1plus: fatal error: Python.h: No such file")
    assert render_fields(hint, option_for_field).startswith("Start again without --compile:")
    assert page_text(hint).startswith("Start again without the app's compile setting (a start-up setting):")

