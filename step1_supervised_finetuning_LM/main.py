"""Entry point of step 1: ``deepspeed --module step1_supervised_finetuning_LM.main …`` from the repo root."""
from utils import dist, dry_run
from utils.errors import exits_cleanly_on_user_error
from step1_supervised_finetuning_LM.sft import STEP, build_parser, run


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        dry_run.supervised(args, STEP, scalar_head=False)
    else:
        run(args)
        dist.shutdown()  # before interpreter teardown, which may abort a gloo rank


if __name__ == "__main__":
    raise SystemExit(main())
