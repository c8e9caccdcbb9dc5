"""The trainer's ShadowTutor path (`papers/shadowtutor.md` Algorithm 3, brief §5, §10.9).

For a device whose knobs say ``mode: shadowtutor``, every horizon sample
is a key frame the edge sent on its own (a one-frame chunk) and waits for.
For the newest key frame not yet served, the trainer runs Algorithm 1
(:func:`cloudtutor.shadowtutor.partial.train_key_frame`) on the device's
edge view: the front through ``trainer.shadowtutor.freeze_through`` stays
frozen, the rest trains until the key frame's mIoU exceeds THRESHOLD or
MAX_UPDATES steps, and the best student is kept. Then, like an AMS phase,
it stores the new edge view and the masks and announces an ``UpdateRef``
whose ``metric`` is that best mIoU (the edge's NextStride reads it):

* improved: the masks are the whole trainable part (a dense update: every
  coordinate of the trainable tensors, float16, compressed, signed by the
  publisher);
* not improved (already above THRESHOLD, or no step helped): no
  coordinate, only the version bump and the metric, which the edge still
  needs to set its stride (Algorithm 3 line 6 sends the unchanged part;
  sending nothing of it is the same weights for fewer bytes).

Older unserved key frames are skipped: the edge waits for the newest only.
The AMS optimizer state in Redis is left as it is; each key frame gets a
fresh Adam (stateless across restarts, and measured to work at lr 3e-4).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from cloudtutor import distill
from cloudtutor.shadowtutor.partial import train_key_frame, trainable_names
from cloudtutor.streams import SIGNALS, UPDATES, Signal, UpdateRef, masks_blob, model_blob

if TYPE_CHECKING:
    from cloudtutor_services.trainer.service import TrainerService

KEY_FRAMES = "cloudtutor_trainer_st_key_frames_total"  # {improved}
STEPS = "cloudtutor_trainer_st_steps_total"
STEP_SECONDS = "cloudtutor_trainer_st_step_seconds_total"
SKIPPED = "cloudtutor_trainer_st_key_frames_skipped_total"


def serve_key_frame(svc: TrainerService, device_id: str, last_ms: int | None, newest_ms: int) -> bool:
    """Algorithm 1 on the newest key frame after ``last_ms``; True if one was served."""
    from cloudtutor_services.trainer.service import DeviceState, state_key

    if last_ms is not None and newest_ms <= last_ms:
        return False
    key = state_key(svc.fb.prefix, device_id)
    pairs = svc._load_pairs(svc._available(svc.fb.horizon_range(device_id, newest_ms, newest_ms)))
    if not pairs:
        svc._skip(device_id, newest_ms, "key frame's blobs are gone")
        svc.metrics.inc(SKIPPED)
        return True
    frame, labels = next(iter(pairs.values()))
    if labels.shape != frame.shape[:2]:
        svc._skip(device_id, newest_ms, f"labels {labels.shape} do not match the frame {frame.shape[:2]}")
        return True
    settings = svc.settings.shadowtutor
    state = svc.load_state(device_id)
    distill.load_state_vector(svc.model, state.weights)
    try:
        names = trainable_names(svc.model, settings.freeze_through)
    except ValueError as exc:  # a misconfigured freeze point: say so and keep serving the rest
        svc._skip(device_id, newest_ms, f"trainer.shadowtutor.freeze_through: {exc}")
        return True
    device = next(svc.model.parameters()).device
    x = distill.to_inputs([frame], normalize=svc.normalize, device=device)
    result = train_key_frame(svc.model, x, labels, mapping=svc.mapping, trainable=names,
                             threshold=settings.threshold, max_updates=settings.max_updates, lr=settings.lr)
    params = dict(svc.model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names} if result.improved else {}
    version = state.version + 1
    weights = distill.state_vector(svc.model)
    packed = distill.pack_masks(masks, svc.model.state_dict())
    svc.fb.put_blobs({model_blob(device_id, version): weights, masks_blob(device_id, version): packed},
                     ttl_s=svc.settings.model_ttl_s)
    new_state = DeviceState(version, state.model_id, newest_ms, weights, state.optimizer)
    metric = result.metric if math.isfinite(result.metric) else None
    ref = UpdateRef(device_id=device_id, model_id=state.model_id, base_version=state.version, version=version,
                    state=model_blob(device_id, version), masks=masks_blob(device_id, version),
                    params_sha256=distill.vector_sha256(weights), metric=metric, video_ms=newest_ms)
    pipe = svc.fb.redis.pipeline(transaction=True)
    pipe.hset(key, mapping=new_state.to_fields())
    pipe.xadd(svc.fb.stream_key(UPDATES), ref.to_fields(), maxlen=svc.fb.settings.stream_maxlen, approximate=True)
    pipe.execute()
    if math.isfinite(result.initial_metric):  # the deployed student's accuracy, for the controller
        svc.fb.add(SIGNALS, Signal(device_id=device_id, kind="accuracy", value=result.initial_metric,
                                   video_ms=newest_ms).to_fields())
    svc.metrics.inc(KEY_FRAMES, improved=str(result.improved).lower())
    svc.metrics.inc(STEPS, result.steps)
    svc.metrics.inc(STEP_SECONDS, sum(result.step_seconds))
    svc.log.info(
        "%s: key frame at %d ms: mIoU %.3f -> %.3f in %d step(s); version %d (%s)", device_id, newest_ms,
        result.initial_metric, result.metric, result.steps, version, "trainable part" if masks else "metric only",
        extra={"fields": {"device_id": device_id, "version": version, "video_ms": newest_ms, "steps": result.steps,
                          "initial_metric": result.initial_metric, "metric": result.metric,
                          "step_s": [round(s, 3) for s in result.step_seconds]}},
    )
    return True
