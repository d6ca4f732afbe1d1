"""``edge-infer eval``: a corpus of recorded logs through a model, in bulk, in parallel, on Ray, against golden
decisions (docs/eval.md).

* :mod:`.model` -- a model loaded once per worker (the loop's rules, a batched interpreter)
* :mod:`.batch` -- chunks of frames in, the loop's decisions for their windows out
* :mod:`.records` -- decision records: files per log, golden decisions and their comparison
* :mod:`.results` -- what one log and the corpus add up to (accuracy, confusion, reasons, OOD, invoke times)
* :mod:`.run` -- one log, start to end: read in chunks, decide, count, write, compare
* :mod:`.engines` -- many logs: in this process, in worker processes, or on a Ray cluster
* :mod:`.paths` -- files, directories and globs to a list of logs with stable names
"""
