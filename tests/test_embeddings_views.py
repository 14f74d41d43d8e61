"""Zero-copy views of the embedding cache: same values as load(), no copy of the data."""

from __future__ import annotations

import torch

from a2vtool.embeddings import import_tensors, open_cache


def test_views_match_rows_for_every_dtype_and_order(tmp_path):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        rows = [(f"c{i}", "ab"[i % 2], None, torch.randn(3, 4, generator=g).to(dtype)) for i in range(9)]
        cache = open_cache(import_tensors(tmp_path / str(dtype), rows, shard_rows=4))
        entries = list(reversed(cache.entries(classes=["a"])))
        views = cache.views(entries)
        assert len(views) == len(entries) == 5
        assert torch.equal(torch.stack(views), cache.load(entries))
        assert all(v.dtype == dtype and v.shape == (3, 4) for v in views)


def test_views_do_not_write_back_to_the_cache(tmp_path):
    rows = [(f"c{i}", "a", None, torch.full((2, 2), float(i))) for i in range(3)]
    cache = open_cache(import_tensors(tmp_path / "c", rows))
    v = cache.views(cache.entries())[1]
    v += 100  # copy-on-write: the process sees its change, the file does not
    fresh = open_cache(tmp_path / "c")
    assert torch.equal(fresh.load(fresh.entries())[1], torch.full((2, 2), 1.0))
