"""Data backends behind the batch contract of data_pipelines/batch.py: `cpu` (PyTorch DataLoader workers) and
`dali` (NVIDIA DALI; imported lazily). harness/data.py chooses between them (`data.backend`)."""
