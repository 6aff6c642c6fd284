"""synthpart: partitioned neural network training with synthetic intermediate labels (SIL).

The network is cut into segments, each trained on its own device against fixed random class
vectors (SIL tables) at the cuts, with no gradient traffic between devices.
"""

__version__ = "0.1.0"
