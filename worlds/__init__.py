"""Worlds: generators of a complete data set for the pipeline, one file per step and step 4's evaluation
sets, written from a seed (and, for the real worlds, from packaged sources) so a run can be reproduced.
Each keeps its pools disjoint (what step 4 evaluates is never trained on) and states confidences that are
independent of correctness, so calibration can only come from step 3.

* :mod:`worlds.toy_world`: made-up facts seen with Zipf-skewed frequency, a local tokenizer and a tiny Llama
  (``datasets/generate_toy_world.py``; the toy preset).
* :mod:`worlds.facts_world`: capitals and cities of real countries, graded by popularity
  (``datasets/prepare_facts_world.py``; the smollm2 preset).
* :mod:`worlds.nq_world`: NQ-open questions dealt into pools plus hh-rlhf pairs
  (``datasets/prepare_nq_world.py``; the earlier real-data world).

The run-by-path scripts in ``datasets/`` write them; ``datasets/`` holds data, not a package (it would shadow
Hugging Face's ``datasets``).
"""
