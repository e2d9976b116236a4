"""Entry point of step 2: ``deepspeed --module step2_reward_model.main …`` from the repo root."""
from utils import dist, dry_run
from utils.errors import exits_cleanly_on_user_error
from step2_reward_model.reward_model import STEP, build_parser, run


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        dry_run.supervised(args, STEP, scalar_head=True)
    else:
        run(args)
        dist.shutdown()  # before interpreter teardown, which may abort a gloo rank


if __name__ == "__main__":
    raise SystemExit(main())
