"""Lightning callbacks and logging helpers: media grids, test metrics, the deformation error curve
of synthetic subjects, loggers, W&B run reader."""
