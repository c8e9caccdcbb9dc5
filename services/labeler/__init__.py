"""labeler: runs the teacher on each frame, stores its labels, computes the phi-score against the device's previous sampled frame and appends (frame, label) to the device's horizon stream.

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
