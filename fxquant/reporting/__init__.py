"""What a compressed model reports: per-layer table and sizes, plots, the annotated-graph drawing."""
