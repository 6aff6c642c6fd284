"""Simulated CPU devices for every test: placement is tested, not speed."""

import jax

jax.config.update("jax_num_cpu_devices", 4)
# Bring the backend up now, so no code under test can change the device count later.
assert len(jax.devices()) == 4
