"""AMS §4.1's adaptation schemes on a simulated clock (brief §10.1), for
``cloudtutor bench distill`` and ``bench coords``.

Each scheme drives the same algorithm code as the services (``distill``,
``algorithms``, ``delta``, ``h264``, ``shadowtutor``); this package only
adds the bookkeeping an experiment needs: the looped footage and its frame
keys (:mod:`footage`), the teacher's labels cached by frame hash
(:mod:`teacher_cache`), bytes and scores (:mod:`ledger`), and the loop that
plays the video to a scheme and scores the edge on every processed frame
(:mod:`runner`).
"""
