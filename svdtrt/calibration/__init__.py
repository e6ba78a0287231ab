"""Calibration sets from real sampling trajectories, and int8 / fp8 Q/DQ quantization."""
