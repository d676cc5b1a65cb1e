"""Run identity: a stage's results are resumed only by the settings that made them.

Every stage kind that keeps results (``vocab``, ``train``) gives a fingerprint:
the config keys that determine its result, flattened to their dotted names
(``stages.pretrain.learning_rate``, ``lora.rank``, ``model.path`` ...), the
content digest of its data, and the fingerprint of the stage before it (so a
change propagates). ``stages/NAME/fingerprint.json`` records it when the stage
starts. On a re-run, before any model weight is read:

* identical fingerprints: finished stages are restored, the interrupted one resumes;
* a stage whose fingerprint changed: refused, with one line naming the changed
  keys and the two ways out (another ``output_dir``, or
  ``restart_from=STAGE`` to retrain that stage and the later ones, keeping the
  earlier ones);
* a stage stopped on non-finite values whose own optimizer settings changed
  (a lower learning rate, say): retrained from its start (its last finite
  checkpoint may already hold blown-up values, and resuming it would mix two
  settings in one result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from typing import Any

import jax

from jaxtrans.curriculum.state import read_json, write_json
from jaxtrans.errors import JaxtransError

FINGERPRINT = "fingerprint.json"
NONFINITE = "nonfinite.json"  # written by a train stage that stopped on a non-finite loss or gradient
# settings a stage stopped on non-finite values may change without restart_from (it is retrained from its start)
RETUNABLE = ("learning_rate", "schedule", "warmup_steps", "end_lr_ratio", "weight_decay", "new_rows_learning_rate",
             "modules_learning_rate", "skip_nonfinite_steps")  # fmt: skip


def flat(block: Any, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{prefix.key.sub: value}`` of a config block, JSON values (tuples become lists)."""
    items = block.to_dict().items() if hasattr(block, "to_dict") else dict(block).items()
    out: dict[str, Any] = {}
    for k, v in items:
        if k in skip:
            continue
        if isinstance(v, dict) or hasattr(v, "to_dict"):
            out.update(flat(v, f"{prefix}.{k}"))
        else:
            out[f"{prefix}.{k}"] = json.loads(json.dumps(v, default=str))
    return out


def settings_hash(d: dict) -> str:
    """A short hash of a JSON-able dict (a fingerprint, or the settings a cached result was made with)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(cfg: Any, kinds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fingerprint of every stage that keeps results, each chained to the one before."""
    out: dict[str, dict[str, Any]] = {}
    previous = None
    for name in cfg.curriculum:
        stage = cfg.stages[name]
        fp = getattr(kinds[stage.kind], "fingerprint", lambda *_: None)(cfg, name, stage)
        if fp is None:
            continue
        if previous is not None:
            fp[f"(stage {previous} before it)"] = settings_hash(out[previous])
        out[name] = fp
        previous = name
    return out


def _changed(recorded: dict, now: dict) -> list[str]:
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k, "<unset>") != now.get(k, "<unset>"))


def _retunable(name: str, changed: list[str], stage_dir: str) -> bool:
    """A stage that stopped on non-finite values and changed only its own optimizer settings."""
    own = {f"stages.{name}.{k}" for k in RETUNABLE}
    return os.path.isfile(os.path.join(stage_dir, NONFINITE)) and all(k in own for k in changed)


def check(cfg: Any, kinds: dict[str, Any], out: str) -> dict[str, dict[str, Any]]:
    """Compare the recorded fingerprints with the config's; discard what ``restart_from`` allows, refuse the rest.

    Returns the fingerprints, for :func:`record` when each stage starts.
    """
    prints = fingerprints(cfg, kinds)
    order = list(cfg.curriculum)
    restart = cfg.get("restart_from", "")
    for name, fp in prints.items():
        stage_dir = os.path.join(out, "stages", name)
        recorded = (read_json(os.path.join(stage_dir, FINGERPRINT)) or {}).get("fingerprint")
        if recorded is None or recorded == fp:
            continue
        changed = _changed(recorded, fp)
        if _retunable(name, changed, stage_dir):
            print(f"stage {name}: stopped on non-finite values before; retraining it from its start with the new "
                  f"{', '.join(changed)}")  # fmt: skip
            discard(out, order[order.index(name) :], cfg)
            return prints
        if restart and order.index(restart) <= order.index(name):
            print(f"restart_from={restart}: {name} changed ({', '.join(changed)})")
            discard(out, order[order.index(name) :], cfg)
            return prints
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise JaxtransError(
            f"{out} holds stage {name!r} made with other settings ({shown} changed); run elsewhere with "
            f"--config.output_dir=NEW, or retrain it and the later stages with --config.restart_from={name}"
        )
    return prints


def discard(out: str, names: list[str], cfg: Any) -> None:
    """Remove the results of ``names`` (and the tokenizer, when a vocab stage is among them); process 0 deletes."""
    print(f"discarding the results of {', '.join(names)}")
    if jax.process_index() == 0:
        for name in names:
            shutil.rmtree(os.path.join(out, "stages", name), ignore_errors=True)
            shutil.rmtree(os.path.join(out, "eval", name), ignore_errors=True)
            if cfg.stages[name].kind == "vocab":
                shutil.rmtree(os.path.join(out, "tokenizer"), ignore_errors=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxtrans discard")


def record(out: str, name: str, fp: dict[str, Any]) -> bool:
    """Write the stage's fingerprint as it starts (what its results will be made with); whether it was new."""
    path = os.path.join(out, "stages", name, FINGERPRINT)
    if (read_json(path) or {}).get("fingerprint") == fp:
        return False
    write_json(path, {"fingerprint": fp})
    return True


def forget(out: str, name: str) -> None:
    """Remove a fingerprint recorded by a stage that then failed before producing anything (process 0)."""
    if jax.process_index() == 0:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, "stages", name, FINGERPRINT))
