"""``consistcam diagnose RUN``: do a method's per-sample weights single out the bias-conflicting
training samples? Reads what a run folder holds (ECL's scoring rounds, JTT's error set) and the
training data's background groups; writes ``RUN/diagnosis/`` (json, markdown, png), which the
HTML report shows."""

from consistcam.diagnosis.run import diagnose_run, score_rows, summarize
from consistcam.run.layout import DIAGNOSIS_DIR

__all__ = ["DIAGNOSIS_DIR", "diagnose_run", "score_rows", "summarize"]
