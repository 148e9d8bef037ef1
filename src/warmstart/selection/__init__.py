"""Training by selection: one place that scores ways to train by validation, chooses soundly, and trains the choice.

``fine_tune``, ``distill`` and ``recover(method="auto")`` all choose through
:func:`train_by_selection`: the splits (stratified folds made by the loader's one way of taking a
part), the statistics (:func:`choose`: a default kept unless beaten beyond chance, corrected for
choosing the best of several), the record in ``out_dir/selection.json`` and ``resume="last"``.
"""

from warmstart.selection._folds import (Split, class_labels, labels_of_loader, sample_count, scoring_loader,
                                        stratified_folds)
from warmstart.selection._run import (SELECTION_FILE, SelectionOptions, epochs_option, read_selection, run_folder,
                                      selection_options, train_by_selection, trainer_option)
from warmstart.selection._select import (BUDGET, CV_BELOW, Selection, plan_splits, select, trial_epochs,
                                         validation_accuracy)
from warmstart.selection._simulation import SimulatedTask, choice_rate
from warmstart.selection._statistics import (ALPHA, CandidateScore, binomial_se, choose, detectable_gain,
                                             split_factor, standard_error, summarise, t_cdf, t_quantile)

__all__ = ["ALPHA", "BUDGET", "CV_BELOW", "SELECTION_FILE", "CandidateScore", "Selection", "SelectionOptions", "SimulatedTask",
           "Split",
           "binomial_se", "choice_rate", "choose", "class_labels", "detectable_gain", "epochs_option", "labels_of_loader",
           "plan_splits", "read_selection", "run_folder", "sample_count", "scoring_loader", "select", "selection_options", "split_factor",
           "standard_error", "stratified_folds", "summarise", "t_cdf", "t_quantile", "train_by_selection",
           "trainer_option", "trial_epochs", "validation_accuracy"]
