"""publisher: signs model updates and snapshots, sends at most one unacknowledged update per device, and answers model/resync.

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
