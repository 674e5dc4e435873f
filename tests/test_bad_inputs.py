"""Zero tracebacks over the sweep of bad command lines in ``bad_inputs.py`` (each class of bad
input has a case there: loss specs, tasks, seeds, --set keys and types, options, other families'
losses, output paths, broken results folders and tables, bad baselines, run keys, list filters).
"""

from bad_inputs import sweep  # tests/ is on sys.path (pytest's rootdir-relative import)


def test_no_bad_input_gives_a_traceback() -> None:
    total, tracebacks, details = sweep()
    crashes = [(" ".join(a), why) for a, why in details if not why.startswith("accepted")]
    assert total > 150
    assert tracebacks == 0, crashes
