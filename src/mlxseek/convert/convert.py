"""`mlxseek.convert`: an official DeepSeek checkpoint (V2, V3/R1, V3.2, V4; bf16, FP8 e4m3 in 128x128
blocks, V4's FP4 experts) to an MLX folder, optionally quantized to affine groups, streaming with memory
bounded by a few MiB pieces of one tensor.

Pipeline: SourceReader (validated headers, fresh reads) -> key map (build_plan / Materializer: renames,
FP8 dequantization in float32, expert stacking, kv_b split, MTP kept as `mtp.*`) -> recipe
(quantize.py) -> ShardWriter (preallocated shards filled piece by piece). The output layout is fixed
up front (layout.py), so the output size is known before the first byte and every name and shape is
checked against the model built from config.json.

Safety: output goes to `DST.partial/`, renamed to DST only when complete; finished shards are recorded
with their sha256 in a manifest there, so a re-run after Ctrl-C or SIGKILL resumes (manifest.py).
The source folder is only ever opened read-only.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx import nn
from tqdm import tqdm

from ..checkpoint.consistency import check_counts
from ..checkpoint.format import FORMAT_VERSION
from ..checkpoint.keymap import DRAFTER_PREFIXES, build_plan, with_drafter_stages
from ..checkpoint.strict import check_against_model
from ..config import ModelConfig
from ..errors import ConversionError
from ..models import build_checked, build_model, family_of
from .calibrated import DEFAULT_CALIBRATION_TOKENS, calibrate, check_calibration
from .engram import copy_engram_tables
from .failures import as_conversion_error, clean_up
from .finalize import finish, output_config
from .inputs import check_disk, check_paths, dtype_name, index_sha256, read_config, resolve_dtype, sha256_json
from .layout import assign_shards, plan_jobs, shard_names
from .manifest import Progress
from .quantize import QuantPlan, check_options, plan_quantization, size_summary
from .reader import SourceReader
from .requantize import requantizes_fp4, unpack_fp4_experts
from .report import build_report, merge, summary_lines
from .stream import PIECE_BYTES, Source, write_shard

DEFAULT_SHARD_BYTES = 5 << 30  # mlx-lm's shard size
SHARD_DELAY_ENV = "MLXSEEK_CONVERT_SHARD_DELAY"  # test hook: seconds to pause after each finished shard


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    shards: int
    resumed_shards: int
    output_bytes: int
    source_bytes: int
    bits_per_weight: float
    seconds: float


def convert(
    *,
    hf_path: str | Path,
    mlx_path: str | Path,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    dtype: str | None = None,
    recipe: str = "uniform",
    layout: str = "transposed",
    drop_mtp: bool = False,
    force: bool = False,
    quiet: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    calibration: str | Path | None = None,
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    target_bpw: float | None = None,
) -> ConversionResult:
    """Convert the Hugging Face DeepSeek folder `hf_path` into an MLX folder at `mlx_path`.

    quantize: affine group quantization with `q_bits` (2, 3, 4, 5, 6, 8) and `q_group_size` (32, 64,
    128), per-module choices from `recipe` ("uniform", "experts", "mixed"; see mlxseek.convert.quantize).
    layout: "transposed" (MLX's and mlx-lm's layout, Metal's fast path) or "kmajor" (MLX's CPU backend's
    fast path at the same bits per weight; only mlxseek loads it; see mlxseek.convert.quantize.LAYOUTS).
    dtype: float dtype of unquantized weights, scales and biases ("float16", "bfloat16", "float32");
    None keeps config.json's torch_dtype (bfloat16 for DeepSeek's releases). The router stays float32.
    drop_mtp: leave out the multi-token-prediction layer (what mlx-lm's own converter does).
    force: replace an existing `mlx_path`. An interrupted run resumes from `mlx_path`.partial/.
    max_shard_bytes: output shard size (mlx-lm's 5 GiB by default).
    V4 FP4 experts are kept as they are (MLX mxfp4, the same encoding) and recorded in `quantization`;
    below 4 bits (q_bits 2/3, or a target_bpw under mxfp4's 4.25) they are dequantized and requantized.
    calibration: a text file run through the model (streaming, one layer resident; at most
    `calibration_tokens` tokens) to weight each quantization group's error by its columns' mean squared
    input (mlxseek.convert.weighted); same bits and bytes. target_bpw: with calibration, bits per module
    chosen by measured sensitivity x importance so the output lands just under this many bits per weight.
    Returns a ConversionResult; raises ConversionError/CheckpointError/ConfigError on bad input.
    """
    t0 = time.perf_counter()
    log = (lambda *_: None) if quiet else (lambda msg: tqdm.write(str(msg)))
    src, dst = check_paths(Path(hf_path), Path(mlx_path), force)
    if quantize:
        check_options(recipe, q_bits, q_group_size, layout)
    elif layout != "transposed":
        raise ConversionError(f"--layout {layout}: only quantized weights have a layout; add -q")
    calib = check_calibration(quantize=quantize, layout=layout, calibration=calibration,
                              tokens=calibration_tokens, target_bpw=target_bpw)
    options = {**calib, "recipe": recipe if quantize else None, "bits": q_bits if quantize else None, "layout": layout,
               "group_size": q_group_size if quantize else None, "dtype": dtype, "drop_mtp": drop_mtp}
    job = _plan(src, dst, options, max_shard_bytes)
    progress = None
    try:
        progress, done = _open_partial(job, log)
        _write_shards(job, progress, done, quiet)
        report = _finish(job, progress)
    except (OSError, ConversionError) as e:
        kept = clean_up(job.partial, len(progress.shards) if progress else None)
        err = as_conversion_error(e, dst) if isinstance(e, OSError) else e
        raise ConversionError(f"{err}{kept}") from None
    for line in summary_lines(report):
        log(line)
    seconds = time.perf_counter() - t0
    source_bytes = sum(j.source_bytes for j in job.jobs)
    log(f"wrote {dst} ({len(job.names)} shard(s)) in {seconds:.1f}s: {source_bytes / 1e9 / seconds:.3f} source GB/s")
    return ConversionResult(dst, len(job.names), len(done), report["output_bytes"], source_bytes,
                            report["bits_per_weight"], seconds)


@dataclass
class _Conversion:
    """Everything decided before the first byte is written."""

    src: Path
    dst: Path
    raw_cfg: dict
    source: Source  # reader, config, key-map plan, output dtype
    skeleton: nn.Module  # the model built from config.json, parameters never evaluated
    qplan: QuantPlan | None
    calibrated: dict  # the report's calibration / allocation blocks ({} without --calibration)
    options: dict
    jobs: list
    shards: list  # list of lists of jobs
    names: list[str]

    @property
    def partial(self) -> Path:
        return self.dst.with_name(self.dst.name + ".partial")

    def fingerprint(self) -> str:
        layout = [[n, [[s.name, str(s.dtype), list(s.shape)] for j in js for s in j.outputs]]
                  for n, js in zip(self.names, self.shards)]
        return sha256_json({"format_version": FORMAT_VERSION, "source": self.source.reader.fingerprint(),
                             "options": self.options, "layout": layout})


def _plan(src: Path, dst: Path, options: dict, max_shard_bytes: int) -> _Conversion:
    raw_cfg, cfg = read_config(src)
    dtype = resolve_dtype(options["dtype"], raw_cfg)
    options = {**options, "dtype": dtype_name(dtype)}
    reader = SourceReader(src)
    plan = build_plan(reader.keys(), cfg, rename=family_of(cfg).key_rename(cfg))
    cfg = with_drafter_stages(cfg, plan)
    check_counts(cfg, plan, reader, src)  # before the skeleton is built: its size comes from the checkpoint
    if options["drop_mtp"]:
        _drop_mtp(plan)
    if plan.quantization and requantizes_fp4(recipe=options["recipe"], bits=options["bits"],
                                             target_bpw=options.get("target_bpw")):
        unpack_fp4_experts(plan)
    skeleton = build_checked(build_model, cfg, src, with_mtp=plan.has_mtp)
    qplan = None
    if options["recipe"] or plan.quantization:
        qplan = plan_quantization(skeleton, cfg, recipe=options["recipe"], bits=options["bits"],
                                  group_size=options["group_size"], imported=plan.quantization,
                                  layout=options.get("layout", "transposed"))
    stats, calibrated = None, {}
    if options.get("calibration"):
        stats, calibrated = calibrate(Source(reader, cfg, plan, dtype), skeleton, qplan, src=src,
                                      path=options["calibration"], tokens=options["calibration_tokens"],
                                      target_bpw=options["target_bpw"])
    jobs, shapes = plan_jobs(reader, cfg, plan, qplan, dtype)
    check_against_model(shapes, _as_stored(cfg, plan), src)
    shards = assign_shards(jobs, max_shard_bytes)
    return _Conversion(src, dst, raw_cfg, Source(reader, cfg, plan, dtype, stats), skeleton, qplan, calibrated,
                       options, jobs, shards, shard_names(len(shards)))


def _open_partial(job: _Conversion, log) -> tuple[Progress, set[str]]:
    """Resume or start DST.partial; check the disk has room for what is left to write."""
    progress = Progress.open(job.partial, job.fingerprint(), log)
    done = {n for n in job.names if progress.finished(n)}
    todo = sum(j.nbytes for n, js in zip(job.names, job.shards) if n not in done for j in js)
    try:
        check_disk(job.partial, todo)
    except ConversionError:
        if not progress.shards:  # nothing worth resuming: leave no trace
            shutil.rmtree(job.partial, ignore_errors=True)
        raise
    if done:
        log(f"resuming {job.partial}: {len(done)} of {len(job.names)} shards already written and verified")
    return progress, done


def _finish(job: _Conversion, progress: Progress) -> dict:
    size = size_summary(job.skeleton, job.qplan, job.source.dtype)
    output_bytes = sum(j.nbytes for j in job.jobs)
    report = build_report(options=job.options, size=size, skipped=dict(job.qplan.skipped) if job.qplan else {},
                          tensors=merge([progress.shards[n]["report"] for n in job.names]), output_bytes=output_bytes)
    report.update(job.calibrated)
    block = {"format_version": FORMAT_VERSION, "source": str(job.src),
             "source_index_sha256": index_sha256(job.src, job.source.reader),
             **{k: v for k, v in job.options.items() if k != "drop_mtp"}, "mtp": job.source.plan.has_mtp}
    config = output_config(job.raw_cfg, job.qplan.config_entry() if job.qplan else None, block)
    weight_map = {s.name: n for n, js in zip(job.names, job.shards) for j in js for s in j.outputs}
    if job.source.cfg.engram_layer_ids:  # V4.1: tables copied as they are, one shard each
        weight_map.update(copy_engram_tables(job.source.cfg, job.source.reader, job.partial))
    finish(job.partial, job.dst, job.src, config=config, report=report, weight_map=weight_map,
           total_size=output_bytes, total_parameters=size["parameters"])
    return report


def _write_shards(job: _Conversion, progress: Progress, done: set[str], quiet: bool) -> None:
    total = sum(j.source_bytes for j in job.jobs)
    initial = sum(j.source_bytes for n, js in zip(job.names, job.shards) if n in done for j in js)
    delay = float(os.environ.get(SHARD_DELAY_ENV) or 0)
    # Keep freed buffers for the next piece (a piece needs ~7 float32 buffers of its size: dequantize,
    # cast, quantize, error terms); returning them to the OS each time doubles the run time on CPU.
    old_limit = mx.set_cache_limit(8 * PIECE_BYTES)
    t0, count = time.perf_counter(), [0]
    try:
        with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                  desc="convert", disable=quiet, dynamic_ncols=True) as bar:

            def on_piece(nbytes: int, ntensors: int) -> None:
                count[0] += ntensors
                bar.set_postfix_str(f"{count[0] / max(1e-9, time.perf_counter() - t0):.1f} tensors/s", refresh=False)
                bar.update(nbytes)

            for name, jobs in zip(job.names, job.shards):
                if name in done:
                    continue
                progress.forget(name)
                tmp = progress.folder / (name + ".tmp")
                entries = write_shard(tmp, jobs, job.source, on_piece)
                os.replace(tmp, progress.folder / name)
                progress.record(name, entries)
                if delay:
                    time.sleep(delay)
    finally:
        mx.set_cache_limit(old_limit)


def _as_stored(cfg: ModelConfig, plan) -> nn.Module:
    """The model as the output stores it before our quantization: modules the source already packs
    (V4 FP4 experts, recorded in plan.quantization) quantized; parameters lazy, never evaluated."""
    model = build_model(cfg, with_mtp=plan.has_mtp)  # the same build as the skeleton's, which succeeded
    if plan.quantization:
        nn.quantize(model, class_predicate=lambda path, m: plan.quantization.get(path, False))
    return model


def _drop_mtp(plan) -> None:
    mtp = [t for t in plan.targets if t.outputs[0].startswith(DRAFTER_PREFIXES)]
    plan.targets = [t for t in plan.targets if t not in mtp]
    plan.dropped.extend(k for t in mtp for k in t.sources)
    plan.has_mtp = False
