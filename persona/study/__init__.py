"""Experiments at scale: local W&B-format sweeps (`persona sweep`), one sweep point as fit then
test (`persona trial`), and offline comparison of finished runs (`persona compare`)."""
