"""Image, perceptual and geometry metrics, evaluation protocols and offline LPIPS weights."""
