"""Names of the embedding cache's on-disk format, shared by the reader/writer (embeddings.py) and maintenance
(embeddings_admin.py): a leaf module, so neither has to import the other for them."""

from __future__ import annotations

KIND = "a2v.embeddings"              # manifest kind of a cache directory
SHARD_KIND = "a2v.embeddings.shard"  # safetensors header kind of one shard
TENSOR = "embeddings"                # the tensor of a shard: rows x tokens x dim
