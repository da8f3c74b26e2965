"""Experiment planning: dataset fingerprint -> a complete training config (``semi3d plan``)."""
