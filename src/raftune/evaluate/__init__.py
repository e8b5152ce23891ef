"""Evaluation: test sets, retrieval, model providers, metrics."""
