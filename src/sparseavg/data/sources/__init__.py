"""Built-in data sets, one module each; every module exposes ``load(**options) -> Dataset``."""
