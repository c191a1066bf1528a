"""synthdet: reproducible benchmarks for detecting AI-generated images (GenImage, ImagiNet)."""

import os

# The one place the project says "no model hub": weights come from local files unless the user
# exports HF_HUB_OFFLINE=0. Set before anything imports timm / huggingface_hub (they read it then).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
