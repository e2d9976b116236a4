"""step3 trainer: the rollout batches a run (or a resumed run) steps through (``_batches``), and how rollouts
sample (``generation_settings``)."""
from __future__ import annotations

from step3_RL_finetune_LLM.trainer import _batches, build_parser, generation_settings


class _Loader:
    """Three batches an epoch, named (epoch, index); counts the batches drawn and the epochs set."""

    def __init__(self):
        self.drawn, self.epoch = 0, None
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for index in range(3):
            self.drawn += 1
            yield (self.epoch, index)


def test_a_run_takes_its_steps_over_epochs_and_draws_no_batch_past_the_last():
    loader = _Loader()
    got = list(_batches(loader, steps_per_epoch=3, total_steps=5, done=0))
    assert got == [(0, (0, 0)), (0, (0, 1)), (0, (0, 2)), (1, (1, 0)), (1, (1, 1))]
    assert loader.drawn == 5  # the sixth batch is never drawn


def test_a_resumed_run_skips_the_batches_consumed_before_its_checkpoint():
    got = list(_batches(_Loader(), steps_per_epoch=3, total_steps=5, done=4))
    assert got == [(1, (1, 1))]
    assert list(_batches(_Loader(), steps_per_epoch=3, total_steps=5, done=5)) == []


def test_rollouts_sample_as_the_flags_say():
    required = ["--data_path", "d", "--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c",
                "--output_dir", "o", "--max_answer_seq_len", "9", "--temperature", "0.5"]
    sampled = generation_settings(build_parser().parse_args(required))
    assert (sampled.max_new_tokens, sampled.do_sample, sampled.temperature, sampled.top_p) == (9, True, 0.5, 1.0)
    assert not generation_settings(build_parser().parse_args([*required, "--greedy_rollouts"])).do_sample
