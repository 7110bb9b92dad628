"""Training: the one trainer loop, resume state, objectives, chat fine-tuning, recipes for the other architectures.

(`livelm.train(config, data=, out=)`, the Python API, is livelm/api.py; this package is named `training`
so that the two never shadow each other.)
"""
