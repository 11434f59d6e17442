"""Lightning callbacks and logging helpers: media grids, test metrics, loggers, W&B run reader."""
