"""Training strategies other than plain DDP. Each module imports its framework lazily."""
