"""Cached embeddings of a frozen encoder: what is stored equals the encoder's output, it is
computed once and shared by training and evaluation, decoder training learns on it, and a
different encoder never reads another's cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tunesam.letterbox import letterbox_image, letterbox_shape
from tunesam.data.store import PreparedData
from tunesam.config import TrainConfig
from tunesam.kinds import load_run_model, open_run
from tunesam.kinds import train
from tunesam.eval.evaluate import evaluate_model, evaluate_run
from tunesam.engine.embedding_cache import EmbeddingCache, fill_embedding_cache
from tunesam.models.registry import build_sam


def _frozen(arch: str = "litemedsam_test", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_sam(arch, image_size=64).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_cached_embeddings_equal_the_encoder_and_are_computed_once(prepared: Path, tmp_path: Path) -> None:
    data = PreparedData.open(prepared)
    model = _frozen()
    rows = data.rows("train", include_empty=False)[:5]
    cache = fill_embedding_cache(model, data, tmp_path, rows, torch.device("cpu"))
    model.train(True)  # drop the fused copy: compare with the plain encoder
    for r in rows:
        image = data.slice(int(r))[0]
        x = letterbox_image(image, 64, model.interpolation)[None]
        want = model.encode(x, torch.tensor([letterbox_shape(*image.shape, 64)]))
        assert torch.allclose(cache.get([int(r)]), want, atol=1e-5)
    calls: list[list[int]] = []
    again = EmbeddingCache.for_model(tmp_path, model, data.manifest["fingerprint"], len(data.index))
    assert again.fill(rows, lambda chunk: calls.append(chunk) or torch.zeros(len(chunk), 32, 16, 16)) == 0
    assert calls == [] and again.folder == cache.folder
    other = EmbeddingCache.for_model(tmp_path, _frozen(seed=1), data.manifest["fingerprint"], len(data.index))
    assert other.folder != cache.folder and other.missing(rows) == [int(r) for r in rows]
    with pytest.raises(KeyError, match="not cached"):
        other.get(rows)


def test_decoder_training_on_cached_embeddings_learns_and_evaluation_reuses_them(prepared: Path,
                                                                                 tmp_path: Path) -> None:
    torch.save(build_sam("litemedsam_test", image_size=64).state_dict(), tmp_path / "base.pth")
    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch=None, checkpoint=str(tmp_path / "base.pth"),
                      tune="decoder", method="vanilla", epochs=20, batch_size=4, lr=1e-2, warmup=5, device="cpu",
                      num_workers=0, patience=0, cache_embeddings=True, embedding_cache=str(tmp_path / "cache"))
    run = train(cfg)
    resolved = open_run(run).config
    assert resolved.arch == "litemedsam_test" and resolved.image_size == 64 and resolved.pixel_norm == "minmax"
    assert resolved.interpolation == "area"
    (folder,) = list((tmp_path / "cache").iterdir())
    data = PreparedData.open(prepared)
    done = np.load(folder / "done.npy")
    assert set(np.flatnonzero(done)) == set(data.rows("train").tolist()) | set(data.rows("val", False).tolist())
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert float(rows[-1][1]) < 0.7 * float(rows[0][1])  # the loss falls
    assert max(float(r[2]) for r in rows) > 30  # and the decoder finds the discs on a random frozen encoder
    cached = evaluate_run(run, device="cpu")
    assert np.load(folder / "done.npy").sum() == len(data.index)  # the test slices joined the same cache
    direct = evaluate_model(load_run_model(open_run(run), "best"), data, device="cpu")
    assert cached["pooled"]["mean"]["dsc"] == pytest.approx(direct["pooled"]["mean"]["dsc"], abs=0.05)
    assert cached["mean"]["dsc"] == pytest.approx(direct["mean"]["dsc"], abs=0.1)


def test_caching_needs_a_frozen_encoder() -> None:
    with pytest.raises(ValueError, match="frozen image encoder"):
        TrainConfig(data="d", out="o", arch="vit_test", tune="encoder-decoder", method="lora", cache_embeddings=True)


def test_area_resize_averages_pixel_areas() -> None:
    image = np.kron(np.array([[0, 100], [200, 40]], np.uint8), np.ones((2, 2), np.uint8))  # 4 x 4 blocks
    image[0, 0] = 8  # one pixel of the first block differs: its block averages to 2
    out = letterbox_image(image, 2, "area")[0].numpy()
    assert out.tolist() == [[2, 100], [200, 40]]
    assert letterbox_image(image, 8, "area").shape == (1, 8, 8)  # enlarging: bilinear


def test_augmented_views_are_embedded_once_and_drawn_per_epoch(prepared: Path, tmp_path: Path) -> None:
    from tunesam.data.augment import augment
    from tunesam.data.dataset import SliceDataset
    from tunesam.engine.embedding_cache import VIEW_STREAM, fill_training_caches

    data = PreparedData.open(prepared)
    model = _frozen()
    train_rows, val_rows = data.rows("train", include_empty=False)[:4], data.rows("val", include_empty=False)[:2]
    cache = fill_training_caches(model, data, tmp_path, train_rows, val_rows, 3, torch.device("cpu"))
    assert len(cache.views) == 3 and len({c.folder for c in [cache.plain, *cache.views]}) == 4
    assert cache.plain.missing(val_rows) == [] and cache.plain.missing(train_rows) == list(map(int, train_rows))
    model.train(True)  # the plain encoder, not the fused copy the cache used
    r = int(train_rows[1])
    image = np.asarray(data.slice(r)[0])
    views = []
    for v in range(3):  # the view is the training augmentation of the slice, drawn from (view, slice)
        seen = augment(image, np.random.default_rng([VIEW_STREAM, v, r]))
        want = model.encode(letterbox_image(seen, 64, model.interpolation)[None],
                            torch.tensor([letterbox_shape(*seen.shape, 64)]))
        got = cache.get([r], [v])
        assert torch.allclose(got, want, atol=1e-5)
        views.append(got)
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[1], views[2])
    mixed = cache.get([r, int(val_rows[0])], [2, -1])  # -1: the plain image (validation)
    assert torch.equal(mixed[0], views[2][0]) and torch.equal(mixed[1], cache.plain.get([int(val_rows[0])])[0])

    ds = SliceDataset(data, "train", 64, rows=train_rows, augment=True, augment_images=False, views=3, mode="box")
    plain = SliceDataset(data, "train", 64, rows=train_rows, augment=True, augment_images=False, mode="box")
    drawn = [[ds[(i, e)]["view"] for i in range(len(ds))] for e in range(8)]
    assert {v for epoch in drawn for v in epoch} == {0, 1, 2} and drawn[0] != drawn[1]
    assert all(torch.equal(ds[(i, 5)]["box"], plain[(i, 5)]["box"]) for i in range(len(ds)))  # prompts unchanged
    assert [plain[(i, 0)]["view"] for i in range(len(plain))] == [-1] * len(plain)


def test_a_run_trains_on_cached_views(prepared: Path, tmp_path: Path) -> None:
    torch.save(build_sam("litemedsam_test", image_size=64).state_dict(), tmp_path / "base.pth")
    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch=None, checkpoint=str(tmp_path / "base.pth"),
                      tune="decoder", method="vanilla", epochs=2, batch_size=4, lr=1e-2, warmup=5, device="cpu",
                      num_workers=0, patience=0, cache_embeddings=True, cache_views=2,
                      embedding_cache=str(tmp_path / "cache"))
    run = train(cfg)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # plain (validation) + two views of the training slices
    assert open_run(run).config.cache_views == 2
    with pytest.raises(ValueError, match="cache-views"):
        TrainConfig(data="d", out="o", arch="vit_test", tune="decoder", method="lora", cache_views=2)


def test_bf16_embeddings_have_their_own_cache_which_every_caller_shares(prepared: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The precision comes from the device (as training's and evaluation's autocast), so a
    caller cannot fill a float32 cache that the others then miss."""
    data = PreparedData.open(prepared)
    model = _frozen()
    rows = data.rows("train", include_empty=False)[:2]
    fp32 = fill_embedding_cache(model, data, tmp_path, rows, torch.device("cpu"))
    monkeypatch.setenv("TUNESAM_CPU_BF16", "1")
    bf16 = fill_embedding_cache(model, data, tmp_path, rows, torch.device("cpu"))
    assert bf16.folder != fp32.folder
    assert not torch.equal(bf16.get([int(rows[0])]), fp32.get([int(rows[0])]))  # computed under bf16
    torch.testing.assert_close(bf16.get([int(rows[0])]), fp32.get([int(rows[0])]), atol=0.1, rtol=0.05)
    again = fill_embedding_cache(model, data, tmp_path, rows, torch.device("cpu"))
    assert again.folder == bf16.folder and again.missing(rows) == []
