"""The one naming rule of trials and re-evaluation runs: every place that shows a trial asks these functions.

    #3 ef4ab16e     a search's trial: its Optuna trial number and its Tune id (the id alone when the study does
                    not know it: a trial of an experiment whose study cannot be read)
    rank1-seed2     a re-evaluation run (tune.best --retrain --top K --seeds N): its configuration's rank in the
                    search (1 = the best) and its seed

The console, tune.best, trials.csv (its `trial` column), the summary, TensorBoard's runs, MLflow's runs and the
plots all show these. Folders keep their own names (trial_<id>, <id>-seed<N>): an experiment made before
these names resumes and hands over as it did.
"""

KNOWN = {}   # {Tune trial id: Optuna trial number} the search's searcher handed out in this process (tune.searcher)


def trial_name(trial_id, number=None):
    """`#3 ef4ab16e`: the Optuna trial number and the Tune id; the id alone when the number is unknown (None), the
    number alone when the id is (a study trial that never had a Tune trial)."""
    if number is None or trial_id is None:
        return f"#{number}" if trial_id is None else trial_id
    return f"#{number} {trial_id}"


def named(trial):
    """A search trial's name as Tune shows it (its trial_name_creator: MLflow's run, TensorBoard's): the number its
    study trial got in this process (KNOWN), set before Tune creates the trial."""
    return trial_name(trial.trial_id, KNOWN.get(trial.trial_id))


def run_name(rank, seed):
    """`rank1-seed2`: a re-evaluation run of the search's `rank`-th best configuration (1 = the best), `seed`."""
    return f"rank{rank}-seed{seed}"


def study_numbers(exp_dir):
    """{Tune trial id: Optuna trial number} of the experiment's study; {} when it cannot be read now (an older
    experiment's pickled study, a database that does not answer): then names are the ids alone."""
    from tune.study import open_study, trial_numbers   # here: tune.study imports Optuna

    try:
        with open_study(exp_dir) as study:
            return trial_numbers(study)
    except Exception:   # a name only: a study not readable this moment leaves the number out
        return {}
