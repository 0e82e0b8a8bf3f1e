"""``doctor``: every check's finding and fix, on made-up machines for what this one cannot show (an RTX 50 card
with a cu126 torch, no ffmpeg, a full disk ...), and the whole command on this machine in demo mode."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from framepack_core.cli import main as cli
from framepack_core.doctor import CheckStatus, DoctorReport, run_doctor
from framepack_core.doctor.checks import (
    GIB,
    TORCH_CU126,
    TORCH_CU128,
    check_attention,
    check_disk,
    check_driver,
    check_ffmpeg,
    check_gpu_support,
    check_memory,
    check_models,
    check_output_folder,
    check_python,
    check_torch,
    run_checks,
)
from framepack_core.doctor.facts import AttentionFacts, SystemFacts, TorchFacts
from framepack_core.doctor.tiny_job import check_tiny_job
from framepack_core.memory.hardware import FakeHardwareProbe, fake_hardware
from framepack_core.memory.job_planning import JobPlanner
from framepack_core.models.inventory import ComponentStatus, ModelInventory, files_for
from framepack_core.models.loading import ModelSource
from framepack_core.request import GenerationRequest

CU128 = TorchFacts("2.7.1+cu128", "12.8", ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"), True)
CU126 = TorchFacts("2.6.0+cu126", "12.6", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), True)
RTX_4090 = fake_hardware(24, 64, name="NVIDIA GeForce RTX 4090", capability=(8, 9))
RTX_5090 = fake_hardware(32, 64, name="NVIDIA GeForce RTX 5090", capability=(12, 0))


def _plan(hardware, tmp_path: Path):  # noqa: ANN001, ANN202
    planner = JobPlanner(ModelSource(models_dir=tmp_path / "no-models", offline=True), hardware.device_type,
                         probe=FakeHardwareProbe(hardware))
    return planner.plan(GenerationRequest(image=Path("any.png")), None)


def _inventory(tmp_path: Path, problems: dict[str, tuple[bool, str]] | None = None) -> ModelInventory:
    problems = problems or {}
    statuses = tuple(ComponentStatus(files, tmp_path, *problems.get(files.name, (True, None)), 10 * GIB)
                     for files in files_for("original"))
    return ModelInventory(statuses, tmp_path, 500 * GIB)


@pytest.fixture
def healthy(tmp_path) -> SystemFacts:
    """A Linux PC with an RTX 4090, a cu128 torch, a new driver, 64 GiB RAM and everything installed."""
    return SystemFacts(
        python_version=(3, 11, 7), system="Linux", torch=CU128, nvidia_gpus=("NVIDIA GeForce RTX 4090",),
        driver_version="575.51.02", hardware=RTX_4090, swap_total_bytes=16 * GIB, swap_free_bytes=16 * GIB,
        ffmpeg="/usr/bin/ffmpeg", ffprobe="/usr/bin/ffprobe",
        attention=(AttentionFacts("native", True), AttentionFacts("sage", True, "imports"),
                   AttentionFacts("flash", None, "not installed")),
        models=_inventory(tmp_path), output_dir=tmp_path / "outputs", output_free_bytes=200 * GIB,
        plan=_plan(RTX_4090, tmp_path))


def test_a_healthy_gpu_pc_passes_every_check(healthy):
    results = run_checks(healthy)
    assert [r.status for r in results] == [CheckStatus.OK] * len(results), [r for r in results if r.status != "ok"]
    assert not DoctorReport(tuple(results)).failed


def test_an_rtx_50_card_with_a_cu126_torch_fails_with_the_cu128_install_command(healthy):
    facts = replace(healthy, torch=CU126, hardware=RTX_5090, nvidia_gpus=("NVIDIA GeForce RTX 5090",))
    result = check_gpu_support(facts)
    assert result.status == CheckStatus.FAILED
    assert "sm_120" in result.found and "no kernel image is available" in result.found and "sm_50 to sm_90" in result.found
    assert result.fix.startswith("RTX 50 series cards need") and TORCH_CU128 in result.fix


def test_an_old_card_missing_from_a_new_build_is_sent_to_the_cu126_build(healthy):
    pascal = fake_hardware(8, 32, name="NVIDIA GeForce GTX 1080", capability=(6, 1))
    result = check_gpu_support(replace(healthy, hardware=pascal))
    assert result.status == CheckStatus.FAILED and TORCH_CU126 in result.fix


def test_a_cpu_only_torch_on_a_pc_with_an_nvidia_gpu_fails_with_the_cuda_install(healthy):
    cpu_torch = TorchFacts("2.7.1+cpu", None, (), False)
    result = check_gpu_support(replace(healthy, torch=cpu_torch, hardware=fake_hardware(0, 64, "cpu")))
    assert result.status == CheckStatus.FAILED and "CPU-only build" in result.found and result.fix == TORCH_CU128


def test_a_cuda_torch_that_cannot_reach_the_gpu_points_at_the_driver(healthy):
    unusable = replace(CU128, cuda_available=False, arch_list=())
    result = check_gpu_support(replace(healthy, torch=unusable, hardware=fake_hardware(0, 64, "cpu")))
    assert result.status == CheckStatus.FAILED and "driver" in result.found and "nvidia.com" in result.fix


def test_no_gpu_at_all_is_a_warning_that_demo_mode_still_works(healthy):
    cpu = replace(healthy, torch=TorchFacts("2.13.0+cpu", None, (), False), nvidia_gpus=(), driver_version=None,
                  hardware=fake_hardware(0, 24, "cpu"))
    result = check_gpu_support(cpu)
    assert result.status == CheckStatus.WARNING and "demo mode" in result.found
    assert check_driver(cpu).status == CheckStatus.SKIPPED


@pytest.mark.parametrize(("system", "driver", "card", "needed"), [
    ("Linux", "520.61.05", RTX_4090, "525.60"),
    ("Windows", "527.10", RTX_4090, "527.41"),
    ("Linux", "560.35.03", RTX_5090, "570.0"),
])
def test_a_driver_older_than_the_build_or_the_card_needs_fails(healthy, system, driver, card, needed):
    result = check_driver(replace(healthy, system=system, driver_version=driver, hardware=card))
    assert result.status == CheckStatus.FAILED and needed in result.found and "nvidia.com" in result.fix


def test_too_little_ram_and_page_file_fails_with_the_page_file_steps_on_windows(healthy, tmp_path):
    small = fake_hardware(8, 16, name="NVIDIA GeForce RTX 3060 Ti", capability=(8, 6))
    # Planned while 16 GiB were free; now other programs hold most of it.
    busy = replace(small, ram_available_bytes=6 * GIB)
    facts = replace(healthy, system="Windows", hardware=busy, plan=_plan(small, tmp_path), swap_free_bytes=0)
    result = check_memory(facts)
    assert result.status == CheckStatus.FAILED and "Loading checkpoint shards" in result.found
    assert "Virtual memory" in result.fix and "page file of at least" in result.fix
    linux = check_memory(replace(facts, system="Linux"))
    assert "sudo mkswap /swapfile" in linux.fix
    enough_swap = check_memory(replace(facts, swap_free_bytes=64 * GIB))
    assert enough_swap.status == CheckStatus.WARNING and "swap" in enough_swap.found


def test_a_transformer_streamed_from_disk_warns_that_more_ram_is_faster(healthy, tmp_path):
    little_ram = fake_hardware(6, 8, name="NVIDIA GeForce RTX 3060", capability=(8, 6))
    result = check_memory(replace(healthy, hardware=little_ram, plan=_plan(little_ram, tmp_path)))
    assert result.status == CheckStatus.WARNING and "from disk" in result.found and "RAM" in result.fix


def test_a_full_output_drive_fails_and_a_nearly_full_one_warns(healthy):
    full = check_disk(replace(healthy, output_free_bytes=100 * 1024**2))
    assert full.status == CheckStatus.FAILED and "output folder" in full.fix
    assert check_disk(replace(healthy, output_free_bytes=3 * GIB)).status == CheckStatus.WARNING


def test_weights_that_do_not_fit_the_drive_fail_before_the_download(healthy, tmp_path):
    inventory = replace(_inventory(tmp_path, {"transformer:original": (False, "not in the Hugging Face cache")}),
                        free_bytes=10 * GIB)
    result = check_disk(replace(healthy, models=inventory, download_bytes=25 * GIB))
    assert result.status == CheckStatus.FAILED and "25.0 GiB" in result.found and "models folder" in result.fix


@pytest.mark.parametrize(("system", "command"), [("Linux", "sudo apt-get install ffmpeg"),
                                                 ("Windows", "winget install ffmpeg"), ("Darwin", "brew install ffmpeg")])
def test_missing_ffmpeg_says_how_to_install_it_on_each_system(healthy, system, command):
    result = check_ffmpeg(replace(healthy, system=system, ffmpeg=None, ffprobe=None))
    assert result.status == CheckStatus.WARNING and "ffmpeg and ffprobe not found" in result.found
    assert command in result.fix


def test_an_attention_package_built_for_another_torch_is_named_with_its_reinstall(healthy):
    broken = AttentionFacts("sage", False, "ImportError: undefined symbol: _ZN3c10")
    result = check_attention(replace(healthy, attention=(AttentionFacts("native", True), broken)))
    assert result.status == CheckStatus.WARNING and "undefined symbol" in result.found
    assert "pip uninstall -y sageattention, then pip install sageattention" in result.fix
    assert "works: native, sage" in check_attention(healthy).found


def test_damaged_model_files_fail_and_missing_ones_warn_with_the_download_command(healthy, tmp_path):
    damaged = check_models(replace(healthy, models=_inventory(tmp_path, {"vae": (True, "truncated header")})))
    assert damaged.status == CheckStatus.FAILED and "vae: truncated header" in damaged.found
    assert "models download" in damaged.fix
    missing = check_models(replace(healthy, models=_inventory(tmp_path, {"transformer:original": (False, "not there")}),
                                   download_bytes=24 * GIB))
    assert missing.status == CheckStatus.WARNING and "transformer" in missing.found and "24.0 GiB" in missing.found


def test_an_output_folder_that_cannot_be_written_fails(healthy):
    result = check_output_folder(replace(healthy, output_write_error="PermissionError: [Errno 13] denied"))
    assert result.status == CheckStatus.FAILED and "Errno 13" in result.found and "output folder" in result.fix


def test_old_python_and_missing_or_old_torch_fail(healthy):
    assert check_python(replace(healthy, python_version=(3, 9, 18))).status == CheckStatus.FAILED
    missing = check_torch(replace(healthy, torch=None, torch_error="ModuleNotFoundError: No module named 'torch'"))
    assert missing.status == CheckStatus.FAILED and "No module named" in missing.found and TORCH_CU128 in missing.fix
    old = check_torch(replace(healthy, torch=replace(CU128, version="2.4.1+cu121")))
    assert old.status == CheckStatus.FAILED and "2.5" in old.found


def test_the_table_shows_each_failure_with_its_fix_and_json_has_every_check(healthy):
    report = DoctorReport(tuple(run_checks(replace(healthy, ffmpeg=None, output_write_error="denied"))))
    table = report.table()
    assert "Output folder" in table and "FAILED" in table and "Fix: Choose an output folder" in table
    assert "1 check(s) failed" in table
    data = json.loads(report.to_json())
    assert data["passed"] is False and len(data["checks"]) == len(report.results)


def test_a_tiny_job_on_a_device_this_machine_lacks_fails_with_the_reason(tiny_models_dir):
    result = check_tiny_job("cuda", tiny_models_dir)
    assert result.status == CheckStatus.FAILED and "cuda" in result.found.lower()


def test_doctor_passes_in_demo_mode_on_this_machine_with_the_tiny_job(tiny_models_dir, tmp_path):
    report = run_doctor(tiny_models_dir, tmp_path / "outputs", "cpu", demo=True)
    assert not report.failed, report.table()
    last = report.results[-1]
    assert last.name == "End-to-end job" and last.status == CheckStatus.OK and "video" in last.found


def test_the_command_prints_json_and_exits_1_on_a_failure(tiny_models_dir, tmp_path, capsys):
    code = cli.main(["doctor", "--quick", "--json", "--demo", "--models-dir", str(tiny_models_dir),
                     "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    data = json.loads(capsys.readouterr().out)
    assert code == cli.EXIT_OK and data["passed"] is True
    assert data["checks"][-1] == {"check": "End-to-end job", "status": "skipped", "found": "quick check: not run", "fix": ""}
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    code = cli.main(["doctor", "--quick", "--demo", "--models-dir", str(tiny_models_dir),
                     "--output-dir", str(blocked / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED and "Output folder" in out and "FAILED" in out


def test_the_pages_system_check_shows_the_table_to_an_admin_only(tiny_models_dir, tmp_path):
    from types import SimpleNamespace

    from app.access import Viewer
    from app.ui.system_check_panel import system_check

    context = SimpleNamespace(settings=SimpleNamespace(models_dir=tiny_models_dir, output_dir=tmp_path / "out",
                                                       device="cpu", demo=True))
    rows, summary = system_check(False, Viewer.of("bob", logins_on=True, admins=("alice",)), context)
    assert rows == [] and "Only an admin" in summary
    rows, summary = system_check(False, Viewer.of("alice", logins_on=True, admins=("alice",)), context)
    checks = {row[0]: row[1] for row in rows}
    assert checks["Output folder"] == "ok" and checks["End-to-end job"] == "skipped"
    assert checks["Model files (demo set)"] == "ok" and "No failures" in summary
