"""controller: owns every device's knobs (sampling rate, resolution, quality, stride); merges operator overrides and republishes control/state.

Built by the closed-loop issue; the configuration section is cloudtutor.config.cloud.
"""
