from rlhf_jax.cli import main

raise SystemExit(main())
