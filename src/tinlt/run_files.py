"""Names of the result files a scoring writes, shared by the run folder (engine/run_folder.py)
and the torch-free scoring of an exported model (deploy/onnx_eval.py), which must not import
the run folder's YAML and config machinery."""

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"  # one row per test image (engine/inference.write_predictions_csv)
