"""a2vtool: federated audio-to-image generation, as composable CLI stages that talk through artifacts."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
