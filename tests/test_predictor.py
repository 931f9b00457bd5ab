# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""DiffewSPredictor: equal to DiffewS.forward on the same episode, supports encoded once and
really reused, and one-line errors for bad inputs."""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from conftest import SIZE, make_cfg
from diffews import DiffewSPredictor
from diffews.checkpoint import UntrainedModelError
from diffews.modeling import SupportSetError, save_release_unet
from diffews.utils.image import ImageReadError, image_to_tensor, resize_image, resize_mask


def _images(n, seed, size=(48, 80)):
    """n random RGB images of another size than the working size, and random blob masks."""
    rng = np.random.RandomState(seed)
    h, w = size
    images = [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    masks = []
    for _ in range(n):
        y, x = rng.randint(0, h // 2), rng.randint(0, w // 2)
        m = np.zeros((h, w), bool)
        m[y:y + h // 2, x:x + w // 3] = True
        masks.append(m)
    return images, masks


def _episode(query, images, masks):
    """The benchmark's episode for these arrays: the same resizing rules as EpisodeMapper."""
    return {
        "image": image_to_tensor(resize_image(query, SIZE)),
        "support_images": torch.stack([image_to_tensor(resize_image(i, SIZE)) for i in images]),
        "support_masks": torch.stack([torch.from_numpy(resize_mask(m.astype(np.uint8), SIZE))
                                      for m in masks]),
    }


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return DiffewSPredictor(tiny_model, SIZE)


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_predictor_equals_forward(predictor, tiny_model, shots):
    images, masks = _images(shots, seed=shots)
    queries, _ = _images(3, seed=100 + shots, size=(56, 40))
    supports = predictor.encode_supports(images, masks)
    assert len(supports) == shots and supports.layers and supports.signature is not None
    one_by_one = predictor.predict(queries, supports, batch_size=1)
    batched = predictor.predict(queries, supports, batch_size=3)
    for q, single, batch in zip(queries, one_by_one, batched):
        with torch.no_grad():
            (ref,) = tiny_model([_episode(q, images, masks)])
        # same batching (one query per pass): bit for bit
        assert np.array_equal(single["mask_working"], ref["pred_mask"].numpy())
        assert np.array_equal(single["pred_image"], ref["pred_image"].permute(1, 2, 0).numpy())
        assert single["score"] == pytest.approx(float(ref["score"]))
        # no presence threshold by default: no decision (None, not "present"), the forward's
        # presence signal
        assert single["present"] is None and ref["present"] is None
        assert single["presence"] == pytest.approx(ref["presence"])
        # the mask at the query's own size is the working mask resized back with nearest
        assert single["mask"].shape == q.shape[:2] and single["mask"].dtype == bool
        assert np.array_equal(single["mask"], resize_mask(single["mask_working"].astype(np.uint8),
                                                          q.shape[:2]).astype(bool))
        # batches of 3 queries: the golden check's tolerance
        agreement = (batch["mask_working"] == single["mask_working"]).mean()
        assert agreement >= 0.995
        diff = np.abs(batch["pred_image"].astype(int) - single["pred_image"].astype(int))
        assert diff.max() <= 2
        assert 0.0 <= single["score"] <= 1.0


def test_inputs_as_paths_pil_and_arrays_agree(predictor, tmp_path):
    images, masks = _images(2, seed=7)
    files = []
    for i, (im, m) in enumerate(zip(images, masks)):
        Image.fromarray(im).save(tmp_path / f"s{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / f"s{i}_mask.png")
        files.append((str(tmp_path / f"s{i}.png"), str(tmp_path / f"s{i}_mask.png")))
    from_arrays = predictor.encode_supports(images, masks)
    from_files = predictor.encode_supports([f for f, _ in files], [m for _, m in files])
    from_pil = predictor.encode_supports([Image.fromarray(i) for i in images],
                                         [Image.fromarray(m.astype(np.uint8)) for m in masks])
    for other in (from_files, from_pil):
        assert all(torch.equal(from_arrays.keys[k], other.keys[k]) for k in from_arrays.layers)
    assert from_files.info[0]["source"] == files[0][0]
    query = images[0]
    a = predictor.predict(query, from_arrays)  # a single query needs no list
    b = predictor.predict([files[0][0]], from_files)
    assert len(a) == 1 and np.array_equal(a[0]["mask"], b[0]["mask"])


def test_supports_encoded_once_are_reused(predictor, tiny_model):
    """Hooks count UNet passes by input channels (8 = support, 4 = query), the supports run
    through support passes, and VAE encodes."""
    calls = {"support": 0, "support_rows": 0, "query": 0, "vae_images": 0, "vae_calls": 0}

    def on_unet(module, args):
        if args[0].shape[1] == 8:
            calls["support"] += 1
            calls["support_rows"] += args[0].shape[0]
        else:
            calls["query"] += 1

    def on_vae(module, args):
        calls["vae_calls"] += 1
        calls["vae_images"] += args[0].shape[0]

    hooks = [tiny_model.unet.register_forward_pre_hook(on_unet),
             tiny_model.vae.encoder.register_forward_pre_hook(on_vae)]
    try:
        images, masks = _images(3, seed=3)
        supports = predictor.encode_supports(images, masks)
        # one support pass over the 3 supports; one VAE call per support image and per mask
        assert calls == {"support": 1, "support_rows": 3, "query": 0, "vae_images": 6,
                         "vae_calls": 6}
        queries, _ = _images(5, seed=4)
        predictor.predict(queries, supports, batch_size=2)
        # later queries: no support pass, no support encode; 5 query images in 3 batches
        assert calls == {"support": 1, "support_rows": 3, "query": 3, "vae_images": 11,
                         "vae_calls": 9}
        predictor.predict_many(queries[0], [supports, supports[:1], supports[1:]], batch_size=8)
        # the query encoded once; sets of 3 and of 1 and 2 supports: three K groups
        assert calls["vae_images"] == 12 and calls["support"] == 1 and calls["query"] == 6
    finally:
        for h in hooks:
            h.remove()


def test_predict_many_equals_predict_per_set(predictor):
    images, masks = _images(4, seed=9)
    query, _ = _images(1, seed=10)
    sets = [predictor.encode_supports(images[:2], masks[:2]),
            predictor.encode_supports(images[2:], masks[2:]),
            predictor.encode_supports(images[:1], masks[:1])]
    many = predictor.predict_many(query[0], sets, batch_size=2)
    for s, r in zip(sets, many):
        (single,) = predictor.predict(query, s)
        assert (r["mask_working"] == single["mask_working"]).mean() >= 0.995
        assert np.abs(r["pred_image"].astype(int) - single["pred_image"].astype(int)).max() <= 2
    assert not np.array_equal(many[0]["pred_image"], many[1]["pred_image"])


def test_encoded_query_reused_as_support(predictor):
    images, masks = _images(2, seed=11)
    encoded = predictor.encode_images(images)
    direct = predictor.encode_supports(images, masks)
    reused = predictor.encode_supports(encoded, masks)  # only the masks are encoded
    # a batch of 2 images vs one image per call: equal up to float rounding
    for k in direct.layers:
        torch.testing.assert_close(reused.keys[k], direct.keys[k], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="all supports as EncodedImage or none"):
        predictor.encode_supports([encoded[0], images[1]], masks)


def test_half_precision_supports(predictor):
    images, masks = _images(2, seed=12)
    queries, _ = _images(4, seed=13)
    full = predictor.encode_supports(images, masks)
    half = predictor.encode_supports(images, masks, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.latents.dtype == torch.float32
    assert half.nbytes < 0.6 * full.nbytes
    for a, b in zip(predictor.predict(queries, full), predictor.predict(queries, half)):
        assert (a["mask_working"] == b["mask_working"]).mean() >= 0.99


def test_errors_are_one_line_and_name_the_problem(predictor, tiny_sd, tmp_path):
    images, masks = _images(1, seed=14)
    supports = predictor.encode_supports(images, masks)

    def one_line(excinfo):
        assert "\n" not in str(excinfo.value)
        return str(excinfo.value)

    with pytest.raises(SupportSetError, match="empty") as e:
        predictor.predict(images, supports[:0])
    one_line(e)
    with pytest.raises(ImageReadError, match="mask is 10x10 but its image") as e:
        predictor.encode_supports(images, [np.ones((10, 10), bool)])
    one_line(e)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.txt: not a readable image") as e:
        predictor.predict([str(bad)], supports)
    one_line(e)
    with pytest.raises(ImageReadError, match="missing.jpg: no such file"):
        predictor.encode_supports([str(tmp_path / "missing.jpg")], masks)
    with pytest.raises(ValueError, match="1 images but 2 masks"):
        predictor.encode_supports(images, masks * 2)
    with pytest.raises(TypeError, match="must be a SupportSet"):
        predictor.predict(images, (images, masks))
    with pytest.raises(ImageReadError, match="must be uint8"):
        predictor.encode_supports([images[0].astype(np.float32)], masks)

    # another model: other weights, then another UNet architecture
    from diffews.quickstart.tiny_sd import build_tiny_sd

    other = DiffewSPredictor(build_model(make_cfg(tiny_sd)).eval(), SIZE)
    with torch.no_grad():
        for p in other.model.unet.conv_in_ref.parameters():
            p.add_(0.01)
    other.signature = other.model.support_signature()
    with pytest.raises(SupportSetError, match="other weights") as e:
        other.predict(images, supports)
    one_line(e)
    wide = build_tiny_sd(str(tmp_path / "wide"), unet={"block_out_channels": (32, 32)})
    other = DiffewSPredictor(build_model(make_cfg(wide)).eval(), SIZE)
    with pytest.raises(SupportSetError, match="block_out_channels is \\[32, 64\\] in the set") as e:
        other.predict(images, supports)
    one_line(e)
    with pytest.raises(SupportSetError, match="another working size"):
        DiffewSPredictor(predictor.model, 2 * SIZE).predict(images, supports)


def test_from_pretrained_loads_release_and_refuses_untrained(tiny_sd, tiny_model, tmp_path):
    release = tmp_path / "release"
    save_release_unet(tiny_model.unet, str(release / "unet"))
    p = DiffewSPredictor.from_pretrained(tiny_sd, str(release), device="cpu", image_size=SIZE)
    assert not p.model.training and p.image_size == SIZE
    images, masks = _images(1, seed=15)
    ours = p.predict(images, p.encode_supports(images, masks))
    ref = DiffewSPredictor(tiny_model, SIZE)
    theirs = ref.predict(images, ref.encode_supports(images, masks))
    assert np.array_equal(ours[0]["pred_image"], theirs[0]["pred_image"])
    with pytest.raises(UntrainedModelError, match="MODEL.WEIGHTS is empty"):
        DiffewSPredictor.from_pretrained(tiny_sd, None, device="cpu", image_size=SIZE)
    DiffewSPredictor.from_pretrained(tiny_sd, None, device="cpu", image_size=SIZE,
                                     allow_untrained=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            DiffewSPredictor.from_pretrained(tiny_sd, str(release), image_size=SIZE)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        DiffewSPredictor(tiny_model, 40)
