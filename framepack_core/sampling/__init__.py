"""The maths of one section: frame-context packing, the section schedule, sigmas, guidance, the UniPC sampler, the packed denoiser and TeaCache."""
