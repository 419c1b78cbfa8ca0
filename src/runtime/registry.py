"""Name -> builder tables for datasets and models; every module of the package registers itself on import."""
import importlib
import pkgutil


class Registry(object):
    def __init__(self, package_name, package_path, skip=()):
        self.package_name, self.package_path, self.skip = package_name, package_path, set(skip)
        self.builders, self.meta = {}, {}

    def register(self, name, **meta):
        """Decorator: fn is built by `name`; meta holds its defaults (a dataset's task and model, say)."""
        def deco(fn):
            self.builders[name] = fn
            self.meta[name] = meta
            return fn
        return deco

    def discover(self):
        for info in pkgutil.iter_modules(self.package_path):
            if not info.name.startswith("_") and info.name not in self.skip:
                importlib.import_module(self.package_name + "." + info.name)

    def names(self):
        return sorted(self.builders)

    def __getitem__(self, name):
        return self.builders[name]
