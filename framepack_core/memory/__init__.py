"""Fitting a job into VRAM and RAM: plan types, the planner's search, reports and advice, hardware probing, activation and compute estimates, offloading hooks."""
