"""superres: upscales low-resolution frames back to the teacher's input size (CloudSeg's analytics-aware SR model; bicubic when none is configured).

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
