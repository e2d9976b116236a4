"""``python -m tools.build_ds_ops``: build (or load) the DeepSpeed op this accelerator needs ahead of the first
run, under :mod:`utils.ds_ops`'s lock, so no step waits on the build (a no-op on CUDA)."""
from utils.ds_ops import ensure_built

if __name__ == "__main__":
    ensure_built()
