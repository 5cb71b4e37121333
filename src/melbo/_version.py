"""melbo's version, the one version source: ``melbo.__version__`` re-exports it and pyproject.toml
reads it (``dynamic = ["version"]``). A leaf module, so that code inside the package (the
features file format, the organism recipe, the CLI) records the version without importing the
package root, which sits above everything."""

__version__ = "0.1.0"
