"""Packed-context indices and history bookkeeping for both models, against the official index splits."""

import pytest
import torch

from framepack_core.models.components import ModelVariant
from framepack_core.sampling.packing import LatentHistory, plan_sections


def _lists(plan):
    return (plan.latent_indices.tolist(), plan.clean_latent_indices.tolist(), plan.clean_latent_2x_indices.tolist(),
            plan.clean_latent_4x_indices.tolist())


def test_original_single_section_sits_next_to_the_start_frame():
    (plan,) = plan_sections(ModelVariant.ORIGINAL, 1, 9)
    assert plan.is_last and plan.latent_padding == 0
    assert _lists(plan) == (list(range(1, 10)), [0, 10], [11, 12], list(range(13, 29)))


def test_original_four_sections_generate_the_end_first():
    plans = plan_sections(ModelVariant.ORIGINAL, 4, 9)
    assert [p.latent_padding for p in plans] == [3, 2, 1, 0]
    assert [p.is_last for p in plans] == [False, False, False, True]
    # Section 1 targets t=28..36 with the zero "future" context after it.
    assert _lists(plans[0]) == (list(range(28, 37)), [0, 37], [38, 39], list(range(40, 56)))
    assert _lists(plans[1]) == (list(range(19, 28)), [0, 28], [29, 30], list(range(31, 47)))
    assert _lists(plans[3]) == (list(range(1, 10)), [0, 10], [11, 12], list(range(13, 29)))


def test_original_six_sections_repeat_padding_two():
    plans = plan_sections(ModelVariant.ORIGINAL, 6, 9)
    assert [p.latent_padding for p in plans] == [3, 2, 2, 2, 1, 0]
    assert plans[1].latent_indices.tolist() == plans[2].latent_indices.tolist() == list(range(19, 28))
    assert _lists(plans[5]) == (list(range(1, 10)), [0, 10], [11, 12], list(range(13, 29)))


@pytest.mark.parametrize("sections", [1, 4, 6])
def test_f1_indices_are_the_same_every_section(sections):
    plans = plan_sections(ModelVariant.F1, sections, 9)
    assert len(plans) == sections and plans[-1].is_last
    for plan in plans:
        assert plan.latent_padding is None
        assert _lists(plan) == (list(range(20, 29)), [0, 19], [17, 18], list(range(1, 17)))


def test_indices_follow_the_window_size():
    (plan,) = plan_sections(ModelVariant.F1, 1, 3)
    assert plan.latent_indices.tolist() == [20, 21, 22]
    plans = plan_sections(ModelVariant.ORIGINAL, 2, 3)
    assert plans[0].latent_indices.tolist() == [4, 5, 6] and plans[0].clean_latent_indices.tolist() == [0, 7]


def _start(value=1.0):
    return torch.full((1, 16, 1, 2, 3), value)


def test_original_history_prepends_and_adds_the_start_latent_last():
    history = LatentHistory(ModelVariant.ORIGINAL, _start())
    ctx = history.context()
    assert ctx.clean_latents.shape[2] == 2 and torch.equal(ctx.clean_latents[:, :, :1], _start())
    assert ctx.clean_latents_2x.abs().sum() == 0 and ctx.clean_latents_4x.shape[2] == 16
    first = torch.full((1, 16, 9, 2, 3), 2.0)
    assert history.add_section(first, is_last=False).shape[2] == 9
    assert torch.equal(history.context().clean_latents[:, :, 1:], first[:, :, :1])
    last = torch.full((1, 16, 9, 2, 3), 3.0)
    added = history.add_section(last, is_last=True)
    assert added.shape[2] == 10 and history.total_generated_latent_frames == 19
    real = history.real_history_latents
    assert real.shape[2] == 19
    assert torch.equal(real[:, :, :1], _start()) and real[0, 0, 1, 0, 0] == 3 and real[0, 0, -1, 0, 0] == 2
    assert history.latents_to_decode(1, True, 9).shape[2] == 19


def test_f1_history_appends_after_the_start_latent():
    history = LatentHistory(ModelVariant.F1, _start())
    ctx = history.context()
    # First section: the 1x context is the start latent itself, so clean = [start, start].
    assert torch.equal(ctx.clean_latents, torch.cat([_start(), _start()], dim=2))
    assert history.latents_to_decode(0, False, 9).shape[2] == 1
    history.add_section(torch.full((1, 16, 9, 2, 3), 2.0), is_last=False)
    assert history.total_generated_latent_frames == 10
    assert history.latents_to_decode(0, False, 9).shape[2] == 10
    history.add_section(torch.full((1, 16, 9, 2, 3), 3.0), is_last=True)
    ctx = history.context()
    assert ctx.clean_latents[0, 0, 1, 0, 0] == 3 and ctx.clean_latents_2x[0, 0, :, 0, 0].tolist() == [3, 3]
    assert history.latents_to_decode(1, True, 9).shape[2] == 18
    real = history.real_history_latents
    assert real.shape[2] == 19 and torch.equal(real[:, :, :1], _start())
