"""How images are normalised for the network, the part training and inference share: the graph normaliser
(unet_perf.input.pipeline.normalize) and its numpy twin (unet_perf.inference.predictor.normalize_array) both use
it, so inference needs nothing from the training pipeline.
"""

STD_FLOOR = 1e-6  # in [0, 1] units: the smallest std "standard" divides by, so a flat image normalises to zeros
