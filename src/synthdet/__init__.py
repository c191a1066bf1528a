"""synthdet: reproducible benchmarks for detecting AI-generated images (GenImage, ImagiNet)."""

__version__ = "0.1.0"
