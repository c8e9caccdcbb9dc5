"""`cloudtutor demo`: the closed loop on real video, end to end, with a report."""
