"""ShadowTutor (`papers/shadowtutor.md` §4): partial distillation on key frames
(Algorithm 1), the object weighting of its loss (§5.2, brief §10.9) and the
throughput and traffic bounds of §4.4. Pure code: tensors in, tensors out.
NextStride (Algorithm 2) is in :mod:`cloudtutor.algorithms.stride`.
"""
