"""What users see of a run: HTML/markdown reports, next-cases-to-label suggestions, model export
and a methods comparison (``semi3d report | suggest | export | compare``)."""
