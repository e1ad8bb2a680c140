"""Meta-training of learned optimizers: find the theta of a `learned_opt` optimizer that makes
inner training on a family of tasks go well. Needs the `meta` extra:
pip install 'learned-opt[meta]'.

Its parts, from the inside out:
- unroll, pool, population: truncated inner training of a population of members ([pairs,
  branches]) on tasks drawn from a stacked pool, all inside jit.
- estimators (pes, es, tbptt; antithetic is the core PES and ES share): meta-gradients of a
  truncation's meta-loss; robust drops diverged or non-finite members.
- learner: the outer step (AdamW on theta). worker, worker_pool, ray_workers, dispatch: who
  computes estimates, in-process or on Ray, synchronously or not.
- config, recipe, families: typed YAML recipes and what they build. train: the driver;
  checkpoint, metrics, plots, export, quick_eval: what a run saves and reports.
- cli: the `lopt` command; evaluation: `lopt evaluate`, optimizers against tuned baselines.
"""

from learned_opt._extras import require_meta

require_meta("meta_train")
