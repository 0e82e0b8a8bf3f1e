"""Gradio UI and job service over `framepack_core`. Nothing here generates video itself."""
