"""The DALI backend: DALI decodes and warps, the host batch is the contract of data_pipelines/batch.py.

Per batch of this rank's `EpochBatchSampler` order, a DALI pipeline runs
  fn.external_source(DaliSampleSource, parallel, per sample)  encoded bytes + the sample's plan (numpy)
  -> fn.decoders.image(device="mixed" on a GPU, "cpu" otherwise; RGB, no EXIF turn, fancy upsampling)
  -> fn.warp_affine(matrix=the plan's matrix in DALI's convention, size=(S, S), fill_value=0, bilinear) on a GPU;
     in CPU mode the same warp by dali_warp.warp_operator (DALI's Numba operator; DALI's CPU warp_affine
     is 3-4x slower than cv2's, dali_warp's is about as fast; fn.warp_affine if Numba is missing)
and the loader turns its outputs into the same host batch as the CPU backend (uint8 crops; every other field
straight from sampling.plan_sample), so `batch.prepare_batch` does colour, normalisation and targets for both.

DALI conventions used here, checked in DALI's source (2.4) and by tests/test_dali.py:
- warp_affine's `matrix` is destination -> source when `inverse_map` is left at its default True
  (warp_affine_params.h: `invert = !inverse_map`); destination pixel (x, y) is read at M @ (x + .5, y + .5)
  (kernels/imgproc/warp/map_coords.h) and the bilinear sampler subtracts .5 again (kernels/imgproc/sampler.h):
  pixel corners sit at integer coordinates. dali_source.dali_matrix converts the project's pixel-centre
  forward matrix. Without `fill_value` DALI replicates the border; 0 gives the CPU backend's black border.
  `size` is (H, W).
- `device_id=None` is a pipeline without any CUDA: CPU operators only (pipeline.py docstring); it runs on a
  host without a GPU or libcudart (this machine). Python workers of the parallel external source are forked
  there; with a GPU they are spawned, since forking a process that holds a CUDA context is unsafe (ibid.).
- The per-sample source never raises StopIteration, so DALI's epoch counters never matter: this loader runs
  exactly len(sampler) iterations and drops the PAD samples DALI prefetched past the end. A mid-epoch resume
  builds a pipeline starting at `start_batch`; no DALI RNG, no DALI checkpoint. (DALI's PyTorch iterator,
  DALIGenericIterator, ends an external-source epoch only on StopIteration and would hand bad and PAD
  samples through; this thin loop drops them per batch and can rebuild the pipeline, see below.)
- A decoder error inside DALI invalidates the pipeline ("Current pipeline object is no longer valid"). The
  loader then rebuilds it at the failing batch with that batch decoded by the CPU backend's loader, which
  names the bad file and its reason: the run goes on (skip) or stops with one error line (raise).
DALI is imported lazily: the project imports and runs without it.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from data_pipelines.batch import BatchLoader
from data_pipelines.errors import UserError
from data_pipelines.loaders.cpu import PoseDataset
from data_pipelines.loaders.dali_source import BAD, GOOD, OUTPUTS, PLAN_FIELDS, DaliSampleSource, plan_dtype
from data_pipelines.sampling import EpochBatchSampler


def dali_available() -> bool:
    """Whether NVIDIA DALI is installed (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def require_dali() -> None:
    """UserError (one CLI error line) unless DALI is installed."""
    if not dali_available():
        raise UserError("data.backend=dali needs NVIDIA DALI, which is not installed: run "
                        "`bash scripts/setup.sh dali` (it picks the DALI build for this machine)")


def numba_available() -> bool:
    """Whether Numba is installed (the `dali` extra brings it), without importing it."""
    return importlib.util.find_spec("numba") is not None


def build_pipeline(source: DaliSampleSource, batch_size: int, input_size: int, device_id: int | None,
                   num_threads: int, py_workers: int, cpu_warp: str = "numba", decoder_options: dict | None = None):
    """The DALI pipeline (built) over `source`; device_id None: DALI CPU mode, else mixed decode + GPU warp.
    cpu_warp (CPU mode only): "numba", dali_warp's warp by DALI's Numba operator (fn.warp_affine when Numba is
    missing), or "dali", DALI's own CPU fn.warp_affine (3-4x slower); both give the same crops.
    decoder_options: extra arguments of fn.decoders.image, e.g. the mixed decoder's `hw_decoder_load` (the
    share of images sent to the hardware JPEG decoder where the GPU has one; DALI's default 0.65) or
    `preallocate_width_hint` / `preallocate_height_hint`; they override the defaults above (e.g.
    jpeg_fancy_upsampling=False: the mixed backend's own chroma upsampling, no longer the CPU decoder's)."""
    from nvidia.dali import fn, pipeline_def, types

    if cpu_warp not in ("numba", "dali"):
        raise ValueError(f"cpu_warp must be 'numba' or 'dali', got {cpu_warp!r}")
    gpu = device_id is not None
    numba_warp = None
    if not gpu and cpu_warp == "numba":
        if numba_available():
            from data_pipelines.loaders.dali_warp import warp_operator

            numba_warp = warp_operator(input_size)
        else:
            warnings.warn("Numba is not installed: DALI's CPU mode warps with its own fn.warp_affine, 3-4x slower "
                          "(bash scripts/setup.sh dali installs Numba)", stacklevel=2)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  py_num_workers=py_workers, py_start_method="spawn" if gpu else "fork")
    def pipeline():
        outs = fn.external_source(source=source, num_outputs=len(OUTPUTS), batch=False, parallel=True)
        decode = dict(device="mixed" if gpu else "cpu", output_type=types.RGB, adjust_orientation=False,
                      jpeg_fancy_upsampling=True)
        image = fn.decoders.image(outs[0], **{**decode, **(decoder_options or {})})
        if numba_warp is not None:
            crop = numba_warp(image, outs[1])
        else:
            crop = fn.warp_affine(image, matrix=outs[1], size=(input_size, input_size), fill_value=0,
                                  interp_type=types.INTERP_LINEAR)
        return (crop, *outs[2:])

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliLoader(BatchLoader):
    """One rank's DALI loader over a PoseDataset's records and settings (see the module docstring).

    device: "cpu" (DALI CPU mode) or a CUDA device, where `image` arrives on that device. num_workers: Python
    workers of the external source (>= 1); num_threads: DALI's operator threads (default num_workers);
    cpu_warp, decoder_options: build_pipeline's (CPU mode's warp: "numba" or "dali"; fn.decoders.image's extra
    arguments).
    """

    def __init__(self, dataset: PoseDataset, sampler: EpochBatchSampler, device: str | torch.device = "cpu",
                 num_workers: int = 1, num_threads: int | None = None, keep_empty: bool = False,
                 cpu_warp: str = "numba", decoder_options: dict | None = None):
        super().__init__(sampler, dataset.on_bad_sample, keep_empty)
        self.dataset = dataset
        self.device = torch.device(device)
        self.device_id = None if self.device.type == "cpu" else \
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
        self.py_workers = max(1, int(num_workers))
        self.num_threads = int(num_threads or self.py_workers)
        self.cpu_warp = cpu_warp
        self.decoder_options = dict(decoder_options or {})
        self.plan_dtype = plan_dtype(dataset.skeleton.num_joints)

    def _pipeline(self, start_batch: int, reference_batches: frozenset[int]):
        d = self.dataset
        source = DaliSampleSource(d.records, self.sampler, d.augmentation, d.input_size, d.heatmap_size, d.sigma,
                                  d.skeleton.flip_index, d.image_loader, start_batch, reference_batches)
        return build_pipeline(source, self.sampler.batch_size, d.input_size, self.device_id, self.num_threads,
                              self.py_workers, self.cpu_warp, self.decoder_options)

    def host_batches(self) -> Iterator[dict]:
        k, end = self.sampler.start_batch, self.sampler.batches_per_epoch
        reference: frozenset[int] = frozenset()
        pipe = self._pipeline(k, reference) if k < end else None
        try:
            while k < end:
                stream = torch.cuda.current_stream(self.device) if self.device_id is not None else None
                try:
                    outs = pipe.run(stream)
                except RuntimeError as err:
                    if k in reference:  # not a decoder error: even the reference decoding failed
                        err.add_note(f"DALI pipeline failed on batch {k} of epoch {self.sampler.epoch}")
                        raise
                    reference |= {k}
                    pipe = None  # the pipeline is invalid now: shut it down, then resume at batch k
                    pipe = self._pipeline(k, reference)
                    continue
                yield self._host_batch(outs)
                k += 1
        finally:
            pipe = None  # shuts DALI and its Python workers down, also when the consumer stops early

    def _host_batch(self, outs) -> dict:
        plan = outs[1].as_array().view(self.plan_dtype).reshape(-1)  # [B] records (dali_source.plan_dtype)
        good = np.flatnonzero(plan["status"] == GOOD)
        bad = np.flatnonzero(plan["status"] == BAD)
        index = plan["index"]
        batch: dict = {"num_samples": len(good),
                       "skipped": [self.dataset.records[index[i]].image for i in bad],
                       "skipped_reasons": [np.asarray(outs[-1][int(i)]).tobytes().decode() for i in bad]}
        if len(good):
            image = _image_tensor(outs[0])  # a copy, then a second one only to leave bad samples out
            batch["image"] = image if len(good) == len(plan) else image[torch.from_numpy(good).to(self.device)]
            for name in PLAN_FIELDS:
                batch[name] = torch.from_numpy(np.ascontiguousarray(plan[name][good]))
        return batch


def _image_tensor(images) -> torch.Tensor:
    """A DALI TensorList of uniform uint8 crops as a torch tensor [B, S, S, 3] on its device (a copy)."""
    from nvidia.dali.tensors import TensorListGPU

    if isinstance(images, TensorListGPU):  # copied on torch's current stream (DALI's torch plugin, torch_utils.py)
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        return to_torch_tensor(images.as_tensor(), copy=True)
    return torch.from_numpy(images.as_array())


def make_dali_loader(dataset: PoseDataset, batch_size: int, seed: int = 0, epoch: int = 0, rank: int = 0,
                     world_size: int = 1, num_workers: int = 1, shuffle: bool = True, drop_last: bool = False,
                     start_batch: int = 0, persistent_workers: bool = False, keep_empty: bool = False,
                     device: str | torch.device = "cpu", num_threads: int | None = None,
                     cpu_warp: str = "numba", decoder_options: dict | None = None) -> DaliLoader:
    """A DaliLoader for one rank: the same arguments and batches as loaders.cpu.make_loader, plus `device`.
    DALI's Python workers belong to one pipeline, i.e. one pass over the loader, whatever
    `persistent_workers` says (taken so that both backends accept the same arguments)."""
    require_dali()
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, epoch, rank, world_size, shuffle, drop_last,
                                start_batch)
    return DaliLoader(dataset, sampler, device, num_workers, num_threads, keep_empty, cpu_warp, decoder_options)


def images_per_second(loader: BatchLoader, batches: int, warmup: int = 1,
                      step: Callable[[dict], object] | None = None) -> dict:
    """Throughput of any BatchLoader over `batches` host batches after `warmup` untimed ones: images/s (wall)
    and CPU seconds per image of this process and all its descendants (workers), i.e. the cost per core.
    `step(batch)`, if given, runs on every batch inside the timing (e.g. batch.prepare_batch on the GPU, for
    decode + augment + targets); CUDA work is synchronised before the clock is read. Linux (/proc). For
    `bench data`: the same records and settings through both backends."""
    n = images = 0
    t0 = cpu0 = None
    for batch in loader:
        if n == warmup:
            _sync()
            t0, cpu0 = time.perf_counter(), _tree_cpu_seconds()
        n += 1
        if step is not None:
            step(batch)
        if n > warmup:
            images += batch["num_samples"]
        if n == warmup + batches:
            _sync()
            wall, cpu = time.perf_counter() - t0, _tree_cpu_seconds() - cpu0
            if cpu <= 0:  # /proc counts whole clock ticks: the timed batches' work was done before t0
                raise UserError(f"images_per_second: {batches} timed batches cost less than one CPU clock tick "
                                "in this process and its workers (done ahead, by prefetching workers): "
                                "time more batches (more samples or a smaller batch)")
            return {"images": images, "wall_s": wall, "images_per_s": images / wall,
                    "cpu_s_per_image": cpu / max(images, 1)}
    raise ValueError(f"images_per_second: the loader gave {n} batches, {warmup} + {batches} asked")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (/proc/<pid>/stat)."""
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        stats[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime (ticks)
    tree, grew = {os.getpid()}, True
    while grew:
        new = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")
