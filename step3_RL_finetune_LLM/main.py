"""Entry point of step 3: ``deepspeed --module step3_RL_finetune_LLM.main …`` from the repo root."""
from utils import dist, dry_run
from utils.errors import exits_cleanly_on_user_error
from step3_RL_finetune_LLM.rlhf_engine import check_inputs, engine_configs
from step3_RL_finetune_LLM.trainer import build_parser, run


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        dry_run.ppo(args, engine_configs, check_inputs)
    else:
        run(args)
        dist.shutdown()  # before interpreter teardown, which may abort a gloo rank


if __name__ == "__main__":
    raise SystemExit(main())
