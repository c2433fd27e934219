"""Datasets: one reader per file format, the generated sources, per-dataset DVC versions, the
prepared arrays the training jobs read, and streaming of images too large to hold in memory."""
