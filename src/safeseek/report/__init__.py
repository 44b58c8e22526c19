"""Reports: PNG figures and a self-contained HTML page of circuits and their evaluation."""
