"""Training: the one trainer loop, checkpoints, objectives, fine-tuning, the other architectures.

`livelm.train` is both this package and the API function `livelm.train(config, data=, out=)`: once any
`livelm.train.*` module is imported, Python binds the name `livelm.train` to this package, which would
hide the function. So the package itself is callable and forwards to livelm.api.train.
"""
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from livelm.api import train
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
