"""AccMPEG (``papers/accmpeg.md``): accuracy gradients, the cheap AccModel and
macroblock region-of-interest encoding.

* :mod:`.accgrad` -- AccGrad per 16x16 macroblock (§3.2 eq. 1) through a
  differentiable torch model (the frozen ESPNet proxy of the TFLite
  teacher, brief §10.7);
* :mod:`.rects` -- macroblock masks: threshold, dilation, and the merge of
  a mask into few rectangles for the ``addroi`` filter;
* :mod:`.accmodel` -- the AccModel network (§4) and its checkpoint;
* :mod:`.train` -- ``cloudtutor train accmodel`` (§5);
* :mod:`.roi` -- the online planner: AccModel every k frames, threshold,
  dilate (§4).

ROI encoding itself (libx264 through PyAV with ``addroi``) and the
read-back of effective QPs live in :mod:`cloudtutor.h264`.
"""
