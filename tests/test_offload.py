"""Every placement of the memory plan, run on the CPU (device and offload device both the CPU) with the tiny models.

Offloading must not change what is computed: each placement's final latents and mp4 frames equal a run without a
plan, bit for bit; DISK reads back bit-identical weights; fp8 storage stays within a measured tolerance. The
CUDA-only arguments (streams, ``record_stream``, pinned memory) are checked against a fake of diffusers' hook.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framepack_core.events import JobFailed, JobFinished, Notice, SectionFinished
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.memory.hardware import FakeHardwareProbe, fake_hardware
from framepack_core.memory.job_planning import JobPlanner
from framepack_core.memory.offload import apply_component_plan, component_blocks, uniform_plan
from framepack_core.memory.plan import GIB, MemoryPlan, Placement, Workload
from framepack_core.memory.planner import plan_memory
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.sizes import find_sizes
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

C = Component
FAST = dict(latent_window_size=3, steps=3, resolution=64, seconds=0.8, cache="none")
# fp8 (e4m3, 3 mantissa bits) storage of the tiny transformer, computed in fp32: measured max |delta| of the final
# latents 0.0047 (values up to 4.5); the bound leaves a 10x margin.
FP8_MAX_ABS_DELTA = 0.05


@pytest.fixture(scope="module")
def source(tiny_models_dir: Path) -> ModelSource:
    return ModelSource(models_dir=tiny_models_dir)


@pytest.fixture(scope="module")
def input_image(gradient_image: Path) -> Path:
    return gradient_image


@pytest.fixture(scope="module")
def cpu_plan(source: ModelSource) -> MemoryPlan:
    sizes, _ = find_sizes("original", models_dir=source.models_dir)
    return plan_memory(sizes, fake_hardware(0, 16, device_type="cpu"), Workload(48, 64, 3))


class FixedPlanner:
    """A planner that always returns ``plan`` (and remembers what the engine told it)."""

    def __init__(self, plan: MemoryPlan) -> None:
        self.fixed = plan
        self.held: list[tuple[int, int]] = []

    plan_job = JobPlanner.plan_job  # as the engine asks: what the store holds, then ``plan``

    def plan(self, request, image_size, *, held_device_bytes=0, held_host_bytes=0, loras=()) -> MemoryPlan:
        self.held.append((held_device_bytes, held_host_bytes))
        return self.fixed


def _request(input_image: Path, folder: Path, name: str, **extra) -> GenerationRequest:
    return GenerationRequest(image=input_image, prompt="a cat walks", output=folder / f"{name}.mp4",
                             save_latents=folder / f"{name}.safetensors", **{**FAST, **extra})


def _run(engine: FramePackEngine, request: GenerationRequest) -> tuple[list, torch.Tensor, np.ndarray]:
    events = list(engine.generate(request))
    assert isinstance(events[-1], JobFinished), events[-1]
    latents = load_file(str(request.save_latents))["history_latents"]
    return events, latents, read_video_frames(events[-1].output_path)


def _engine(source: ModelSource, plan: MemoryPlan | None, tmp_path: Path) -> FramePackEngine:
    store = ModelStore(source, resolve_device_config("cpu"), plan, disk_offload_dir=tmp_path / "offload")
    return FramePackEngine(store, FixedPlanner(plan) if plan is not None else None)


@pytest.fixture(scope="module")
def reference(source, input_image, tmp_path_factory) -> tuple[torch.Tensor, np.ndarray]:
    folder = tmp_path_factory.mktemp("reference")
    _, latents, frames = _run(_engine(source, None, folder), _request(input_image, folder, "reference"))
    return latents, frames


@pytest.mark.parametrize(
    ("placement", "options"),
    [
        (Placement.CPU, {}),
        (Placement.RESIDENT, {}),
        (Placement.SWAP, {}),
        (Placement.BLOCKS, {"resident_blocks": 1}),
        (Placement.BLOCKS, {"resident_blocks": 0, "blocks_per_group": 2}),
    ],
    ids=["cpu", "resident", "swap", "blocks-1-resident", "blocks-groups-of-2"],
)
def test_every_placement_gives_the_same_latents_and_frames_as_no_plan(source, input_image, cpu_plan, reference,
                                                                       tmp_path, placement, options):
    plan = uniform_plan(cpu_plan, placement, **options)
    events, latents, frames = _run(_engine(source, plan, tmp_path), _request(input_image, tmp_path, "placed"))
    assert torch.equal(latents, reference[0])
    assert np.array_equal(frames, reference[1])
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any(m.startswith("Memory plan on ") for m in notices), notices


def test_disk_placement_reads_back_identical_weights(source, input_image, cpu_plan, reference, tmp_path):
    """The blocks go through safetensors files and come back bit-identical. The latents then differ from the
    mmap-loaded reference by CPU-kernel rounding only: the file tensors sit at other memory alignments, and this
    CPU's fp32 GEMM takes another path for 64-byte-aligned operands (measured: moving the reference's own weights
    to aligned memory changes its latents by 9.5e-7; DISK differs by the same order)."""
    engine = _engine(source, uniform_plan(cpu_plan, Placement.DISK), tmp_path)
    engine.models.use_plan(engine.planner.fixed)
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    blocks = component_blocks(transformer, C.TRANSFORMER)
    placed = engine.models._placed[C.TRANSFORMER]
    assert len(list(placed.disk_dir.glob("*.safetensors"))) == len(blocks), "one file per block"
    # Compare each layer's weights, as the block's hook read them back, with a freshly loaded copy. The checks
    # hang on the layers inside each block: they run after the block's hook has loaded it.
    fresh = ModelStore(source, resolve_device_config("cpu")).transformer(ModelVariant.ORIGINAL)
    expected: dict[int, torch.Tensor] = {}
    checked: set[int] = set()
    mismatches: list[str] = []

    def compare(layer, args, kwargs):  # noqa: ANN001
        for name, tensor in layer.named_parameters(recurse=False):
            checked.add(id(tensor))
            if not torch.equal(tensor.data, expected[id(tensor)]):
                mismatches.append(name)

    for block, fresh_block in zip(blocks, component_blocks(fresh, C.TRANSFORMER)):
        for layer, fresh_layer in zip(block.modules(), fresh_block.modules()):
            for tensor, fresh_tensor in zip(layer.parameters(recurse=False), fresh_layer.parameters(recurse=False)):
                expected[id(tensor)] = fresh_tensor.data
            layer.register_forward_pre_hook(compare, with_kwargs=True)

    _, latents, frames = _run(engine, _request(input_image, tmp_path, "disk"))
    assert not mismatches
    assert len(checked) >= 0.9 * len(expected), "nearly every weight was checked as it was used"
    assert torch.allclose(latents, reference[0], rtol=0, atol=1e-5)
    disk_dir = placed.disk_dir
    engine.models.release_all()
    assert not disk_dir.exists(), "the offload files are deleted with the model"


def test_fp8_storage_stays_within_tolerance_and_is_really_applied(source, input_image, cpu_plan, reference, tmp_path):
    for placement, options in ((Placement.RESIDENT, {}), (Placement.BLOCKS, {"resident_blocks": 1})):
        engine = _engine(source, uniform_plan(cpu_plan, placement, fp8=True, **options), tmp_path)
        _, latents, _ = _run(engine, _request(input_image, tmp_path, f"fp8-{placement.value}"))
        delta = (latents - reference[0]).abs().max().item()
        assert 0 < delta <= FP8_MAX_ABS_DELTA, (placement, delta)
        transformer = engine.models.transformer(ModelVariant.ORIGINAL)
        blocks = component_blocks(transformer, C.TRANSFORMER)
        assert all(b.attn.to_q.weight.dtype == torch.float8_e4m3fn for b in blocks)
        # diffusers keeps norms (and the modulation linears inside them) in the compute dtype.
        stored = [(p.numel(), p.dtype) for b in blocks for p in b.parameters()]
        fp8_share = sum(n for n, d in stored if d == torch.float8_e4m3fn) / sum(n for n, _ in stored)
        assert fp8_share > 0.5, fp8_share
        assert transformer.proj_out.weight.dtype == torch.float32, "the output projection is never stored in fp8"


def test_vae_tiling_and_slicing_follow_the_plan(source, input_image, cpu_plan, reference, tmp_path):
    base = uniform_plan(cpu_plan, Placement.CPU)
    tiled = replace(base, components=tuple(replace(c, vae_tiling=True, vae_slicing=True) if c.component == C.VAE
                                           else c for c in base.components))
    engine = _engine(source, tiled, tmp_path)
    _, latents, frames = _run(engine, _request(input_image, tmp_path, "tiled"))
    vae = engine.models.vae()
    assert vae.use_tiling and vae.use_slicing
    # The tiny frames (48x64) are below diffusers' smallest tile (256 px): nothing is split, nothing changes.
    assert np.array_equal(frames, reference[1])


class RecordingGroupOffloading:
    def __init__(self) -> None:
        self.calls: list[tuple[torch.nn.Module, dict]] = []

    def __call__(self, module: torch.nn.Module, **kwargs) -> None:
        self.calls.append((module, kwargs))


class ToyTransformer(torch.nn.Module):
    """The transformer's layout in small: non-block layers around two block lists (dual first, then single)."""

    def __init__(self) -> None:
        super().__init__()
        self.x_embedder = torch.nn.Linear(4, 4)
        self.transformer_blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
        self.single_transformer_blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.proj_out = torch.nn.Linear(4, 4)


class LocatedLayer(torch.nn.Linear):
    """A layer that only records the device it is sent to (so a test can send it to a GPU this machine lacks)."""

    location = "cpu"

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        self.location = fn(torch.zeros(())).device.type
        return self


class ToyTextEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = LocatedLayer(4, 4)
        self.layers = torch.nn.ModuleList(LocatedLayer(4, 4) for _ in range(3))
        self.norm = LocatedLayer(4, 4)

    def locations(self) -> tuple[str, list[str], str]:
        return self.embed_tokens.location, [layer.location for layer in self.layers], self.norm.location


def _component_plan(cpu_plan: MemoryPlan, component: C, **fields):
    return replace(cpu_plan.component(component), **fields)


def test_streamed_asks_diffusers_for_stream_prefetch_record_stream_and_pinned_copies(cpu_plan):
    plan = _component_plan(cpu_plan, C.TRANSFORMER, placement=Placement.STREAMED)
    for pin in (True, False):
        hooks = RecordingGroupOffloading()
        module = ToyTransformer()
        apply_component_plan(module, plan, "cuda:0", pin_memory=pin, group_offloading=hooks)
        [(target, kwargs)] = hooks.calls
        assert target is module
        assert kwargs == {"onload_device": torch.device("cuda:0"), "offload_device": torch.device("cpu"),
                          "offload_type": "block_level", "num_blocks_per_group": 1, "non_blocking": True,
                          "use_stream": True, "record_stream": True, "low_cpu_mem_usage": not pin}


def test_streamed_is_refused_without_cuda(cpu_plan):
    plan = _component_plan(cpu_plan, C.TRANSFORMER, placement=Placement.STREAMED)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        apply_component_plan(ToyTransformer(), plan, "cpu", group_offloading=RecordingGroupOffloading())


def test_transformer_blocks_keep_the_first_blocks_and_the_rest_of_the_model_on_the_device(cpu_plan):
    plan = _component_plan(cpu_plan, C.TRANSFORMER, placement=Placement.BLOCKS, resident_blocks=3,
                           blocks_per_group=2)
    module, hooks = ToyTransformer(), RecordingGroupOffloading()
    # The meta device stands in for a GPU: what moved there is visible in each tensor's device.
    applied = apply_component_plan(module, plan, "meta", group_offloading=hooks)
    blocks = [*module.transformer_blocks, *module.single_transformer_blocks]
    [(container, kwargs)] = hooks.calls
    assert list(container.blocks) == blocks[3:] and applied.offloaded_blocks == tuple(blocks[3:])
    assert kwargs == {"onload_device": torch.device("meta"), "offload_device": torch.device("cpu"),
                      "offload_type": "block_level", "num_blocks_per_group": 2}
    assert {p.device.type for b in blocks[:3] for p in b.parameters()} == {"meta"}
    assert {p.device.type for b in blocks[3:] for p in b.parameters()} == {"cpu"}
    assert module.x_embedder.weight.is_meta and module.proj_out.weight.is_meta
    with applied.on_device():  # the transformer's placement does not change per stage
        assert module.x_embedder.weight.is_meta


def test_encoder_blocks_move_its_other_layers_to_the_device_only_during_its_stage(cpu_plan):
    plan = _component_plan(cpu_plan, C.TEXT_ENCODER, placement=Placement.BLOCKS, resident_blocks=0)
    module = ToyTextEncoder()  # the meta device stands in for a GPU
    applied = apply_component_plan(module, plan, "meta", group_offloading=RecordingGroupOffloading())
    assert module.locations() == ("cpu", ["cpu"] * 3, "cpu")
    with applied.on_device():
        # The blocks are moved by their hooks as each one runs, not here.
        assert module.locations() == ("meta", ["cpu"] * 3, "meta")
    assert module.locations() == ("cpu", ["cpu"] * 3, "cpu")


def test_swap_moves_the_whole_component_around_its_stage_also_when_the_stage_fails(cpu_plan):
    plan = _component_plan(cpu_plan, C.IMAGE_ENCODER, placement=Placement.SWAP)
    module = ToyTextEncoder()
    applied = apply_component_plan(module, plan, "meta")
    assert module.locations() == ("cpu", ["cpu"] * 3, "cpu")
    with pytest.raises(torch.OutOfMemoryError):
        with applied.on_device():
            assert module.locations() == ("meta", ["meta"] * 3, "meta")
            raise torch.OutOfMemoryError("CUDA out of memory")
    assert module.locations() == ("cpu", ["cpu"] * 3, "cpu")


def test_remove_takes_the_diffusers_hooks_off(source, cpu_plan):
    try:  # the names offload.py imports to find the hooks again; a diffusers upgrade that moves them fails here
        from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING
    except ImportError as error:
        pytest.fail(f"diffusers moved its group offloading hook names; update framepack_core/memory/offload.py: {error}")
    transformer = ModelStore(source, resolve_device_config("cpu")).transformer(ModelVariant.ORIGINAL)
    plan = _component_plan(cpu_plan, C.TRANSFORMER, placement=Placement.BLOCKS, resident_blocks=1)
    applied = apply_component_plan(transformer, plan, "cpu")
    hooked = [b for b in component_blocks(transformer, C.TRANSFORMER) if getattr(b, "_diffusers_hook", None)
              and b._diffusers_hook.get_hook(_GROUP_OFFLOADING) is not None]
    assert len(hooked) == len(component_blocks(transformer, C.TRANSFORMER)) - 1
    applied.remove()
    assert all(b._diffusers_hook.get_hook(name) is None for b in hooked
               for name in (_GROUP_OFFLOADING, _LAZY_PREFETCH_GROUP_OFFLOADING))


def test_a_new_placement_is_applied_without_reloading_and_new_storage_reloads(source, input_image, cpu_plan,
                                                                              tmp_path):
    store = ModelStore(source, resolve_device_config("cpu"), uniform_plan(cpu_plan, Placement.BLOCKS,
                                                                         resident_blocks=1))
    transformer = store.transformer(ModelVariant.ORIGINAL)
    vae = store.vae()
    changed = store.use_plan(uniform_plan(cpu_plan, Placement.RESIDENT, vae=Placement.SWAP))
    assert C.TRANSFORMER in changed and C.VAE not in changed
    assert store.transformer(ModelVariant.ORIGINAL) is transformer, "same storage: placed again, not reloaded"
    assert all(getattr(b, "_diffusers_hook", None) is None or b._diffusers_hook.get_hook("group_offloading") is None
               for b in component_blocks(transformer, C.TRANSFORMER))
    assert store.vae() is vae
    store.use_plan(uniform_plan(cpu_plan, Placement.RESIDENT, fp8=True, vae=Placement.SWAP))
    reloaded = store.transformer(ModelVariant.ORIGINAL)
    assert reloaded is not transformer, "fp8 storage cannot be undone in place: reloaded"
    assert reloaded.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn


def test_text_encoders_are_released_after_encoding_when_the_plan_says_so(source, input_image, cpu_plan, tmp_path):
    plan = uniform_plan(cpu_plan, Placement.SWAP, release_text_encoders=True)
    engine = _engine(source, plan, tmp_path)
    _run(engine, _request(input_image, tmp_path, "released"))
    assert engine.models._text_encoders is None
    # The prompt stays cached: a second job with it does not load the encoders again.
    _run(engine, _request(input_image, tmp_path, "again", seed=2))
    assert engine.models._text_encoders is None


def test_out_of_memory_stops_the_job_with_the_next_plan_keeps_sections_and_the_next_job_runs(
        source, input_image, cpu_plan, tmp_path):
    # A GPU plan (applied on the CPU) so that the advice is the GPU one.
    plan = uniform_plan(cpu_plan, Placement.BLOCKS, resident_blocks=1, device_type="cuda", device_name="Fake GPU",
                       vram_budget_bytes=5 * GIB, preserve_bytes=GIB // 2)
    engine = _engine(source, plan, tmp_path)
    transformer = engine.models.transformer(ModelVariant.ORIGINAL)
    calls = []

    def out_of_memory_in_section_two(module, args, kwargs):  # noqa: ANN001
        calls.append(1)
        if len(calls) == FAST["steps"] + 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = transformer.register_forward_pre_hook(out_of_memory_in_section_two, with_kwargs=True)
    events = list(engine.generate(_request(input_image, tmp_path, "oom")))
    handle.remove()
    failed = events[-1]
    assert isinstance(failed, JobFailed), failed
    assert failed.message.startswith("The device ran out of memory")
    assert "GPU memory to preserve to" in failed.hint and "{fp8}" in failed.hint
    finished = [e for e in events if isinstance(e, SectionFinished)]
    assert failed.sections_done == 1 and failed.partial_path is not None
    assert probe_video(failed.partial_path).frame_count == finished[0].video_frames
    _run(engine, _request(input_image, tmp_path, "after-oom"))


def test_job_planner_plans_from_the_request_and_counts_held_weights_as_free(source, input_image, tmp_path):
    hardware = fake_hardware(8, 32, vram_free_gb=2)
    planner = JobPlanner(source, "cuda", probe=FakeHardwareProbe(hardware))
    request = _request(input_image, tmp_path, "planned", gpu_memory_preservation=1.5, fp8=True, cfg=2.0)
    plan = planner.plan(request, (300, 420), held_device_bytes=3 * GIB)
    assert plan.preserve_bytes == int(1.5 * GIB)
    assert plan.vram_budget_bytes == 5 * GIB - int(1.5 * GIB), "2 GiB free + 3 GiB of our own weights - 1.5"
    assert plan.component(C.TRANSFORMER).fp8
    assert plan.workload.real_cfg and (plan.workload.height, plan.workload.width) == (48, 64)
    assert plan.workload.latent_window_size == 3


def test_engine_with_the_cpu_planner_runs_and_announces_the_plan(source, input_image, reference, tmp_path):
    planner = JobPlanner(source, "cpu", probe=FakeHardwareProbe(fake_hardware(0, 16, device_type="cpu")))
    engine = FramePackEngine(ModelStore(source, resolve_device_config("cpu")), planner)
    events, latents, _ = _run(engine, _request(input_image, tmp_path, "cpu-planned"))
    assert torch.equal(latents, reference[0])
    [summary] = [e.message for e in events if isinstance(e, Notice) and e.message.startswith("Memory plan")]
    assert "everything on the CPU" in summary
