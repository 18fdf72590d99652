# Sourced by the GPU scripts (gpu_session.sh, gpu_students.sh): the environment of a lent GPU
# machine with no package registry, and the device / versions header of the session's log.
#
#   source benchmarks/gpu_env.sh LOG_FILE
#
# Wheels found in .whl/ are installed with --no-deps into /tmp/site first.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$1"
