"""Smoke test of bench/memory_plans.py (benchmark (e)) on two simulated machines: real configs, meta device."""

from bench import memory_plans


def test_memory_plans_script_passes_and_prints_the_table(capsys):
    assert memory_plans.main(["--vram", "6", "80", "--ram", "32"]) == 0
    out = capsys.readouterr().out
    assert "608x640, window 9" in out and "| VRAM GB | RAM GB | transformer" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 6 |", "| 80 |"))]
    assert len(rows) == 2
    assert rows[0].startswith("| 6 | 32 | streamed, bf16 |")
    assert rows[1].startswith("| 80 | 32 | resident, bf16 | resident | no |") and rows[1].endswith("| x1.00 |")


def test_a_machine_on_which_nothing_fits_fails_the_script(capsys):
    assert memory_plans.main(["--vram", "2", "--ram", "32"]) == 1
    assert "no plan fits" in capsys.readouterr().err
