"""Who computes the estimates, and how their results reach the learner.

- dispatch: `LocalWorker` (owns a share of the population's unroll states and runs the jitted
  estimator on it), the `WorkerPool` interface with its in-process `LocalPool`, and the
  `Dispatcher` that turns a pool's results into one outer step, synchronously or not.
- ray_workers: the same workers as Ray actors (`RayPool`), and joining or starting a cluster.
  Imported only when a run asks for Ray (`--ray`), so in-process runs never load Ray.
"""
