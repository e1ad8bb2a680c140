"""Meta-training of learned optimizers; needs the `meta` extra: pip install 'learned-opt[meta]'."""

from learned_opt._extras import require_meta

require_meta("meta_train")
