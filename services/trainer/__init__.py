"""trainer: every T_update per device, distills the teacher into the device's copy of the student (AMS Algorithms 1 and 2), keeping the edge view, version and optimizer state in Redis.

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
