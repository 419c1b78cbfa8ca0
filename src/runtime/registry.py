"""Name -> builder tables for datasets and models; every module of the package registers itself on import.
A value KIND:ARG names an entry registered with an argument (folder:PATH, timm:NAME); a plain value, one without."""
import importlib
import pkgutil


def kind(value):
    """The registered name of a value: folder for folder:PATH, the value itself otherwise."""
    return value.partition(":")[0]


def argument(value):
    """The ARG of a value KIND:ARG ('' for a plain name)."""
    return value.partition(":")[2]


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

    def known(self, value, takes):
        """Whether value names an entry: a registered name, or KIND:ARG of one registered with `takes` true."""
        meta = self.meta.get(kind(value))
        if meta is None:
            return False
        return bool(argument(value)) if meta.get(takes) else ":" not in value

    def choices(self, takes, placeholder):
        """The values, for messages: the names, and KIND:PLACEHOLDER of the entries registered with `takes`."""
        return [n + ":" + placeholder if self.meta[n].get(takes) else n for n in self.names()]

    def __getitem__(self, name):
        return self.builders[name]
