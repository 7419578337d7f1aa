"""Data backends behind the batch contract of data_pipelines/batch.py: `cpu` (PyTorch DataLoader workers)."""
