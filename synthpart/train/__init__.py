"""Training: the one epoch loop, segment objectives, and the schedules built on them."""
