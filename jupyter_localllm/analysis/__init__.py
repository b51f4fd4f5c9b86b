"""Analysis helpers over finished annotations: evaluation (confusion matrices, agreement),
charts and reproducibility (hashes, run log). They import nothing above the bottom layer."""
