"""The Gradio page: one module per tab, streamed frames and rendering, and the named Gradio API endpoints."""
