"""Simulated CPU devices for every test: placement is tested, not speed."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
