"""Split-brain inference (`papers/split-brain.md` §3-4, brief §10.8): the edge
runs the first N stages of the student, compresses the live activations
(:mod:`.codec`) and the cloud resumes from stage N+1 (:mod:`.points`).
Pure code, no I/O."""
