"""FramePack image-to-video engine: packing, sampling, decoding and writing, with no UI dependencies.

Importing this package is cheap and never touches CUDA; heavy libraries load on first use.
"""

__version__ = "0.1.0"
