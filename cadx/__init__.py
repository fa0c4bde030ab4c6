"""cadx: computer-aided diagnosis of cancer on medical images."""

__version__ = "0.1.0"
