"""Entry point of step 3: ``deepspeed --module step3_RL_finetune_LLM.main …`` from the repo root."""
from utils.errors import exits_cleanly_on_user_error
from step3_RL_finetune_LLM.trainer import build_parser, run


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
