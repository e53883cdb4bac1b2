"""The engine every measurement runs on (private; the public modules are its front ends).

elements (equivariance.actions, shifts, transforms, ...)
  -> validation  arguments checked once, before any pass      validation.py
  -> plan        f(x) once, "auto" resolved, the rows to send  plan.py, auto.py, layers.py, grids.py
  -> copies      each row's moved inputs                       copies.py
  -> runner      the one loop: chunks, memory, isolation       runner.py, forward.py
  -> sinks       what each measurement accumulates             sinks.py, layer_sums.py
  -> judge       the error of a sample, pass or fail, margins  judge.py
  -> report      and why it failed                             hints.py, anatomy.py, fixes.py
"""
