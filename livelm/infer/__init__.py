"""Inference: the one generation engine, text streams, evaluation metrics."""
