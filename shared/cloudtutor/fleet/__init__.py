"""Many devices, many replicas: device leases across replicas of a service
(brief §10.4) and the replica scaler of the labeler and trainer (§10.6)."""
