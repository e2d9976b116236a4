# Source on the lent GPU machine (Python 3.12 with torch+CUDA, transformers, ...; no network, no `python`,
# no deepspeed/datasets/tensorboardX/...): installs the wheels carried in .whl/ into /tmp/site and puts a
# `python` wrapper on PATH. Then: bash scripts/gpu_smoke.sh
#
#   source scripts/device_env.sh
#
# (.whl/ is git-ignored; it is filled on a machine with the package registry, see scripts/gpu_smoke.sh.)
_conqord_whl="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.whl"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$_conqord_whl"/*.whl \
  && export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH \
  && printf '#!/bin/sh\nexec python3 "$@"\n' >/tmp/site/bin/python && chmod +x /tmp/site/bin/python \
  && echo "device_env: $(ls "$_conqord_whl"/*.whl | wc -l) wheels in /tmp/site; python -> $(command -v python3)"
