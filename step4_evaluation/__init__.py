"""Step 4: evaluation of stated confidence. ``python -m step4_evaluation.main`` (or ``run_step4.sh``).

* ``main`` — the entry point; ``evaluate`` — the flags and the run: one report row per checkpoint × benchmark ×
  method (generate, judge, score), adaptive retrieval, the output folder.
* ``settings`` — step 4's settings by concern (metrics, dev split, judging, decoding), built once from the flags.
* ``generation`` — greedy generation, cached per row so an interrupted run resumes.
* ``judging`` — the judge each benchmark gets, its checks before generation, one judged record per question.
* ``reports`` — a row's metrics (summary.json) and the tables over every row (results.md/csv/json).
* ``benchmarks`` — TruthfulQA, NQ-open, the toy and facts worlds as plain records.
* ``prompting`` — the prompting methods (zero-shot, Vanilla, Top-k, CoT): build the prompt, parse the answer.
* ``judges`` — correctness without a model (exact match, token F1, TruthfulQA's metric); ``llm_judge`` — an
  LLM judge through an OpenAI-compatible server, with a cache.
* ``metrics`` — calibration metrics (ECE, Brier, AUROC, …) and bootstrap intervals; also a command on a JSONL.
* ``plots`` — reliability diagrams.
* ``confidence_readout`` — the stated confidence read as the mean of the model's distribution over values.
* ``answer_logprob`` — training-free baselines (answer log-probability, popularity).
* ``recalibration`` — a dev/test split per benchmark and recalibration fitted on dev.
* ``retrieval`` — BM25 retrieval gated by the stated confidence, and its threshold sweep.
"""
