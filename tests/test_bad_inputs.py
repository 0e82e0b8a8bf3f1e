"""A catalogue of bad inputs, each tried on every front end: the UI's start handler, the CLI and the HTTP API.

Each must be refused with a message that names what is wrong (and, for settings, the field or option), and the
front end must stay usable: the API answers the next request, the CLI returns an exit code instead of a traceback.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.routes import build_api
from app.service.generation import GenerationService
from app.settings import Settings
from app.ui.page import JOB_FIELDS, build_request, readable_error
from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.spec import JobSpec
from framepack_core.request import GenerationRequest

FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}
OPTION = {"latent_window_size": "--window", "distilled_guidance": "--gs", "cfg_rescale": "--rs",
          "gpu_memory_preservation": "--preserve-gb", "sampler_variant": "--sampler-variant",
          "cache_threshold": "--cache-threshold"}

# (case, settings, field the message names)
SETTINGS = [
    ("zero seconds", {"seconds": 0}, "seconds"),
    ("negative seconds", {"seconds": -1}, "seconds"),
    ("too many seconds", {"seconds": 121}, "seconds"),
    ("nan seconds", {"seconds": math.nan}, "seconds"),
    ("infinite seconds", {"seconds": math.inf}, "seconds"),
    ("zero steps", {"steps": 0}, "steps"),
    ("too many steps", {"steps": 201}, "steps"),
    ("fractional steps", {"steps": 2.5}, "steps"),
    ("zero window", {"latent_window_size": 0}, "latent_window_size"),
    ("window too large", {"latent_window_size": 34}, "latent_window_size"),
    ("negative seed", {"seed": -1}, "seed"),
    ("seed beyond 2**63", {"seed": 2**64}, "seed"),
    ("nan guidance", {"distilled_guidance": math.nan}, "distilled_guidance"),
    ("negative guidance", {"distilled_guidance": -1}, "distilled_guidance"),
    ("cfg under 1", {"cfg": 0.5}, "cfg"),
    ("cfg over 100", {"cfg": 101}, "cfg"),
    ("negative rescale", {"cfg_rescale": -0.1}, "cfg_rescale"),
    ("rescale over 1", {"cfg_rescale": 1.5}, "cfg_rescale"),
    ("negative crf", {"crf": -1}, "crf"),
    ("crf over 51", {"crf": 52}, "crf"),
    ("resolution under 32", {"resolution": 31}, "resolution"),
    ("resolution over 1536", {"resolution": 1537}, "resolution"),
    ("zero cache threshold", {"cache_threshold": 0, "cache": "teacache"}, "cache_threshold"),
    ("negative memory to preserve", {"gpu_memory_preservation": -1}, "gpu_memory_preservation"),
    ("unknown sampler", {"sampler_variant": "bh3"}, "sampler_variant"),
    ("unknown model", {"model": "sd15"}, "model"),
    ("prompt of 20,001 characters", {"prompt": "x" * 20_001}, "prompt"),
]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD_PNG = _png(160, 120)
# (case, file bytes or None for no file, what the message says)
IMAGES = [
    ("text file named .png", b"this is not an image", "Use a PNG, JPEG"),
    ("truncated PNG", GOOD_PNG[: len(GOOD_PNG) // 2], "Re-download or re-export"),
    ("empty file", b"", "empty"),
    ("image under 64 px", _png(32, 32), "at least 64x64"),
    ("no image at all", None, "image"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "outputs"
    service = GenerationService(lambda: None, out, queue=JobQueue.for_output_dir(out))  # never started
    client = TestClient(build_api(service, Settings(output_dir=out)))
    yield client
    assert client.get("/jobs").status_code == 200, "the API is still up after every bad input"


@pytest.fixture(scope="module")
def good_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    path.write_bytes(GOOD_PNG)
    return path


def _cli_value(value) -> str:  # noqa: ANN001
    return "nan" if isinstance(value, float) and math.isnan(value) else "inf" if value == math.inf else str(value)


def _run_cli(capsys, *args) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse refusals (a choice list, a non-integer)
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("settings", "field"), [pytest.param(s, f, id=c) for c, s, f in SETTINGS])
def test_bad_settings_are_refused_by_the_ui_the_cli_and_the_api(api, good_image, tmp_path, capsys, settings, field):
    name, value = next(iter(settings.items()))
    # UI: the start handler builds the request; the service refuses it before queueing anything. (The page has
    # no control for the sampler variant, so that case cannot come from it.)
    if name in JOB_FIELDS:
        service = GenerationService(lambda: None, tmp_path / "ui")
        with pytest.raises(InvalidInputError) as refused:
            service.submit(build_request(str(good_image), {**FAST, **settings}))
        message, hint = readable_error(refused.value, str(good_image))
        assert refused.value.field == field and message.startswith(f"{field}: ") and hint is not None

    # CLI: exit 2 and a message naming the option as typed.
    option = OPTION.get(name, "--" + name.replace("_", "-"))
    code, err = _run_cli(capsys, "generate", "--image", good_image, "--models-dir", tmp_path / "none",
                         "--output", tmp_path / "out.mp4", option, _cli_value(value))
    assert code == cli.EXIT_BAD_INPUT, err
    assert option in err and "Traceback" not in err, err

    # API: 422 with the field.
    response = api.post("/jobs", files={"image": ("good.png", GOOD_PNG, "image/png")},
                        data={"settings": json.dumps({**FAST, **settings})})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and response.json()["error"]


@pytest.mark.parametrize(("content", "says"), [pytest.param(b, s, id=c) for c, b, s in IMAGES])
def test_bad_images_are_refused_by_the_ui_the_cli_and_the_api(api, tmp_path, capsys, content, says):
    path = tmp_path / "input.png"
    if content is not None:
        path.write_bytes(content)
    image = str(path) if content is not None else None

    service = GenerationService(lambda: None, tmp_path / "ui")
    with pytest.raises(InvalidInputError) as refused:
        service.submit(build_request(image, FAST))
    message, hint = readable_error(refused.value, image)
    assert refused.value.field == "image" and says in message + " " + hint
    assert str(tmp_path) not in message, "the UI names an upload by its file name, not its server path"

    code, err = _run_cli(capsys, "generate", "--image", path, "--output", tmp_path / "out.mp4")
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --image:"), err

    files = {"image": ("input.png", content, "image/png")} if content is not None else None
    response = api.post("/jobs", files=files, data={"settings": json.dumps(FAST)})
    assert response.status_code == 422, response.text
    assert str(tmp_path) not in response.text


SPECS = [
    ("spec that is not JSON", lambda spec: "{settings:", "spec"),
    ("spec of another version", lambda spec: json.dumps({**spec, "version": 3}), "version"),
    ("spec with an unknown setting", lambda spec: json.dumps({**spec, "settings": {"colour": 1}}), "settings.colour"),
    ("spec of another image", lambda spec: json.dumps({**spec, "image_sha256": "0" * 64}), "image"),
]


@pytest.mark.parametrize(("make", "field"), [pytest.param(m, f, id=c) for c, m, f in SPECS])
def test_bad_specs_are_refused_by_the_cli_queue_and_the_api(api, good_image, tmp_path, capsys, make, field):
    from framepack_core.jobs.spec import file_sha256

    spec = JobSpec.from_request(GenerationRequest(image=good_image, **FAST), file_sha256(good_image)).to_dict()
    text = make(spec)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(text)
    code, err = _run_cli(capsys, "jobs", "--output-dir", tmp_path / "outputs", "submit", "--image", good_image,
                         "--spec", spec_file)
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: ") and "Traceback" not in err, err

    response = api.post("/jobs", files={"image": ("good.png", GOOD_PNG, "image/png")}, data={"spec": text})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def test_the_catalogue_has_at_least_thirty_bad_inputs():
    assert len(SETTINGS) + len(IMAGES) + len(SPECS) >= 30
