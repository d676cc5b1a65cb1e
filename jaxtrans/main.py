"""``python -m jaxtrans.main --config configs/thai.py[:variant] [--config.key=value ...]``.

Runs the config's curriculum (see ``jaxtrans.pipeline``): vocabulary
extension, the train stages with their data mixtures, and the report
(``<output_dir>/report.md``). Re-running the same command resumes where the
last run stopped.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxtrans.config import precheck
from jaxtrans.errors import JaxtransError
from jaxtrans.exits import guarded

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "plan only: compile the train step from shapes, print memory and speed")
_DEVICE = flags.DEFINE_string("device", "H100", "with --dry_run: the device to check the fit against")
_MFU = flags.DEFINE_float("mfu", 0.4, "with --dry_run: the MFU to predict tokens/s at")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "with --dry_run: the TPU slice (e.g. v5e:2x2, v5p:2x2x1; needs libtpu) or the GPUs as "
    "PARTITIONSxHOSTSxGPUS (1x1x8, 1x2x8; needs the CUDA plugin) to compile for; default: the smallest the mesh fits"
)  # fmt: skip
_GPU_DESCRIPTION = flags.DEFINE_string(
    "gpu_description", None, "with --dry_run on a GPU device: a GpuTargetConfigProto text file describing the card "
    "to the XLA GPU compiler instead of the device table's (for a card the table lacks)"
)  # fmt: skip
_MAX_CONTEXT = flags.DEFINE_bool(
    "max_context", False, "with --dry_run: search the longest row (at the largest stage's batch) whose compiled "
    "step fits each --device (a comma-separated list: --device RTX4090,H100,v5e), device and host memory"
)  # fmt: skip
_PROMPT_LEN = flags.DEFINE_integer(
    "generation_prompt_len", 0, "with --dry_run: also compile the frozen model's decode (generation.batch_size "
    "prompts of this many tokens + generation.max_new_tokens; the KV cache) for the same target; 0: skip"
)  # fmt: skip
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config: path.py[:variant]", lock_config=True)


def run(cfg) -> dict:
    """Run (or resume) the pipeline; returns the report."""
    from jaxtrans import pipeline

    report = pipeline.run(cfg)
    print(f"\nreport: {cfg.output_dir}/report.md")
    return report


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise JaxtransError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    from jaxtrans import distributed

    distributed.initialize(_CONFIG.value.get("distributed"))
    if _DRY_RUN.value and _MAX_CONTEXT.value:
        from jaxtrans.max_context import search, table

        print(
            table([search(_CONFIG.value, d, _TOPOLOGY.value, _GPU_DESCRIPTION.value) for d in _DEVICE.value.split(",")])
        )
        return
    if _MAX_CONTEXT.value:
        raise JaxtransError("--max_context plans without training: add --dry_run")
    if _DRY_RUN.value:
        from jaxtrans.plan import plan

        plan(_CONFIG.value, _DEVICE.value, _MFU.value, _TOPOLOGY.value, _GPU_DESCRIPTION.value)
        if _PROMPT_LEN.value:
            from jaxtrans.plan import plan_generation

            plan_generation(_CONFIG.value, _DEVICE.value, _TOPOLOGY.value, _PROMPT_LEN.value, _GPU_DESCRIPTION.value)
        return
    run(_CONFIG.value)


def usage(argv: list[str]) -> str:
    """The --help text: the command, every flag with its help and default, and (with --config) the config's keys."""
    lines = [__doc__.strip(), "", "flags:"]
    for flag in (_CONFIG, _DRY_RUN, _DEVICE, _MFU, _TOPOLOGY, _GPU_DESCRIPTION, _MAX_CONTEXT, _PROMPT_LEN):
        f = flags.FLAGS[flag.name]
        default = "" if f.default is None else f" (default: {f.default})"
        lines.append(f"  --{f.name}: {f.help}{default}")
    lines.append("  --config.KEY=VALUE: override one key of the config (e.g. --config.stages.pretrain.steps=100)")
    lines.append("  --help: this text (with --config, also the config's keys and values)")
    from jaxtrans.config import config_arg, load_file

    spec = config_arg(argv[1:])
    if spec is not None:
        from ml_collections import config_dict

        def walk(d: config_dict.ConfigDict, prefix: str = "") -> list[str]:
            out = []
            for k, v in d.items():
                if isinstance(v, config_dict.ConfigDict):
                    out += walk(v, f"{prefix}{k}.")
                else:
                    out.append(f"  {prefix}{k} = {str(v)[:100]}")
            return out

        lines += ["", f"keys of {spec} (override with --config.KEY=VALUE):", *walk(load_file(spec))]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2; SIGTERM stops at the next safe point
    with exit code 75 (``jaxtrans.exits``)."""
    argv = list(sys.argv if argv is None else argv)
    dump = None
    if "--dry_run" in argv:  # the planner compiles for abstract TPUs and GPUs from the CPU platform
        from jaxtrans import platforms

        platforms.cpu()
    if "--dry_run" in argv and "JAXTRANS_PLAN_DUMP" not in os.environ:  # before jax starts: XLA reads its flags once
        import tempfile

        from jaxtrans.plan import dump_flags

        dump = os.environ["JAXTRANS_PLAN_DUMP"] = tempfile.mkdtemp(prefix="jaxtrans-plan-")
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {dump_flags(dump)}"
    try:
        _cli(argv)
    finally:  # the compiler's buffer reports were read by the plan; a 7B dump is tens of MB
        if dump is not None:
            import shutil

            shutil.rmtree(dump, ignore_errors=True)


def _cli(argv: list[str]) -> None:
    def body() -> None:
        if any(a in ("--help", "-h", "--helpfull", "-help") for a in argv[1:]):
            print(usage([a for a in argv if a not in ("--help", "-h", "--helpfull", "-help")]))
            return
        precheck(argv[1:])
        try:  # parse here, so a bad value is one line instead of absl's usage dump
            remaining = flags.FLAGS(argv)
        except flags.Error as e:
            raise JaxtransError(f"bad command line: {e}") from None
        app.run(_main, argv=argv, flags_parser=lambda _: remaining)

    guarded(body)


if __name__ == "__main__":
    cli()
