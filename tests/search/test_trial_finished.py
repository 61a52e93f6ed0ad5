"""Which trials of a stopped search count as finished: the rule behind "run the stage again to resume it"."""

from __future__ import annotations

from pipeline.search.tuning import trial_finished


def test_a_trial_whose_node_died_after_its_last_report_counts_as_finished():
    # The last result of sweep trial 0a5f5_00012 as Tune restored it after the Ray node died: TERMINATED, every
    # metric reported, but Tune's `done` never recorded. Tune does not re-run it on resume, so calling it
    # unfinished made the stage refuse forever
    restored = {"speedup": 1.36, "identical_share": 1.0, "done": False, "training_iteration": 1}
    assert trial_finished(restored, reports_when_complete=1)
    assert not trial_finished(restored, reports_when_complete=None)  # searches that say nothing keep the strict rule


def test_a_trial_stopped_before_its_last_report_is_unfinished():
    # A NAS trial (3 validations when complete) interrupted by Ctrl-C after its first validation
    assert not trial_finished({"score": 0.4, "done": False, "training_iteration": 1}, reports_when_complete=3)
    assert not trial_finished({}, reports_when_complete=1)  # nothing reported at all


def test_done_finishes_a_trial_whatever_its_report_count():
    # ASHA stops a trial early: Tune marks its last result done after 1 of 3 reports
    assert trial_finished({"score": 0.4, "done": True, "training_iteration": 1}, reports_when_complete=3)
