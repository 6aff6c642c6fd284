"""synthpart: partitioned neural network training with synthetic intermediate labels (SIL).

The network is cut into segments, each trained on its own device against fixed random class
vectors (SIL tables) at the cuts, with no gradient traffic between devices.

    import synthpart
    model = synthpart.load_model("exported/")   # from `synthpart export RUN --method M --out DIR`
    logits = model(images)                      # raw inputs, e.g. uint8 [batch, 28, 28, 1]
"""

from synthpart.export import load_model

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]
