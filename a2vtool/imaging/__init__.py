"""Diffusion side: pipeline loading, conditioning from adapter outputs, seeded generation, evaluation."""
