"""Prompts that change over time: the ``[0s: ...] [3s: ...]`` grammar (``timed``), which prompt (or blend of
two) each section gets (``sections``), and the embeddings each section is conditioned on (``embeddings``)."""
