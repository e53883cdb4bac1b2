"""The engine every measurement runs on (private; the public modules are its front ends).

elements (equivariance.actions, shifts, transforms, ...)
  -> arguments   checked once, before any pass                 arguments.py (coercions: validation.py)
  -> plan        f(x) once, "auto" resolved, the rows to send  plan.py, auto.py, layers.py, grids.py
  -> copies      each row's moved inputs                       copies.py
  -> runner      the one loop: chunks, memory, isolation       runner.py, forward.py; per layer: passes.py
  -> sinks       what each measurement accumulates             sinks.py, layer_sums.py
  -> judge       the error of a sample, pass or fail, margins  judge.py
  -> report      why it failed, each cause worded once         causes.py, read by hints.py (the check) and
                 diagnosis.py (the profile) from anatomy.py (the model's layers); surgery named: fixes.py
"""
