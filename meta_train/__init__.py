"""Meta-training of learned optimizers: find the theta of a `learned_opt` optimizer that makes
inner training on a family of tasks go well. Needs the `meta` extra:
pip install 'learned-opt[meta]'.

One outer step, as a newcomer would follow it (`lopt meta-train RECIPE`):

    cli.py                    parses the command, loads the recipe (config.py)
    train.py                  builds the run (recipe.py) and loops: dispatcher.step(learner)
    distribution/dispatch.py  workers compute estimates on theta; their mean goes to the learner
    estimators/antithetic.py  PES: +/- perturbed pairs of inner runs -> a meta-gradient
    unroll.py                 K inner steps of the learned optimizer on a task, per member
    learner.py                the outer step: AdamW on theta

The parts:
- unroll: truncated inner training of one member and of a population ([pairs, branches]) on
  tasks drawn from a stacked task pool, all inside jit.
- estimators/: meta-gradients of a truncation's meta-loss, one interface (`ESTIMATORS`):
  antithetic (PES, truncated ES and their shared core), tbptt (truncated backprop).
  robust: drops diverged or non-finite members, masks frozen parts of theta.
- learner: the outer step (AdamW on theta, clipping, skip of non-finite steps).
- distribution/: who computes estimates, in-process or on Ray, sync or async (dispatch,
  ray_workers).
- config, recipe, families: typed YAML recipes and what they build, identically in the driver
  and in every Ray actor. train: the driver; checkpoint, metrics, plots, export, quick_eval:
  what a run saves and reports.
- cli: the `lopt` command; evaluation/: `lopt evaluate`, optimizers against tuned baselines.
"""

from learned_opt._extras import require_meta

require_meta("meta_train")
