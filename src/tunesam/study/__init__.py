"""The study: a grid of runs (strategies x datasets x initial weights, plus baselines) on the
same splits, and the paper's tables, figures and recommendation from their results."""
from tunesam.study.config import Cell, StudyConfig, load_study, parse_study
from tunesam.study.report import write_report
from tunesam.study.runner import run_study

__all__ = ["Cell", "StudyConfig", "load_study", "parse_study", "run_study", "write_report"]
