"""Assemble the embedded benchmark: train/sample each generator, write GenImage's layout.

``<out>/<subset>/{train,val}/{ai,nature}/*.png``, every image the same size, mode and format
(8-bit RGB PNG) on both sides, with as many fakes as reals in every subset and split.

Generation runs in worker processes, one group of subsets that share a trained model per job,
each started with the arithmetic pinned (see ``reproducible``): the bytes do not depend on the
machine's core count or on which worker ran which group.

A subset whose config names ``content`` and ``classes`` is class-conditional, like GenImage's
ImageNet subsets: its reals are the ``classes`` largest classes of that content, equally many per
class, and every fake is generated for the class of one real, so both sides share the class
distribution (GenImage's training-set-size and class-subset ablations need this). Content test
sets (``content_tests``) are test-only subsets of other content from the same conditional
generator: GenImage's LFW-faces and LAION-Art test.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from synthdet import machine
from synthdet.codegraph import import_closure
from synthdet.data.splits import group_assignment
from synthdet.datasets.embedded import finished
from synthdet.datasets.embedded.generators import dcgan, latent_diffusion, pretrained, upsample_gan, vae, vq_autoencoder
from synthdet.datasets.embedded.generators.common import images_to_tensor, tensor_to_images
from synthdet.fsutil import atomic_write_bytes, file_digest, replace_owned_dir
from synthdet.seeding import rng_for

# Which content the fakes of a generator show; trained generators learn the whole real pool.
PRETRAINED_CONTENT = {"gan_face": "face", "omniart_eyes": "painting"}


class GeneratorCollapsedError(RuntimeError):
    """A generator that repeats images: duplicates would leak between train and test."""


def split_reals(reals: pd.DataFrame, test_fraction: float, seed: int) -> pd.DataFrame:
    """Global train/test split of the real pool, by original image (crops stay together)."""
    out = reals.copy()
    out["split"] = np.where(group_assignment(out["group"], test_fraction, seed, "test"), "test", "train")
    return out


def _load(paths: list[str]) -> torch.Tensor:
    return images_to_tensor([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def pick_classes(train: pd.DataFrame, test: pd.DataFrame, content: str, n_classes: int) -> list[str]:
    """The ``n_classes`` classes of ``content`` with the most real train images, among those with
    at least one test image (ties by name)."""
    counts = train[train["content"] == content].groupby("class").size()
    eligible = counts[counts.index.isin(set(test.loc[test["content"] == content, "class"]))]
    ranked = sorted(eligible.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) < n_classes:
        raise ValueError(f"only {len(ranked)} {content!r} classes have real train and test images; asked for "
                         f"{n_classes}. Lower `classes` in embedded.benchmark.subsets.")
    return [c for c, _ in ranked[:n_classes]]


def stratified(pool: pd.DataFrame, classes: list[str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows spread as evenly as availability allows over ``classes`` (round robin)."""
    queues = {c: list(rng.permutation(np.flatnonzero((pool["class"] == c).to_numpy()))) for c in classes}
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for c in classes:
            if queues[c] and len(picked) < n:
                picked.append(int(queues[c].pop()))
    return pool.iloc[sorted(picked)]


def _seed_init(seed: int, key: str) -> None:
    """Seed torch's global generator before a model is built, so its initial weights depend on
    (seed, model) and not on what the process built before."""
    torch.manual_seed(int(rng_for(seed, key, "init").integers(2**31)))


def _vae_key(cfg: dict) -> str:
    """Subsets whose VAE configs agree share one trained VAE (the LDM's latent space)."""
    return "vae:" + json.dumps({"width": cfg.get("width", 32), "epochs": cfg["epochs"],
                                "beta": cfg.get("beta", 0.02)}, sort_keys=True)


class _Trained:
    """Generators trained once per worker and shared (the LDM reuses the VAE)."""

    def __init__(self, train_paths: list[str], labels: pd.DataFrame, seed: int, batch_size: int,
                 state_dir: Path | None = None) -> None:
        self.train_paths, self.seed, self.bs = train_paths, seed, batch_size
        self.state_dir = state_dir  # where each training keeps its per-epoch resume state (None: nowhere)
        self._x: torch.Tensor | None = None
        self.cache: dict[str, object] = {}
        # (class, content) vocabularies of the training pool, for conditional generators
        self.classes = sorted(labels["class"].astype(str).unique())
        self.contents = sorted(labels["content"].astype(str).unique())
        self.labels = self.encode(labels)

    @property
    def x(self) -> torch.Tensor:
        """The real training images, loaded when a generator is first trained."""
        if self._x is None:
            self._x = _load(self.train_paths)
        return self._x

    def resume(self, key: str) -> Path | None:
        """The resume-state file of the training of cache entry ``key`` (a short hash of it: keys
        hold JSON), in this group's state folder."""
        if self.state_dir is None:
            return None  # (the folder is made by the first state written)
        return self.state_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def encode(self, labels: pd.DataFrame) -> torch.Tensor:
        """(class, content) -> indices; a class the generator never saw (a test-only class) gets the
        "no class" token and keeps its content."""
        cls = {c: i for i, c in enumerate(self.classes)}
        con = {c: i for i, c in enumerate(self.contents)}
        pairs = [[cls.get(str(a), len(cls)), con.get(str(b), len(con))]
                 for a, b in zip(labels["class"], labels["content"], strict=True)]
        return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    def vae(self, cfg: dict) -> vae.ConvVAE:
        key = _vae_key(cfg)
        if key not in self.cache:
            _seed_init(self.seed, key)
            model = vae.ConvVAE(ch=cfg.get("width", 32))
            self.cache[key] = vae.train_vae(model, self.x, cfg["epochs"], self.bs, self.seed,
                                            beta=cfg.get("beta", 0.02), resume=self.resume(key))
        return self.cache[key]  # type: ignore[return-value]


def make_fakes(name: str, cfg: dict, n: int, split: str, trained: _Trained, weights: Path,
               recon_source: Callable[[int], torch.Tensor], size: int, labels: pd.DataFrame | None = None,
               model_name: str | None = None) -> torch.Tensor:
    """``n`` fakes for one split of one subset; the seed depends on (subset, split) only.

    ``labels`` (n rows of class, content) conditions a class-conditional generator; ``model_name``
    reuses another subset's trained generator (content test sets).
    """
    seed = int(rng_for(trained.seed, name, split, "sample").integers(2**31))
    kind = cfg["generator"]
    key = f"model:{model_name or name}"
    if kind in ("dcgan", "upsample_gan"):
        if key not in trained.cache:
            _seed_init(trained.seed, key)
            cls = dcgan.DCGANGenerator if kind == "dcgan" else upsample_gan.UpsampleGenerator
            gen = cls(nz=cfg.get("nz", 100), ngf=cfg.get("width", 32), size=size)
            trained.cache[key] = dcgan.train_gan(gen, trained.x, cfg["epochs"], trained.bs, trained.seed, desc=name,
                                                 resume=trained.resume(key))
        return dcgan.sample_gan(trained.cache[key], n, seed, batch_size=trained.bs, batch_stats=True)
    if kind == "vae":
        return vae.sample_vae(trained.vae(cfg), n, seed, latent_hw=size // 8)
    if kind == "vq_autoencoder":
        if key not in trained.cache:
            _seed_init(trained.seed, key)
            model = vq_autoencoder.VQAutoencoder(ch=cfg.get("width", 32), codebook_size=cfg.get("codebook_size", 256))
            trained.cache[key] = vq_autoencoder.train_vq(model, trained.x, cfg["epochs"], trained.bs, trained.seed,
                                                         resume=trained.resume(key))
        return vq_autoencoder.reconstruct(trained.cache[key], recon_source(n))
    if kind == "latent_diffusion":
        v = trained.vae(cfg["vae"])
        conditional = "classes" in cfg
        if key not in trained.cache:
            latents = latent_diffusion.encode_latents(v, trained.x)
            n_cls, n_con = (len(trained.classes), len(trained.contents)) if conditional else (0, 0)
            _seed_init(trained.seed, key)
            unet = latent_diffusion.LatentUNet(in_ch=v.latent_channels, ch=cfg.get("width", 64),
                                               n_classes=n_cls, n_contents=n_con)
            trained.cache[key] = latent_diffusion.train_ldm(unet, latents, cfg["epochs"], trained.bs, trained.seed,
                                                            labels=trained.labels if conditional else None,
                                                            resume=trained.resume(key))
        unet, scale = trained.cache[key]
        y = trained.encode(labels) if conditional and labels is not None else None
        return latent_diffusion.sample_ldm(unet, v, scale, n, seed, size // 8, cfg.get("ddim_steps", 50),
                                           labels=y, guidance=cfg.get("guidance", 1.0))
    if kind == "gan_face":
        gen = pretrained.load_gan_face(str(weights / "weights.tar"))
        x = dcgan.sample_gan(gen, n, seed)
        return x if x.shape[-1] == size else torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    if kind == "omniart_eyes":
        eyes = pretrained.load_omniart_eyes(str(weights / "generator_model_state.pth"))
        return pretrained.sample_eyes(eyes, n, seed, size)
    raise ValueError(f"unknown generator {kind!r} for subset {name!r}")


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def model_groups(subsets: dict[str, dict], content_tests: dict | None = None) -> list[list[str]]:
    """Worker jobs, in config order: subsets that share a trained model share a job, an LDM with the
    ``vae`` subset of the same VAE config (it works in that VAE's latent space) and a content test
    with its source subset; every other subset is a job of its own.

    (Sharing saves work only: each model's initial weights and training are seeded by its config,
    so an LDM that trained its own copy of the VAE in another worker gives the same bytes; measured
    on the default build, see the README.)
    """
    def model(name: str) -> str:
        cfg = subsets[name]
        if cfg["generator"] == "vae":
            return _vae_key(cfg)
        return _vae_key(cfg["vae"]) if cfg["generator"] == "latent_diffusion" else name

    groups: dict[str, list[str]] = {}
    for name in subsets:
        groups.setdefault(model(name), []).append(name)
    for name in (content_tests or {}).get("subsets", {}):
        groups[model(content_tests["generator_subset"])].append(name)
    return list(groups.values())


def build_benchmark(reals: pd.DataFrame, out: Path, weights: Path, subsets: dict[str, dict],
                    images_per_subset: int, test_fraction: float, seed: int, image_size: int,
                    batch_size: int = 64, generator_train_images: int | None = None,
                    content_tests: dict | None = None, processes: int | None = None,
                    resume: Path | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Write every subset; return the per-image labels (keyed by path) for the manifest and the
    seconds each subset took (a metric, kept out of the data so the data's hash is the images').

    ``content_tests``: ``{"generator_subset": <a class-conditional subset>, "images": n,
    "subsets": {name: content}}`` adds test-only subsets (see the module docstring).
    ``processes``: worker processes (None = one per core, at most one per group); 0 runs the
    groups in this process, without the pinned arithmetic (debugging only: other bytes).
    ``resume``: a folder where each finished group is kept (:mod:`.finished`): a rerun after an
    interruption, or with some subsets' configuration changed, builds only the groups not kept there.
    """
    if content_tests and "classes" not in subsets.get(content_tests["generator_subset"], {}):
        raise ValueError(f"content_tests.generator_subset {content_tests['generator_subset']!r} must be a "
                         f"class-conditional subset (one with `content` and `classes`) of {list(subsets)}")
    reals = split_reals(reals, test_fraction, seed)
    pools = {s: reals[reals["split"] == s].reset_index(drop=True) for s in ("train", "test")}
    n_per = {"train": round(images_per_subset * (1 - test_fraction))}
    n_per["test"] = images_per_subset - n_per["train"]
    for s, n in n_per.items():
        if len(pools[s]) < n:
            raise ValueError(f"only {len(pools[s])} real {s} images for {n} per subset; lower "
                             "embedded.images_per_subset")
    train_pool = pools["train"]
    if generator_train_images and generator_train_images < len(train_pool):
        train_pool = train_pool.iloc[np.sort(rng_for(seed, "generator_train").choice(
            len(train_pool), generator_train_images, replace=False))]
    replace_owned_dir(out)  # a previous build of ours is replaced; any other folder is refused
    plan = _Plan(out, weights, subsets, content_tests or {}, pools, train_pool, n_per, seed, image_size, batch_size)
    groups = model_groups(subsets, content_tests)
    results: dict[int, tuple[list[dict], dict[str, float]]] = {}
    keys = [group_key(plan, group, processes == 0) for group in groups] if resume is not None else []
    if resume is not None:
        finished.prepare(resume, keys)
        for i, group in enumerate(groups):
            kept = finished.restore(resume, keys[i], out, group)
            if kept is not None:
                results[i] = kept
                print(f"{', '.join(group)}: kept from an earlier run ({resume / keys[i]}), not built again")
    todo = [i for i in range(len(groups)) if i not in results]
    progress = tqdm(total=len(todo), desc="generator groups")

    def done(i: int, result: tuple[list[dict], dict[str, float]]) -> None:
        results[i] = result
        if resume is not None:
            finished.keep(resume, keys[i], out, groups[i], *result)
        progress.set_postfix_str(",".join(groups[i]))
        progress.update()

    def state_dir(i: int) -> Path | None:  # where group i's trainings keep their per-epoch state
        return finished.training_state(resume, keys[i]) if resume is not None else None

    if processes == 0:
        for i in todo:
            done(i, _build_group(plan, groups[i], state_dir(i)))
    elif todo:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, min(processes or cores, len(todo)))
        with machine.pinned_environment(), ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=machine.init_worker,
                initargs=(os.getpid(),)) as pool:
            # the longest groups (the most training epochs) first, so the last one to start is short
            order = sorted(todo, key=lambda i: -_work(subsets, groups[i]))
            futures = {pool.submit(_build_group, plan, groups[i], state_dir(i)): i for i in order}
            try:
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:  # a failed job (a collapsed generator) stops the queued ones
                for future in futures:
                    future.cancel()
                raise
    progress.close()
    rows = [row for i in range(len(groups)) for row in results[i][0]]
    timings = {name: t for i in range(len(groups)) for name, t in results[i][1].items()}
    order = list(subsets) + list((content_tests or {}).get("subsets", {}))
    return pd.DataFrame(rows), {name: timings[name] for name in order}


def group_key(plan: _Plan, group: list[str], unpinned: bool = False) -> str:
    """Everything that decides the bytes of ``group``'s subsets, hashed: their configuration (a
    content test's with its source subset's), the seed, sizes and counts, the real images of both
    pools and of the generators' training pool (rows and file contents), the pretrained weights,
    the code that generates, torch's version and the pinned arithmetic (``unpinned``: the
    in-process debugging build, whose bytes differ)."""
    def pool(frame: pd.DataFrame) -> list:
        rows = frame.drop(columns=[c for c in frame.columns if frame[c].dtype.kind == "f"]).astype(str)
        return [rows.sort_index(axis=1).to_csv(index=False), [file_digest(p) for p in frame["path"]]]

    tests = plan.content_tests
    configs = {name: plan.subsets[name] if name in plan.subsets
               else {"content_test": tests["subsets"][name], "images": tests["images"],
                     "source": plan.subsets[tests["generator_subset"]]} for name in group}
    weights = sorted(p for p in Path(plan.weights).rglob("*") if p.is_file()) if Path(plan.weights).is_dir() else []
    code = sorted(import_closure(__name__))
    facts = {"torch": torch.__version__, "pinned": machine.PINNED_ENV, "unpinned": unpinned}
    text = json.dumps([configs, plan.seed, plan.image_size, plan.batch_size, plan.n_per,
                       {s: pool(plan.pools[s]) for s in ("train", "test")}, pool(plan.train_pool),
                       [[p.name, file_digest(p)] for p in weights], [file_digest(p) for p in code], facts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _work(subsets: dict[str, dict], group: list[str]) -> float:
    """Training epochs a group runs: the order in which groups are handed to workers."""
    total = 0.0
    for name in group:
        cfg = subsets.get(name, {})
        total += cfg.get("epochs", 0) + cfg.get("vae", {}).get("epochs", 0) + cfg.get("ddim_steps", 0) / 10
    return total


@dataclass(frozen=True)
class _Plan:
    """What every worker needs to build its groups (pickled once per job)."""

    out: Path
    weights: Path
    subsets: dict
    content_tests: dict
    pools: dict[str, pd.DataFrame]
    train_pool: pd.DataFrame
    n_per: dict[str, int]
    seed: int
    image_size: int
    batch_size: int


def _build_group(plan: _Plan, group: list[str], state_dir: Path | None = None) -> tuple[list[dict], dict[str, float]]:
    """Train the group's generators once and write each of its subsets; rows and seconds per subset.
    ``state_dir``: where its trainings keep their per-epoch resume state (a rerun after a kill goes
    on from the last one saved, with the same bytes in the end)."""
    out, pools, seed = plan.out, plan.pools, plan.seed
    trained = _Trained(plan.train_pool["path"].tolist(), plan.train_pool, seed, plan.batch_size, state_dir)
    rows: list[dict] = []
    timings: dict[str, float] = {}

    def write_split(name: str, cfg: dict, split: str, chosen: pd.DataFrame, conditional: bool,
                    written: set[bytes], model_name: str | None = None) -> None:
        folder = "train" if split == "train" else "val"
        pool, n = pools[split], len(chosen)

        def recon_source(k: int) -> torch.Tensor:
            k = min(k, len(pool))
            idx = np.sort(rng_for(seed, name, split, "recon").choice(len(pool), k, replace=False))
            return _load(pool["path"].iloc[idx].tolist())

        # a few extra samples absorb legitimate repeats (two flat sky crops can reconstruct to the
        # same pixels); a generator that cannot produce n distinct images has collapsed
        extra = max(8, n // 10)
        labels = None
        if conditional:  # one fake per real, for its class; the extras cycle through the same labels
            labels = chosen[["class", "content"]].iloc[np.arange(n + extra) % n].reset_index(drop=True)
        fakes = tensor_to_images(make_fakes(name, cfg, n + extra, split, trained, plan.weights, recon_source,
                                            plan.image_size, labels=labels, model_name=model_name))
        kept = 0
        for i, arr in enumerate(fakes):
            png = _png_bytes(arr)
            if png in written:
                continue
            written.add(png)
            path = out / name / folder / "ai" / f"{name}_{folder}_{kept:05d}.png"
            atomic_write_bytes(path, png)
            content = labels["content"].iloc[i] if conditional else PRETRAINED_CONTENT.get(cfg["generator"], "mixed")
            rows.append({"path": path.as_posix(), "generator": cfg["generator"], "family": cfg["family"],
                         "content": content, "class": labels["class"].iloc[i] if conditional else None,
                         "source": cfg["generator"], "group": path.as_posix()})
            kept += 1
            if kept == n:
                break
        if kept < n:
            raise GeneratorCollapsedError(
                f"{name}: only {kept} distinct {split} images out of {n + extra} samples; the generator has "
                f"collapsed. Train it longer (embedded.benchmark.subsets.{model_name or name}.epochs) or change "
                "the seed.")
        for _, r in chosen.iterrows():
            path = out / name / folder / "nature" / Path(r["path"]).name.replace(".png", f"__{r['source']}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r["path"], path)
            rows.append({"path": path.as_posix(), "generator": "real", "family": "real",
                         "content": r["content"], "class": r["class"], "source": r["source"],
                         "group": r["group"]})

    for name in group:
        t0 = time.perf_counter()
        if name in plan.subsets:
            cfg = plan.subsets[name]
            written: set[bytes] = set()
            conditional = "classes" in cfg
            if conditional:
                classes = pick_classes(pools["train"], pools["test"], cfg["content"], cfg["classes"])
            for split in ("train", "test"):
                pool, n = pools[split], plan.n_per[split]
                rng = rng_for(seed, name, split, "reals")
                if conditional:
                    chosen = stratified(pool[(pool["content"] == cfg["content"]) & pool["class"].isin(classes)],
                                        classes, n, rng)
                    if len(chosen) < n:
                        raise ValueError(f"{name}: the {len(classes)} {cfg['content']!r} classes hold only "
                                         f"{len(chosen)} real {split} images for {n}; raise `classes` or lower "
                                         "images_per_subset")
                else:
                    chosen = pool.iloc[np.sort(rng.choice(len(pool), n, replace=False))]
                write_split(name, cfg, split, chosen, conditional, written)
        else:  # a content test: test-only, from the conditional source subset's generator
            source, content = plan.content_tests["generator_subset"], plan.content_tests["subsets"][name]
            pool = pools["test"][pools["test"]["content"] == content]
            if pool.empty:
                raise ValueError(f"content test {name!r}: no real test images of content {content!r}")
            classes = sorted(pool["class"].astype(str).unique())
            chosen = stratified(pool, classes, min(plan.content_tests["images"], len(pool)),
                                rng_for(seed, name, "test", "reals"))
            write_split(name, plan.subsets[source], "test", chosen, True, set(), model_name=source)
            for label_dir in ("ai", "nature"):  # GenImage's layout: a test-only subset has an empty train/
                (out / name / "train" / label_dir).mkdir(parents=True, exist_ok=True)
        timings[name] = round(time.perf_counter() - t0, 2)
    return rows, timings
